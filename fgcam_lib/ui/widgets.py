"""An interactive explorer: image, class, method, layer, rules, rank fraction -> maps.

    >>> from fgcam_lib.ui.widgets import Explorer
    >>> app = Explorer(model, preprocess)              # benchmark scenes + bundled photos
    >>> app.show()                                     # JupyterLab: the interactive app
    >>> fig = app.update(method="fg_grad_cam", layer=13, fraction=0.25)   # headless

``update()`` is the render path the controls call; it works without a frontend and
returns a matplotlib Figure (image, overlay, map at its true resolution, the SVD
spectrum for FG-CAM, and the top-k per-channel components at that layer). Arguments
left out keep their current value. The controls are built only by ``show()``.

Caching: explainers per (method, base, rules); the predicted-class forward per image;
FG-CAM's components at the top layer per (image, class, base), so changing the rank
fraction or the rules only re-runs denoising and the propagation; each explanation's
components at every pooling layer and the input, so changing the layer is free.
``app.calls`` counts forwards (``"forward"``, ``"top"``, ``"explain"``) and
propagations (``"propagate"``).

matplotlib and ipywidgets are imported here (and in :mod:`fgcam_lib.ui.viz`) only.
"""
from __future__ import annotations

import io
from collections import Counter, OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Hashable, Sequence

import torch
from matplotlib.figure import Figure
from torch import nn

from . import viz
from ..methods.base import Explainer, Explanation
from ..methods.cam import GradCAM, LayerCAM, ScoreCAM
from ..methods.components import TopComponents
from ..methods.fgcam import BASES, CLRP, FGCAM, LRP, SGLRP, denoise, denoise_rank
from ..engine.graph import INPUT, graph_of
from ..engine.walk import eval_mode, forward

__all__ = [
    "Explorer", "ExplorerFigure", "Settings", "METHODS", "RULES", "parse_method", "pool_layers", "fraction_choices",
]

Tensor = torch.Tensor

#: method key -> label, in the order of the method dropdown
METHODS: dict[str, str] = {
    "fg_cam": "FG-CAM", "grad_cam": "Grad-CAM", "score_cam": "Score-CAM", "layer_cam": "Layer-CAM",
    "lrp": "LRP", "clrp": "CLRP", "sglrp": "SGLRP",
}
CAMS = ("grad_cam", "score_cam", "layer_cam")
LRPS = ("lrp", "clrp", "sglrp")
RULES = ("paper", "canonical")
#: errors shown as a message instead of a traceback
USER_ERRORS = (ValueError, TypeError, KeyError, IndexError, FileNotFoundError, RuntimeError)


class _Keep:
    """Sentinel: keep the current setting."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


@dataclass(frozen=True)
class Settings:
    """One state of the explorer; ``target=None`` is the predicted class."""

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


# ------------------------------------------------------------------ helpers ------------
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


def pool_layers(model: nn.Module, size: int = 224) -> list[int | str]:
    """The layers the explorer offers, deepest first, then ``"input"``.

    VGG-style models: the pools as ``model.features`` indices (``[43, 33, 23, 13, 6, "input"]``);
    other models: the deepest layer at each resolution, by name (ResNet: ``"layer4"`` ...
    ``"layer1"``, the stem), found with one forward of a ``size`` x ``size`` input.
    """
    graph = graph_of(model)
    shapes: dict = {}
    if not graph.vgg_style:
        conv = graph.first_conv()
        x = torch.zeros(1, conv.in_channels, size, size, device=next(model.parameters()).device)
        with torch.no_grad(), eval_mode(model):
            shapes = forward(graph, x).shapes
    out: list[int | str] = []
    for p in graph.stages(shapes):
        name = graph.name(p)
        out.append(int(name.split(".")[1]) if graph.vgg_style and name.startswith("features.") else name)
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


def _class_names(model: nn.Module, n_classes: int) -> list[str]:
    card = getattr(model, "card", None)
    names = (card or {}).get("classes") if isinstance(card, dict) else None
    names = names or getattr(model, "categories", None)
    if names and len(names) == n_classes:
        return [str(c) for c in names]
    return [f"class {i}" for i in range(n_classes)]


def _default_images(size: int) -> list[tuple[str, Tensor]]:
    """A few benchmark scenes and the bundled photos, at the model's input size."""
    from ..data.scenes import CLASSES, SyntheticScenes

    scenes = SyntheticScenes("test", n=4, size=size)
    out = [(f"scene {i} ({CLASSES[s['label']]})", s["image"]) for i, s in ((i, scenes[i]) for i in range(len(scenes)))]
    try:
        from ..data.images import sample_photos

        photos, names, _ = sample_photos(size)
        out += [(f"photo: {n}", p) for n, p in zip(names, photos)]
    except (ImportError, OSError, AttributeError):  # scikit-image missing or a broken wheel
        pass
    return out


