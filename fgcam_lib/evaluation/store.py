"""The result store: evaluation rows on disk, keyed by the model's fingerprint, resumable.

One row per (data, image, method, layer, metric) with :data:`COLUMNS`; a CSV file or a
folder of parquet parts. :func:`results_path` names a run's file from the model's
:func:`~fgcam_lib.data.fingerprint.model_fingerprint`, :func:`stored_prefix` tells how much of a run is already stored.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..catalogue import layer_key
from ..data.fingerprint import model_fingerprint
from ..methods.registry import supports

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from torch import nn

__all__ = ["COLUMNS", "DTYPES", "ResultStore", "empty_rows", "typed_rows", "read_results", "results_path",
           "stored_prefix"]

COLUMNS: tuple[str, ...] = ("data", "image_id", "index", "label", "target", "method", "layer", "metric", "value")
DTYPES: dict[str, str] = {
    "data": "object", "image_id": "object", "index": "int64", "label": "int64", "target": "int64",
    "method": "object", "layer": "object", "metric": "object", "value": "float64",
}


# ------------------------------------------------------------------------------ storage
class ResultStore:
    """Rows on disk: a CSV file, or a folder of parquet part files (one per batch).

    Parts are written to a hidden temporary name and renamed, so a killed run leaves
    only whole batches. ``meta`` (seed, target rule) is kept beside the rows and must
    match on resume.
    """

    def __init__(self, out: str | os.PathLike) -> None:
        self.path = Path(out)
        suffix = self.path.suffix.lower()
        if suffix not in (".csv", ".parquet", ".pq"):
            raise ValueError(f"--out must end in .csv or .parquet, got {str(self.path)!r}")
        self.parquet = suffix != ".csv"
        self.meta_path = self.path / "_meta.json" if self.parquet else self.path.with_name(self.path.name + ".meta.json")

    def check_meta(self, meta: Mapping[str, Any], write: bool = True) -> None:
        """Record ``meta`` (only check it when not ``write``), or raise ValueError if the stored one differs."""
        old: dict[str, Any] = {}
        if self.meta_path.is_file():
            old = json.loads(self.meta_path.read_text())
            diff = {k: (old[k], v) for k, v in meta.items() if k in old and old[k] != v}
            if diff:
                raise ValueError(f"{self.path} holds results made with other settings {diff} (stored, now); "
                                 "use another --out")
            if all(k in old for k in meta):
                return
        if not write:
            return
        self.meta_path.parent.mkdir(parents=True, exist_ok=True)
        self.meta_path.write_text(json.dumps({**old, **meta}, indent=1))

    def read(self) -> "pd.DataFrame":
        """Every stored row (an empty frame with :data:`COLUMNS` when there is none)."""
        import pandas as pd

        if self.parquet:
            parts = sorted(self.path.glob("part-*.parquet")) if self.path.is_dir() else []
            df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else None
        else:
            df = pd.read_csv(self.path, dtype={"image_id": str, "layer": str}) if self.path.is_file() else None
        return empty_rows() if df is None else typed_rows(df)

    def append(self, df: "pd.DataFrame", tag: str = "") -> None:
        """Add rows durably; ``tag`` goes into a parquet part's name (the rank that wrote it)."""
        if df.empty:
            return
        if self.parquet:
            self.path.mkdir(parents=True, exist_ok=True)
            n = len(list(self.path.glob("part-*.parquet")))
            tmp = self.path / f".tmp-{uuid.uuid4().hex}.parquet"
            df.to_parquet(tmp, index=False)
            os.replace(tmp, self.path / f"part-{n:06d}-{tag + '-' if tag else ''}{uuid.uuid4().hex[:8]}.parquet")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            header = not self.path.is_file() or self.path.stat().st_size == 0
            text = df.to_csv(index=False, header=header)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())


def empty_rows() -> "pd.DataFrame":
    import pandas as pd

    return pd.DataFrame({c: pd.Series(dtype=DTYPES[c]) for c in COLUMNS})


def typed_rows(df: "pd.DataFrame") -> "pd.DataFrame":
    """Rows with :data:`COLUMNS` first, in their dtypes (ids and layers as strings)."""
    for c in ("data", "image_id", "method", "layer", "metric"):
        df[c] = df[c].astype(str)
    for c in ("index", "label", "target"):
        df[c] = df[c].astype("int64")
    df["value"] = df["value"].astype("float64")
    return df[list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]]


def read_results(out: str | os.PathLike) -> "pd.DataFrame":
    """Read the rows a run wrote to ``out`` (``.csv`` file or ``.parquet`` folder)."""
    return ResultStore(out).read()


def results_path(split: str, model: "nn.Module", root: str | Path = "results", suffix: str = ".parquet",
                 prefix: str = "bench") -> Path:
    """Where a run's rows go: ``<root>/<prefix>_<split>_<model fingerprint><suffix>`` (``prefix``
    ``"ties"`` for the tie-seed rows).

    The fingerprint keeps the rows of different checkpoints apart, since a resumed run
    reuses every stored row whose (image, method, layer, metric) matches.
    """
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in split)
    return Path(root) / f"{prefix}_{safe}_{model_fingerprint(model)}{suffix}"


def stored_prefix(out: str | Path, data: str, methods: Sequence[str], layers: Sequence[str],
                  metrics: Sequence[str]) -> int:
    """How many leading images (indices 0, 1, ...) of ``data`` have every wanted row in ``out``.

    A longer command-line run into the same ``out`` is then reused by asking
    :func:`fgcam_lib.evaluation.runner.run_evaluation` for ``max(n, stored_prefix(...))`` images.
    ``metrics``: metric rows (``"average_drop"``, ``"overall"``, ...). Method/layer pairs
    the method does not support (a CAM at the input) are not required.
    """
    path = Path(out)
    if not path.exists():
        return 0
    df = read_results(path)
    if df.empty:
        return 0
    df = df[(df["data"] == data) & df["method"].isin(list(methods)) & df["metric"].isin(list(metrics))]
    df = df.assign(layer=df["layer"].map(layer_key))
    df = df[df["layer"].isin([layer_key(l) for l in layers])]
    if df.empty:
        return 0
    present = df.groupby("index").apply(lambda g: set(zip(g["method"], g["layer"], g["metric"])),
                                        include_groups=False)
    wanted = {(m, layer_key(l), k) for m in methods for l in layers if supports(m, l) for k in metrics}
    n = 0
    while n in present.index and present.loc[n] >= wanted:
        n += 1
    return n
