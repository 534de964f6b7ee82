"""What the explorer can be set to: its :class:`Settings`, the methods and rules it offers, and
the choices its controls list (layers, rank fractions, the "predicted class" option).

No matplotlib and no ipywidgets here: the headless explorer (:mod:`.explorer`) validates and
lists choices with these, the ipywidgets view (:mod:`.widgets`) shows them.

    >>> parse_method("fg_score_cam_denoise")
    ('fg_cam', 'score_cam', True)
    >>> [f for _, f in fraction_choices(64, 9)][:3]
    [0.1, 0.2222222222222222, 0.4444444444444444]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..catalogue import method_label
from ..engine.graph import graph_of
from ..methods.fgcam import BASES, denoise_rank
from ..methods.registry import PAPER_CAM_METHODS, method_names, resolution_layers

__all__ = [
    "Settings", "Control", "KEEP", "PREDICTED", "METHODS", "CAMS", "LRPS", "RULES", "DEFAULT_MODEL",
    "parse_method", "registry_name", "pool_layers", "fraction_choices",
]

#: the registry's CAMs the paper compares (Grad-CAM, Score-CAM, Layer-CAM) and its LRP family
CAMS: tuple[str, ...] = tuple(n for n in method_names("cam") if n in PAPER_CAM_METHODS)
LRPS: tuple[str, ...] = tuple(method_names("lrp"))
#: the explorer's method keys, in the order of its method menu: FG-CAM (its base a separate
#: setting, so one entry stands for the registry's fg_* methods), then the registry's names
_KEYS = ("fg_cam", *CAMS, *LRPS)
#: method key -> label (the catalogue's), in menu order
METHODS: dict[str, str] = {k: method_label(k) for k in _KEYS}
RULES = ("paper", "canonical")
#: the class option "the predicted class" (a real value: a menu treats None as "nothing selected")
PREDICTED = "predicted"


class _Keep:
    """Sentinel: keep the current setting."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


#: the model name of an explorer given one model and no name for it
DEFAULT_MODEL = "model"


@dataclass(frozen=True)
class Settings:
    """One state of the explorer; ``target=None`` is the predicted class, ``model`` the name of
    the model explained (one of the explorer's models)."""

    image: int = 0
    target: int | None = None
    method: str = "fg_cam"
    base: str = "grad_cam"
    layer: int | str = "input"
    rules: str = "paper"
    denoise: bool = True
    fraction: float = 0.1
    signed: bool = False
    k: int = 8
    model: str = DEFAULT_MODEL


@dataclass(frozen=True)
class Control:
    """What one control shows: its choices as ``(label, value)`` pairs (None: free or boolean),
    its value (always one of the choices' values) and whether it applies to the current method."""

    options: tuple[tuple[str, Any], ...] | None
    value: Any
    enabled: bool = True


def parse_method(method: str, base: str = "grad_cam") -> tuple[str, str, bool | None]:
    """``(method key, base, denoise or None)`` from a key or a label.

    ``"fg_grad_cam"`` -> ``("fg_cam", "grad_cam", None)``; ``"fg_score_cam_denoise"`` ->
    ``("fg_cam", "score_cam", True)``; ``"Grad-CAM"`` -> ``("grad_cam", base, None)``.
    """
    key = str(method).strip().lower().replace("-", "_").replace(" ", "_")
    want_denoise: bool | None = None
    if key.endswith("_denoise"):
        key, want_denoise = key[: -len("_denoise")], True
    if key.startswith("fg_") and key != "fg_cam":
        key, base = "fg_cam", key[3:]
    if key not in METHODS:
        known = ", ".join(list(METHODS) + [f"fg_{b}" for b in BASES])
        raise ValueError(f"unknown method {method!r}; use one of {known}")
    if key == "fg_cam" and base not in BASES:
        raise ValueError(f"unknown FG-CAM base {base!r}; use one of {', '.join(BASES)}")
    if want_denoise and key != "fg_cam":
        raise ValueError(f"denoising applies to FG-CAM only, not {METHODS[key]}")
    return key, base, want_denoise


def registry_name(method: str, base: str = "grad_cam") -> str:
    """The method registry's name of an explorer method: ``("fg_cam", "score_cam")`` -> ``"fg_score_cam"``."""
    return f"fg_{base}" if method == "fg_cam" else method


def pool_layers(model: nn.Module, size: int = 224, shapes: dict[int, Any] | None = None) -> list[int | str]:
    """The layers the explorer offers, deepest first, then ``"input"``: those of
    :func:`~fgcam_lib.methods.registry.resolution_layers`, VGG-style pools as ``model.features``
    indices (``[43, 33, 23, 13, 6, "input"]``), other layers by name (ResNet: ``"layer4"`` ...
    ``"layer1"``, the stem).
    """
    vgg = graph_of(model).vgg_style
    out: list[int | str] = [int(name.split(".")[1]) if vgg and name.startswith("features.") else name
                            for _, name in resolution_layers(model, size, shapes)]
    return out + ["input"]


def fraction_choices(channels: int, positions: int, paper: float = 0.1) -> list[tuple[str, float]]:
    """Rank-fraction choices from one singular value to all (log-spaced ranks), plus ``paper``.

    Returns ``(label, fraction)`` pairs; a fraction keeps ``floor(fraction * min(C, K))``
    singular values (at least 1), and no two choices keep the same number.
    """
    n = max(1, min(channels, positions))
    ranks = sorted({2 ** i for i in range(n.bit_length()) if 2 ** i <= n} | {n})
    by_rank = {r: r / n for r in ranks}
    by_rank[denoise_rank(paper, channels, positions)] = paper
    return [(f"{f:.3g} (rank {r})", f) for r, f in sorted(by_rank.items())]