def _as_image_tensor(image: Any) -> Tensor:
    """3 x H x W float in [0, 1] from a tensor (3 x H x W, 1 x 3 x H x W, uint8), a PIL image or a path."""
    from ..data.images import load_image

    if isinstance(image, (str, Path)) or hasattr(image, "convert"):
        return load_image(image)
    t = torch.as_tensor(image)
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"an image must be 3 x H x W (values in [0, 1]), got shape {tuple(t.shape)}")
    return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()


class ExplorerFigure(Figure):
    """A Figure that Jupyter shows as PNG without a pyplot backend (``update()``'s return value).

    Not registered with pyplot, so moving a slider a thousand times leaves nothing open.
    """

    display_dpi: int = 90

    def png(self, dpi: int | None = None) -> bytes:
        """The figure as PNG bytes."""
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=dpi or self.display_dpi, facecolor="white")
        return buf.getvalue()

    def _repr_png_(self) -> bytes:
        return self.png()


def _default_name(image: Any, i: int) -> str:
    """A path's file name, else ``"image i"``."""
    return Path(image).name if isinstance(image, (str, Path)) else f"image {i}"


def _error_figure(message: str) -> ExplorerFigure:
    """A small figure that shows ``message`` (the headless form of the error area)."""
    fig = ExplorerFigure(figsize=(8, 1.6))
    fig.text(0.02, 0.5, message, color="#a00", fontsize=10, va="center", wrap=True)
    return fig


