"""The typed training config, the named recipes and the command line that fills a config in.

A run of :mod:`fgcam_lib.training.train` is one :class:`TrainConfig`; :data:`RECIPES` are
named field overrides (TRAINING.md explains each), :data:`TINY` a run of seconds for
tests, and :func:`parse_config` turns flags into a config (defaults, then ``--recipe`` /
``--tiny``, then explicit flags). The field names are stored in checkpoints and cards:
renaming one breaks resuming older runs.

    >>> cfg = parse_config(["--recipe", "bundled_resnet", "--epochs", "5"])
    >>> cfg.arch, cfg.epochs, cfg.size
    ('bundled_resnet', 5, 96)
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.models import BUNDLED_CHECKPOINT, DATA_DIR, scaled_cfg
from ..data.transformers import SWIN_SIZE, VIT_SIZE

__all__ = ["TrainConfig", "RECIPES", "TINY", "parse_config"]

#: the command line's one-line description
_DESCRIPTION = "Train the bundled benchmark models on synthetic scenes, resumably."


@dataclass
class TrainConfig:
    """One training run. Fields above ``threads`` decide the result; the rest only how it runs.

    >>> cfg = TrainConfig(arch="bundled_resnet", size=96)
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    arch: str = "bundled"  # bundled | bundled_vgg16bn_fc | bundled_resnet | bundled_vit | bundled_swin
    width_div: int = 8  # VGG archs: torchvision VGG16 widths divided by this
    widths: tuple[int, ...] = (16, 32, 64, 128)  # bundled_resnet: replaces resnet18's 64, 128, 256, 512
    pool: int = 3  # bundled_vgg16bn_fc: AdaptiveAvgPool2d output side
    hidden: int = 512  # bundled_vgg16bn_fc: width of the two hidden FC layers
    dropout: float = 0.2  # VGG archs (torchvision's ResNet has none)
    size: int = 128
    n_train: int = 20000
    n_train_pairs: int = 6000
    n_val: int = 300
    n_test: int = 1000
    n_pairs: int = 500
    epochs: int = 10
    minutes: float = 0.0
    batch: int = 64
    lr: float = 2e-3
    wd: float = 5e-4
    seed: int = 0
    init: Path | None = None
    # how the run goes (not part of the result)
    threads: int = 0
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    out: Path = BUNDLED_CHECKPOINT
    ckpt: Path | None = None
    ckpt_minutes: float = 5.0
    ckpt_steps: int = 0
    ckpt_dir: Path | None = None
    cache: Path | None = None
    log_steps: int = 50
    resume: bool = False
    stop_after: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings, tuples as lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        kw: dict[str, Any] = {}
        for name, v in d.items():
            kw[name] = _coerce(name, v)
        return cls(**kw)

    def result_fields(self) -> dict[str, Any]:
        """The fields that decide the trained weights (a resumed run takes these from its checkpoint)."""
        d = self.to_dict()
        return {k: d[k] for k in _RESULT_FIELDS}

    def arch_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of :func:`~fgcam_lib.data.models.build_bundled` for ``arch``."""
        if self.arch == "bundled_resnet":
            return {"widths": list(self.widths)}
        if self.arch in TRANSFORMER_SIZES:  # the shape is the class's; the card records it
            return dict(TRANSFORMER_SIZES[self.arch])
        kw: dict[str, Any] = {"cfg": scaled_cfg(self.width_div), "dropout": self.dropout}
        if self.arch == "bundled_vgg16bn_fc":
            kw.update(pool=self.pool, hidden=self.hidden)
        return kw


#: transformer architectures -> their constructor's shape
TRANSFORMER_SIZES: dict[str, dict[str, Any]] = {"bundled_vit": VIT_SIZE, "bundled_swin": SWIN_SIZE}

_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
_PATH_FIELDS = {n for n, t in _FIELD_TYPES.items() if "Path" in str(t)}
_FIELD_NAMES = [f.name for f in dataclasses.fields(TrainConfig)]
_RESULT_FIELDS = _FIELD_NAMES[:_FIELD_NAMES.index("threads")]  # the ones that decide the weights


def _coerce(name: str, v: Any) -> Any:
    if name not in _FIELD_TYPES:
        raise ValueError(f"unknown training config field {name!r}")
    if name in _PATH_FIELDS:  # "none" on the command line clears a recipe's path (e.g. --init none)
        return None if v is None or str(v).lower() in ("", "none") else Path(v)
    if name == "widths":
        return tuple(int(c) for c in v)
    return v


#: named recipes: field overrides of :class:`TrainConfig` (TRAINING.md explains each)
RECIPES: dict[str, dict[str, Any]] = {
    "bundled_resnet": dict(
        arch="bundled_resnet", widths=(16, 32, 64, 128), size=96, n_train=20000, n_train_pairs=20000,
        epochs=60, minutes=120.0, batch=32, lr=2e-3, wd=0.05, out=DATA_DIR / "bundled_resnet.pt"),
    "bundled_vgg16bn_fc": dict(
        arch="bundled_vgg16bn_fc", width_div=8, pool=3, hidden=512, dropout=0.5, size=96, n_train=20000,
        n_train_pairs=20000, epochs=20, minutes=60.0, batch=32, lr=1e-3, wd=0.05,
        init=DATA_DIR / "bundled_vgg16bn.pt", out=DATA_DIR / "bundled_vgg16bn_fc.pt"),
    "bundled_vit": dict(
        arch="bundled_vit", size=96, n_train=20000, n_train_pairs=20000, epochs=40, minutes=80.0, batch=32,
        lr=1e-3, wd=0.05, out=DATA_DIR / "bundled_vit.pt"),
    "bundled_swin": dict(
        arch="bundled_swin", size=96, n_train=20000, n_train_pairs=20000, epochs=40, minutes=80.0, batch=32,
        lr=1e-3, wd=0.05, out=DATA_DIR / "bundled_swin.pt"),
}
#: a run of seconds for tests
TINY: dict[str, Any] = dict(size=32, n_train=64, n_train_pairs=32, n_val=16, n_test=32, n_pairs=16, epochs=1,
                            batch=32, width_div=16, widths=(4, 8, 8, 16), hidden=32, pool=1)

_HELP: dict[str, str] = {
    "arch": "architecture: bundled, bundled_vgg16bn_fc, bundled_resnet, bundled_vit or bundled_swin",
    "width_div": "VGG archs: divide VGG16 channel widths by this",
    "widths": "bundled_resnet: the four stage widths",
    "pool": "bundled_vgg16bn_fc: pooled side before the classifier",
    "hidden": "bundled_vgg16bn_fc: hidden FC width",
    "size": "input side in pixels",
    "n_train": "single-object training scenes",
    "n_train_pairs": "two-object training scenes (soft targets)",
    "n_val": "held-out scenes evaluated every epoch",
    "n_test": "'test' scenes for the final accuracy",
    "n_pairs": "'pairs' scenes for the final top-2 metric",
    "minutes": "if > 0: train for this many minutes of wall time, with the one-cycle schedule driven by elapsed "
               "time instead of steps (--epochs is then an upper bound)",
    "lr": "peak AdamW learning rate (one-cycle)",
    "wd": "AdamW weight decay",
    "seed": "torch seed and scene seed",
    "init": "start from the weights of this checkpoint (fine-tuning, new schedule; tensors whose name and shape "
            "match are loaded)",
    "threads": "torch CPU threads (0: leave default)",
    "out": "output checkpoint (.pt); card = .json",
    "ckpt": "resumable training state (default: <out>.ckpt)",
    "ckpt_minutes": "write the training state at least this often (minutes of wall time)",
    "ckpt_steps": "also write it every this many steps (0: off)",
    "ckpt_dir": "also keep a copy of the weights after every epoch here",
    "cache": "folder to cache generated scenes in",
    "log_steps": "log progress every this many steps",
    "resume": "continue from the training state (its recipe wins over the command line's; a missing one starts "
              "afresh)",
    "stop_after": "stop (as if killed, no checkpoint) after this many steps in this process; for tests",
}


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Command line -> :class:`TrainConfig`: defaults, then ``--recipe`` / ``--tiny``, then explicit flags.

    >>> parse_config(["--recipe", "bundled_resnet", "--threads", "1"]).arch
    'bundled_resnet'
    """
    p = argparse.ArgumentParser(prog="python -m fgcam_lib.training", description=_DESCRIPTION,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--recipe", choices=sorted(RECIPES), help="start from a named recipe (TRAINING.md)")
    p.add_argument("--tiny", action="store_true", help="tiny run for tests: a few scenes, one epoch, 32 px")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        helptext = _HELP.get(f.name, "") + f" (default: {default})"
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=helptext)
        elif isinstance(default, tuple):
            p.add_argument(flag, type=int, nargs="+", help=helptext)
        elif f.name in _PATH_FIELDS:
            p.add_argument(flag, type=Path, help=helptext)
        else:
            p.add_argument(flag, type=type(default), help=helptext)
    given = vars(p.parse_args(argv))
    values: dict[str, Any] = {}
    if given.pop("tiny", False):
        values.update(TINY)
    recipe = given.pop("recipe", None)
    if recipe is not None:
        values.update(RECIPES[recipe])
    values.update(given)
    return TrainConfig.from_dict(values)