# ------------------------------------------------------------------ the explorer ------------
class Explorer:
    """Explore explanations of one model interactively (``show()``) or headless (``update()``).

    Args:
        model: a CNN fx can trace, or an ``nn.Sequential`` (see :mod:`fgcam_lib.engine.graph`).
        preprocess: the model's :class:`~fgcam_lib.data.models.Preprocess` (resize + normalise;
            its ``mean``/``std`` set the canonical rules' pixel bounds).
        images: B x 3 x H x W in [0, 1], or a list of ``(name, 3 x H x W)`` pairs, tensors or
            paths; default: four benchmark scenes and the bundled photos.
        class_names: one name per class; default: the model's card or ``categories``.
        max_cached: explanations kept (least recently used dropped first).
        display_dpi: resolution of the figure in the app (``show()``).
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: Any,
        images: Tensor | Sequence[Any] | None = None,
        class_names: Sequence[str] | None = None,
        max_cached: int = 16,
        display_dpi: int = 90,
    ) -> None:
        self.model, self.preprocess = model, preprocess
        self._widgets: dict[str, Any] | None = None
        self._syncing = False
        self.graph = graph_of(model)
        self.device = next(model.parameters()).device
        self.images: list[tuple[str, Tensor]] = []
        for i, item in enumerate(_default_images(preprocess.size) if images is None else images):
            name, img = item if isinstance(item, tuple) else (_default_name(item, i), item)
            self.add_image(img, name)
        if not self.images:
            raise ValueError("Explorer needs at least one image")
        self.layers = pool_layers(model, preprocess.size)
        self._shapes = self._layer_shapes()
        n_classes = int(self._shapes[self.graph.output][1])
        self.class_names = list(class_names) if class_names is not None else _class_names(model, n_classes)
        self.settings = Settings(layer=self.layers[-1])
        self.calls: Counter[str] = Counter()
        self.error: str | None = None
        self.max_cached, self.display_dpi = max_cached, display_dpi
        self._explainers: dict[Hashable, Explainer] = {}
        self._probs: dict[int, Tensor] = {}
        self._tops: OrderedDict[Hashable, TopComponents] = OrderedDict()
        self._results: OrderedDict[Hashable, Explanation] = OrderedDict()

    # -- images ---------------------------------------------------------------------
    def add_image(self, image: Any, name: str | None = None) -> int:
        """Add an image (tensor in [0, 1], PIL image or file path); returns its index.

        An image with a name already present replaces nothing: its index is returned.
        """
        if name is None:
            name = _default_name(image, len(self.images))
        for i, (known, _) in enumerate(self.images):
            if known == name:
                return i
        self.images.append((name, _as_image_tensor(image)))
        if self._widgets is not None:
            self._syncing = True
            try:
                self._widgets["image"].options = self._image_options()
                self._widgets["image"].value = self.settings.image
            finally:
                self._syncing = False
        return len(self.images) - 1

    def _image_index(self, image: Any) -> int:
        """An index from an int, a known name, a file path or an image tensor."""
        if isinstance(image, bool):
            raise TypeError("image must be an index, a name, a path or a tensor")
        if isinstance(image, int):
            if not -len(self.images) <= image < len(self.images):
                raise IndexError(f"image {image} out of range: {len(self.images)} images loaded")
            return image % len(self.images)
        if isinstance(image, (str, Path)):
            names = [n for n, _ in self.images]
            if str(image) in names:
                return names.index(str(image))
            if not Path(image).exists():
                raise FileNotFoundError(f"no image named {str(image)!r} and no such file")
            return self.add_image(str(image), str(image))
        return self.add_image(image)

    def display_image(self, i: int | None = None) -> Tensor:
        """Image ``i`` (default: the current one) at the model's input size, 3 x S x S in [0, 1]."""
        img = self.images[self.settings.image if i is None else i][1]
        return self.preprocess.resize(img[None])[0].clamp(0, 1)

    def _input(self, i: int) -> Tensor:
        """Image ``i`` preprocessed for the model, 1 x 3 x S x S on the model's device."""
        return self.preprocess(self.images[i][1][None]).to(self.device)

    # -- model ----------------------------------------------------------------------
    def _layer_shapes(self) -> dict[int, torch.Size]:
        """Shape of every position's activation for one input of the model's size."""
        x = torch.zeros(1, 3, self.preprocess.size, self.preprocess.size, device=self.device)
        with torch.no_grad(), eval_mode(self.model):
            return forward(self.graph, x).shapes

    def probabilities(self, image: Any = None) -> Tensor:
        """Softmax probabilities of one image (default: the current one), a K vector; cached."""
        i = self.settings.image if image is None else self._image_index(image)
        if i not in self._probs:
            self.calls["forward"] += 1
            with torch.no_grad(), eval_mode(self.model):
                self._probs[i] = self.model(self._input(i)).softmax(1)[0].cpu()
        return self._probs[i]

    def top_classes(self, image: Any = None, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` most probable classes as ``(index, name, probability)``, best first."""
        p = self.probabilities(image)
        values, idx = p.topk(min(k, p.numel()))
        return [(int(c), self.class_names[int(c)], float(v)) for v, c in zip(values, idx)]

    def _layer_spec(self, layer: int | str) -> int | str:
        """Validate a layer; a pooling layer or the input comes back as in :attr:`layers` (13, "input")."""
        position = self.graph.position(layer)
        for known in self.layers:
            if self.graph.position(known) == position:
                return known
        return layer

    def _target(self, s: Settings) -> int:
        if s.target is None:
            return int(self.probabilities(s.image).argmax())
        if not 0 <= s.target < len(self.class_names):
            raise ValueError(f"class {s.target} out of range (0..{len(self.class_names) - 1})")
        return int(s.target)

    def explainer(self, method: str, base: str = "grad_cam", rules: str = "paper") -> Explainer:
        """The cached explainer of a method (FG-CAM without denoising: the explorer denoises)."""
        key = (method, base, rules) if method == "fg_cam" else (method, rules) if method in LRPS else (method,)
        if key not in self._explainers:
            mean, std = self.preprocess.mean, self.preprocess.std
            if method == "fg_cam":
                made: Explainer = FGCAM(self.model, base=base, rules=rules, mean=mean, std=std)
            elif method in LRPS:
                made = {"lrp": LRP, "clrp": CLRP, "sglrp": SGLRP}[method](self.model, rules=rules, mean=mean, std=std)
            else:
                made = {"grad_cam": GradCAM, "layer_cam": LayerCAM}[method](self.model) if method != "score_cam" \
                    else ScoreCAM(self.model, variant="paper")
            self._explainers[key] = made
        return self._explainers[key]

    # -- computing ------------------------------------------------------------------
    def _cache_put(self, cache: OrderedDict, key: Hashable, value: Any, limit: int) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > limit:
            cache.popitem(last=False)

    def _positions(self, extra: int, upto: int | None = None) -> list[int]:
        """Positions of the pooling layers and the input (at or below ``upto``), plus ``extra``."""
        pos = {self.graph.position(layer) for layer in self.layers} | {extra}
        return sorted(p for p in pos if upto is None or self.graph.reaches(p, upto))

    def _top(self, s: Settings, target: int, fg: FGCAM) -> TopComponents:
        """FG-CAM step 1, cached per (image, class, base); the rules do not enter it."""
        key = (s.image, target, s.base)
        if key not in self._tops:
            self.calls["top"] += 1
            with torch.enable_grad():
                top = TopComponents(fg, self._input(s.image), target)
            self._cache_put(self._tops, key, top, 2)
        self._tops.move_to_end(key)
        return self._tops[key]

    def _fg_explanation(self, s: Settings, target: int, position: int) -> Explanation:
        fg = self.explainer("fg_cam", s.base, s.rules)
        assert isinstance(fg, FGCAM)
        L = fg.component_position
        if not self.graph.reaches(position, L):
            raise ValueError(f"FG-CAM explains at the component layer {viz.layer_label(self.graph.name(L))} "
                             f"or below it, not at {viz.layer_label(self.graph.name(position))}")
        top = self._top(s, target, fg)
        I = denoise(top.components, s.fraction) if s.denoise else top.components
        self.calls["propagate"] += 1
        names = {p: self.graph.name(p) for p in self._positions(position, L)}
        R = top.propagate(I, list(names.values()))
        return Explanation({p: R[n] for p, n in names.items()}, top.target, top.logits, top.weights,
                           {"top": top.components})

    def _other_explanation(self, s: Settings, target: int, position: int) -> Explanation:
        ex = self.explainer(s.method, s.base, s.rules)
        positions = self._positions(position) if s.method in LRPS else [position]
        names = [self.graph.name(p) for p in positions]
        self.calls["explain"] += 1
        expl = ex.explain(self._input(s.image), target, names)
        return Explanation({p: expl.components[n].detach() for p, n in zip(positions, names)},
                           expl.target, expl.logits, expl.weights)

    def explanation(self, s: Settings | None = None) -> tuple[Explanation, int]:
        """``(explanation with components keyed by position, position)`` for settings ``s``; cached."""
        s = self.settings if s is None else s
        target = self._target(s)
        position = self.graph.position(s.layer)
        if s.method == "fg_cam":
            key: tuple = (s.image, target, "fg_cam", s.base, s.rules, s.fraction if s.denoise else None)
        elif s.method in LRPS:
            key = (s.image, target, s.method, s.rules)
        else:
            key = (s.image, target, s.method, position)
        cached = self._results.get(key)
        if cached is None or position not in cached.components:
            make = self._fg_explanation if s.method == "fg_cam" else self._other_explanation
            cached = make(s, target, position)
            self._cache_put(self._results, key, cached, self.max_cached)
        self._results.move_to_end(key)
        return cached, position

    # -- settings -------------------------------------------------------------------
    def _apply(self, changes: dict[str, Any]) -> Settings:
        """New settings from ``changes`` (values other than KEEP), validated."""
        changes = {k: v for k, v in changes.items() if v is not KEEP}
        s = self.settings
        if "image" in changes:
            changes["image"] = self._image_index(changes["image"])
            if changes["image"] != s.image and "target" not in changes:
                changes["target"] = None
        base = changes.get("base", s.base)
        if "method" in changes:
            method, base, want_denoise = parse_method(changes["method"], base)
            changes["method"], changes["base"] = method, base
            if want_denoise is not None and "denoise" not in changes:
                changes["denoise"] = want_denoise
        elif "base" in changes and base not in BASES:
            raise ValueError(f"unknown FG-CAM base {base!r}; use one of {', '.join(BASES)}")
        if changes.get("rules", s.rules) not in RULES:
            raise ValueError(f"unknown rules {changes['rules']!r}; use one of {', '.join(RULES)}")
        if "layer" in changes:
            changes["layer"] = self._layer_spec(changes["layer"])
        if "fraction" in changes:
            denoise_rank(float(changes["fraction"]), 1, 1)  # validates (0, 1]
            changes["fraction"] = float(changes["fraction"])
        if "target" in changes and changes["target"] is not None:
            changes["target"] = int(changes["target"])
        return replace(s, **changes)

    def set(self, **changes: Any) -> Settings:
        """Change settings without rendering; raises on invalid values. Returns the new settings.

            >>> app.set(method="lrp", layer="input", signed=True)
            >>> expl, position = app.explanation()
        """
        self.settings = self._apply(changes)
        self._sync_widgets()
        return self.settings

    def current_map(self) -> Tensor:
        """The current settings' map, h x w (Eq. 8; no ReLU when ``signed``)."""
        expl, position = self.explanation()
        return expl.map(position, self.settings.signed)[0]

    def update(
        self,
        image: Any = KEEP,
        target: Any = KEEP,
        method: Any = KEEP,
        base: Any = KEEP,
        layer: Any = KEEP,
        rules: Any = KEEP,
        denoise: Any = KEEP,
        fraction: Any = KEEP,
        signed: Any = KEEP,
        k: Any = KEEP,
        *,
        raise_errors: bool = False,
    ) -> ExplorerFigure:
        """Change settings (those given) and render; returns the Figure.

        ``image``: index, name, file path or a 3 x H x W tensor; ``target``: class index or
        None (predicted); ``method``: a key of :data:`METHODS`, ``"fg_grad_cam"``-style
        names or labels; ``layer``: e.g. 33, ``"features.13"``, ``"input"``; ``rules``:
        "paper" or "canonical"; ``denoise``/``fraction``: FG-CAM's SVD denoising; ``signed``:
        keep negative relevance (red/blue). Invalid combinations give a figure with the
        message (also in ``self.error``) unless ``raise_errors``.
        """
        changes = dict(image=image, target=target, method=method, base=base, layer=layer, rules=rules,
                       denoise=denoise, fraction=fraction, signed=signed, k=k)
        self.error = None
        try:
            self.set(**changes)
            expl, position = self.explanation()
            fig = self.render(expl, position)
        except USER_ERRORS as err:
            if raise_errors:
                raise
            self.error = str(err).strip("'\"") or type(err).__name__
            fig = _error_figure(self.error)
        self._show_result(fig)
        return fig

    # -- drawing --------------------------------------------------------------------
    def describe(self, s: Settings | None = None) -> str:
        """A one-line description of the settings (the figure's title)."""
        s = self.settings if s is None else s
        target = self._target(s)
        p = float(self.probabilities(s.image)[target])
        what = METHODS[s.method]
        if s.method == "fg_cam":
            L = self.graph.default_component_layer()
            C, K = int(self._shapes[L][1]), int(self._shapes[L][2] * self._shapes[L][3])
            dn = f"denoise {s.fraction:g} (rank {denoise_rank(s.fraction, C, K)})" if s.denoise else "no denoising"
            what += f" [{viz.method_label(s.base)}, {s.rules} rules, {dn}]"
        elif s.method in LRPS:
            what += f" [{s.rules} rules]"
        return (f"{self.images[s.image][0]} · {what} · {viz.layer_label(s.layer)} · "
                f"class {self.class_names[target]} (p={p:.2f})" + (" · signed" if s.signed else ""))

    def render(self, expl: Explanation, position: int, s: Settings | None = None) -> ExplorerFigure:
        """The explorer's figure: image, overlay, map, (SVD spectrum), component strip."""
        s = self.settings if s is None else s
        image = self.display_image(s.image)
        comps = expl.components[position]
        m = comps.sum(1)[0]
        m = m if s.signed else m.clamp(min=0)
        fig = ExplorerFigure(figsize=(11.5, 6.4), layout="constrained")
        fig.display_dpi = self.display_dpi
        upper, lower = fig.subfigures(2, 1, height_ratios=[1.3, 1.0])
        has_svd = s.method == "fg_cam"
        axes = upper.subplots(1, 4 if has_svd else 3, width_ratios=[1, 1, 1, 1.25] if has_svd else None)
        axes[0].imshow(viz.as_image(image))
        viz.clean_axes(axes[0])
        axes[0].set_title(self.images[s.image][0], fontsize=9)
        viz.show_map(axes[1], m, image, signed=s.signed, title="overlay")
        h, w = m.shape
        viz.show_map(axes[2], m, signed=s.signed, mode="nearest", colorbar=True,
                     title=f"map at {viz.layer_label(s.layer)} ({h}x{w})")
        if has_svd:
            viz.singular_values_plot(axes[3], expl.extras["top"], s.fraction if s.denoise else None)
        at_top = expl.weights is not None and position == self.graph.default_component_layer()
        viz.component_strip(comps, s.k, weights=expl.weights if at_top else None, fig=lower,
                            channel_names=["R", "G", "B"] if position == INPUT and comps.shape[1] == 3 else None,
                            title=f"components at {viz.layer_label(s.layer)}: top {min(s.k, comps.shape[1])} "
                                  f"of {comps.shape[1]} channels by total |relevance|")
        fig.suptitle(self.describe(s), fontsize=10)
        return fig

    # -- the interactive app --------------------------------------------------------
    def _image_options(self) -> list[tuple[str, int]]:
        return [(name, i) for i, (name, _) in enumerate(self.images)]

    def _class_options(self) -> list[tuple[str, int | None]]:
        top = self.top_classes(self.settings.image, 5)
        target = self.settings.target
        if target is not None and target not in [c for c, _, _ in top]:
            top.append((target, self.class_names[target], float(self.probabilities()[target])))
        return [(f"predicted: {top[0][1]} ({top[0][2]:.2f})", None)] + [(f"{n} ({p:.2f})", c) for c, n, p in top]

    def _layer_options(self) -> list[tuple[str, int | str]]:
        out = []
        extra = [] if self.settings.layer in self.layers else [self.settings.layer]
        for layer in self.layers + extra:
            shape = self._shapes[self.graph.position(layer)]
            out.append((f"{viz.layer_label(layer)} ({shape[-2]}x{shape[-1]})", layer))
        return out

    def _fraction_options(self) -> list[tuple[str, float]]:
        L = self.graph.default_component_layer()
        shape = self._shapes[L]
        options = fraction_choices(int(shape[1]), int(shape[2] * shape[3]))
        if all(abs(f - self.settings.fraction) > 1e-12 for _, f in options):
            options = sorted(options + [(f"{self.settings.fraction:.3g}", self.settings.fraction)], key=lambda o: o[1])
        return options

    def _build_widgets(self) -> dict[str, Any]:
        import ipywidgets as W

        s = self.settings
        wide = W.Layout(width="300px")
        ws: dict[str, Any] = {
            "image": W.Dropdown(options=self._image_options(), value=s.image, description="image", layout=wide),
            "path": W.Text(placeholder="path/to/image.png", description="file", layout=wide),
            "load": W.Button(description="load", layout=W.Layout(width="60px")),
            "upload": W.FileUpload(accept="image/*", multiple=False, description="upload"),
            "target": W.Dropdown(options=self._class_options(), value=s.target, description="class", layout=wide),
            "method": W.Dropdown(options=[(v, k) for k, v in METHODS.items()], value=s.method, description="method"),
            "base": W.Dropdown(options=[(viz.method_label(b), b) for b in BASES], value=s.base, description="base CAM"),
            "layer": W.Dropdown(options=self._layer_options(), value=s.layer, description="layer"),
            "rules": W.ToggleButtons(options=list(RULES), value=s.rules, description="rules"),
            "denoise": W.Checkbox(value=s.denoise, description="SVD denoising"),
            "fraction": W.SelectionSlider(options=self._fraction_options(), value=s.fraction,
                                          description="rank fraction", continuous_update=False, layout=wide),
            "signed": W.Checkbox(value=s.signed, description="signed (red/blue)"),
            "message": W.HTML(),
            "view": W.Image(format="png"),
        }
        for name in ("image", "target", "method", "base", "layer", "rules", "denoise", "fraction", "signed"):
            ws[name].observe(self._on_change(name), names="value")
        ws["load"].on_click(lambda _: self._load_path())
        ws["path"].on_submit(lambda _: self._load_path())
        ws["upload"].observe(lambda change: self._load_upload(change["new"]), names="value")
        return ws

    def _on_change(self, name: str):
        """Observer for one control: push its value through ``update``."""

        def handler(change: dict) -> None:
            if self._syncing:
                return
            self.update(**{name: change["new"]})

        return handler

    def _load_path(self) -> None:
        assert self._widgets is not None
        path = self._widgets["path"].value.strip()
        if path:
            self.update(image=path)

    def _load_upload(self, value: Sequence[dict]) -> None:
        from PIL import Image

        if not value:
            return
        item = value[0]
        try:
            with Image.open(io.BytesIO(bytes(item["content"]))) as im:
                im.load()
                i = self.add_image(im.copy(), item.get("name") or None)
        except (OSError, ValueError) as err:
            self._show_message(f"cannot read {item.get('name', 'the upload')!r} as an image: {err}")
            return
        self.update(image=i)

    def _sync_widgets(self) -> None:
        """Make the controls show the current settings (after a headless or chained change)."""
        ws = self._widgets
        if ws is None:
            return
        s = self.settings
        self._syncing = True
        try:
            ws["image"].options = self._image_options()
            ws["image"].value = s.image
            ws["target"].options = self._class_options()
            ws["target"].value = s.target
            ws["layer"].options = self._layer_options()
            for name in ("method", "base", "layer", "rules", "denoise", "signed"):
                ws[name].value = getattr(s, name)
            ws["fraction"].options = self._fraction_options()
            ws["fraction"].value = s.fraction
            ws["base"].disabled = s.method != "fg_cam"
            ws["denoise"].disabled = s.method != "fg_cam"
            ws["fraction"].disabled = s.method != "fg_cam" or not s.denoise
            ws["rules"].disabled = s.method in CAMS
        finally:
            self._syncing = False

    def _show_message(self, text: str) -> None:
        if self._widgets is not None:
            import html

            self._widgets["message"].value = f"<span style='color:#a00'>{html.escape(text)}</span>"

    def _show_result(self, fig: ExplorerFigure) -> None:
        """Put the figure (or the error message) into the app's output area, if shown."""
        if self._widgets is None:
            return
        if self.error:
            self._show_message(self.error)
            return
        self._widgets["message"].value = ""
        self._widgets["view"].value = fig.png(self.display_dpi)

    def show(self) -> Any:
        """Build the controls (once) and return the app widget; in a notebook it displays itself."""
        import ipywidgets as W

        if self._widgets is None:
            self._widgets = self._build_widgets()
            self.update()
        ws = self._widgets
        left = W.VBox([ws["image"], W.HBox([ws["path"], ws["load"]]), ws["upload"], ws["target"]])
        mid = W.VBox([ws["method"], ws["base"], ws["layer"], ws["rules"]])
        right = W.VBox([ws["denoise"], ws["fraction"], ws["signed"]])
        return W.VBox([W.HBox([left, mid, right]), ws["message"], ws["view"]])
