"""The explorer without a frontend: model, image, class, method, layer, rules, rank fraction -> figure.

    >>> from fgcam_lib.ui.explorer import Explorer
    >>> app = Explorer(model, preprocess)              # benchmark scenes + bundled photos
    >>> fig = app.update(method="fg_grad_cam", layer=13, fraction=0.25)
    >>> app.controls()["layer"].options                # what a layer menu would list
    >>> lab = app.fork()                               # a second state on the same caches
    >>> app = Explorer.from_models(model_menu())   # a model menu; each model loads when chosen
    >>> fig = app.update(model="bundled_resnet", layer="layer1")

``update()`` changes the settings given (the others keep their value), renders and returns a
matplotlib Figure: image, overlay, map at its true resolution, the SVD spectrum for FG-CAM
and the top-k per-channel components at that layer. :meth:`controls` says what each control
lists and shows; the ipywidgets view (:mod:`.widgets`) only mirrors it and calls
``update()``. Listeners (:meth:`subscribe`) hear ``"settings"``, ``"images"`` and ``"result"``.

Models: ``models=`` maps names to ``(model, preprocess)`` pairs or to loaders (functions that
return such a pair, e.g. :func:`~fgcam_lib.ui.gallery.model_menu`), called the first time the
model is chosen. ``update(model=name)`` switches: the layer menu lists that model's layers (the
current layer moves to the layer at the same resolution), the class menu its classes; each model
keeps its own caches, so switching back recomputes nothing.

Explainers come from the method registry (:func:`fgcam_lib.methods.make_explainer`), FG-CAM's
step 1 from :class:`~fgcam_lib.methods.components.TopComponents`. Caching: explainers per
(method, base, rules); the predicted-class forward per image; step 1 per (image, class,
base), so changing the rank fraction only re-runs denoising and the propagation, and
changing the rules a forward without gradients (the trace of the other rules) and the
propagation; each explanation's components at every pooling layer and the input, so
changing the layer is free. ``app.calls`` counts forwards (``"forward"``, ``"top"``, ``"trace"``,
``"explain"``), propagations (``"propagate"``) and models loaded (``"load"``).
"""
from __future__ import annotations

import base64
import io
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence, Union

import torch
from matplotlib.figure import Figure
from torch import nn

from . import viz
from ..catalogue import layer_label, method_label
from ..engine.graph import INPUT, Graph, graph_of
from ..engine.walk import eval_mode, forward
from ..methods.base import Explainer, Explanation
from ..methods.components import TopComponents
from ..methods.fgcam import BASES, FGCAM, denoise, denoise_rank
from ..methods.registry import is_input_layer, make_explainer
from .gallery import (ModelLoader, as_image_tensor, class_names_of, default_images, image_name, knows_benchmark,
                      model_label)
from .settings import (CAMS, DEFAULT_MODEL, KEEP, LRPS, METHODS, PREDICTED, RULES, Control, Settings,
                       fraction_choices, parse_method, pool_layers, registry_name)

__all__ = ["Explorer", "ExplorerFigure", "USER_ERRORS", "ModelSource"]

Tensor = torch.Tensor
#: what ``models=`` maps a name to: a loaded ``(model, preprocess)`` pair, or a loader of one
ModelSource = Union["tuple[nn.Module, Any]", ModelLoader]
#: errors shown as a message instead of a traceback
USER_ERRORS = (ValueError, TypeError, KeyError, IndexError, FileNotFoundError, RuntimeError)


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


def _message(err: BaseException) -> str:
    """The one-line message of a user error: a KeyError's text without the quotes its str()
    adds, any other text as it is (a closing quote of a quoted name stays)."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]
    else:
        text = str(err)
    return text.strip() or type(err).__name__


def _error_figure(message: str) -> ExplorerFigure:
    """A small figure that shows ``message`` (the headless form of the error area)."""
    fig = ExplorerFigure(figsize=(8, 1.6))
    fig.text(0.02, 0.5, message, color="#a00", fontsize=10, va="center", wrap=True)
    return fig


def _cache_put(cache: OrderedDict, key: Hashable, value: Any, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


@dataclass
class _Loaded:
    """One loaded model with what the explorer knows and has computed about it.

    The caches are keyed by image index, so a fork copies them (its images may diverge);
    explainers only hold the model, so they are shared.
    """

    model: nn.Module
    preprocess: Any
    graph: Graph
    device: torch.device
    layers: list[int | str]
    shapes: dict[int, torch.Size]
    class_names: list[str]
    explainers: dict[Hashable, Explainer] = field(default_factory=dict)
    probs: dict[int, Tensor] = field(default_factory=dict)
    tops: OrderedDict[Hashable, tuple[TopComponents, Tensor | None]] = field(default_factory=OrderedDict)
    results: OrderedDict[Hashable, Explanation] = field(default_factory=OrderedDict)

    @classmethod
    def of(cls, model: nn.Module, preprocess: Any, class_names: Sequence[str] | None = None) -> _Loaded:
        """Trace ``model`` and list its layers and their shapes (one forward of a blank input)."""
        graph = graph_of(model)
        device = next(model.parameters()).device
        x = torch.zeros(1, 3, preprocess.size, preprocess.size, device=device)
        with torch.no_grad(), eval_mode(model):
            shapes = forward(graph, x).shapes
        n_classes = int(shapes[graph.output][1])
        names = list(class_names) if class_names is not None else class_names_of(model, n_classes)
        return cls(model, preprocess, graph, device, pool_layers(model, preprocess.size), shapes, names)

    def copy(self) -> _Loaded:
        """The same model and explainers with copies of the per-image caches."""
        return replace(self, probs=dict(self.probs), tops=OrderedDict(self.tops), results=OrderedDict(self.results))

    def layer_spec(self, layer: int | str) -> int | str:
        """Validate a layer; a pooling layer or the input comes back as in :attr:`layers` (13, "input")."""
        position = self.graph.position(layer)
        for known in self.layers:
            if self.graph.position(known) == position:
                return known
        return layer

    def width(self, layer: int | str) -> int:
        """The width of ``layer``'s output for the model's input size."""
        return int(self.shapes[self.graph.position(layer)][-1])


class Explorer:
    """Explore explanations of one model: settings in, figure out, no frontend needed.

    Args:
        model: a CNN fx can trace, or an ``nn.Sequential`` (see :mod:`fgcam_lib.engine.graph`).
        preprocess: the model's :class:`~fgcam_lib.data.models.Preprocess` (resize + normalise;
            its ``mean``/``std`` set the canonical rules' pixel bounds).
        images: B x 3 x H x W in [0, 1], or a list of ``(name, 3 x H x W)`` pairs, tensors or
            paths; default: four benchmark scenes and the real photos (the photos first
            for a model whose classes are not the benchmark's).
        class_names: one name per class of ``model``; default: the model's card or ``categories``
            (the other models' names always come from their cards).
        max_cached: explanations kept per model (least recently used dropped first).
        display_dpi: resolution of the figure in an app or a notebook.
        models: the model menu, ``{name: (model, preprocess) or loader}`` in menu order; a
            loader is called the first time its model is chosen. ``model`` is one of them
            (``model_name``) or is added to them.
        model_name: the name of ``model`` in the menu; default: the name ``models`` gives that
            very model, else ``"model"``.

    Attributes: ``settings`` (the current :class:`Settings`), ``figure`` (the last figure
    rendered for them; None after an error), ``error`` (the last message, or None),
    ``model_name``, ``model``, ``preprocess``, ``layers``, ``class_names`` (those of the model
    shown).

    Example:
        >>> app = Explorer(model, pre, models={"other": lambda: load_model("bundled_resnet")})
        >>> fig = app.update(model="other")             # the model loads now
        >>> app.settings.layer, app.layers[:2]
        ('input', ['layer4', 'layer3'])
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: Any,
        images: Tensor | Sequence[Any] | None = None,
        class_names: Sequence[str] | None = None,
        max_cached: int = 16,
        display_dpi: int = 90,
        models: Mapping[str, ModelSource] | None = None,
        model_name: str | None = None,
    ) -> None:
        self._listeners: list[Callable[[str], None]] = []
        self.calls: Counter[str] = Counter()
        sources = dict(models or {})
        if model_name is None:
            model_name = next((n for n, src in sources.items() if isinstance(src, tuple) and src[0] is model),
                              DEFAULT_MODEL)
        # the model given is the loaded entry of its name (first in the menu when it is new)
        self._sources: dict[str, ModelSource] = (
            {**sources, model_name: (model, preprocess)} if model_name in sources
            else {model_name: (model, preprocess), **sources})
        self._loaded: dict[str, _Loaded] = {model_name: _Loaded.of(model, preprocess, class_names)}
        self._activate(model_name)
        self.images: list[tuple[str, Tensor]] = []
        if images is None:  # a network that knows photos starts on one; a bundled model on a scene
            images = default_images(preprocess.size, photos_first=not knows_benchmark(self.class_names))
        for i, item in enumerate(images):
            name, img = item if isinstance(item, tuple) else (image_name(item, i), item)
            self.add_image(img, name)
        if not self.images:
            raise ValueError("Explorer needs at least one image")
        self.settings = Settings(layer=self.layers[-1], model=model_name)
        self.error: str | None = None
        self.figure: ExplorerFigure | None = None
        self.max_cached, self.display_dpi = max_cached, display_dpi

    @classmethod
    def from_models(cls, models: Mapping[str, ModelSource], start: str | None = None, **kwargs: Any) -> Explorer:
        """An explorer with a model menu that shows ``start`` (default: the first of ``models``)
        and loads each of the others when it is chosen; ``kwargs`` go to the constructor.

        Example:
            >>> app = Explorer.from_models(model_menu(), "bundled")
            >>> [name for _, name in app.controls()["model"].options]
            ['efficientnet_lite0', 'bundled', 'bundled_vgg16bn_fc', 'bundled_resnet']
        """
        if not models:
            raise ValueError("from_models needs at least one model")
        start = next(iter(models)) if start is None else start
        if start not in models:
            raise ValueError(f"unknown model {start!r}; use one of {', '.join(map(repr, models))}")
        model, preprocess = _resolve(start, models[start])
        return cls(model, preprocess, models={**models, start: (model, preprocess)}, model_name=start, **kwargs)

    def fork(self) -> Explorer:
        """A headless explorer on the same models and images, with its own settings.

        Caches are copied (explainers and loaded models shared), so what this one has computed
        is free for the fork, and what the fork sets or renders leaves this one, and any app
        showing it, alone.
        """
        other = Explorer.__new__(Explorer)
        core = {k: v for k, v in self.__dict__.items() if not k.startswith("_view")}
        other.__dict__.update(core)
        other._listeners = []
        other.images = list(self.images)
        other._loaded = {name: entry.copy() for name, entry in self._loaded.items()}
        other._activate(self.model_name)
        other.calls = Counter()
        return other

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(event)`` after each change: ``"settings"``, ``"images"``, ``"result"``."""
        self._listeners.append(listener)

    def _notify(self, event: str) -> None:
        for listener in self._listeners:
            listener(event)

    # -- images ---------------------------------------------------------------------
    def add_image(self, image: Any, name: str | None = None) -> int:
        """Add an image (tensor in [0, 1], PIL image or file path); returns its index.

        An image with a name already present replaces nothing: its index is returned.
        """
        if name is None:
            name = image_name(image, len(self.images))
        for i, (known, _) in enumerate(self.images):
            if known == name:
                return i
        self.images.append((name, as_image_tensor(image)))
        self._notify("images")
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
    @property
    def model_names(self) -> list[str]:
        """The models the explorer offers, in menu order (loaded or not)."""
        return list(self._sources)

    def _load(self, name: str) -> _Loaded:
        """The entry of model ``name``, loading it on first use (``calls["load"]``)."""
        if name not in self._loaded:
            if name not in self._sources:
                raise ValueError(f"unknown model {name!r}; use one of {', '.join(map(repr, self._sources))}")
            source = self._sources[name]
            if not isinstance(source, tuple):
                self.calls["load"] += 1
            model, preprocess = _resolve(name, source)
            self._sources[name] = (model, preprocess)  # shared with forks: each model loads once
            self._loaded[name] = _Loaded.of(model, preprocess)
        return self._loaded[name]

    def _activate(self, name: str) -> None:
        """Make model ``name`` (already loaded) the one explained: its model, layers, classes, caches."""
        e = self._loaded[name]
        self.model_name = name
        self.model, self.preprocess, self.graph, self.device = e.model, e.preprocess, e.graph, e.device
        self.layers, self._shapes, self.class_names = e.layers, e.shapes, e.class_names
        self._explainers, self._probs, self._tops, self._results = e.explainers, e.probs, e.tops, e.results

    def _carry_layer(self, layer: int | str, new: _Loaded) -> int | str:
        """The layer of ``new``'s menu at the same resolution as ``layer`` of the current model
        (the input stays the input; none at that resolution: the input)."""
        if is_input_layer(layer):
            return new.layers[-1]
        width = self._loaded[self.model_name].width(layer)
        return next((known for known in new.layers if not is_input_layer(known) and new.width(known) == width),
                    new.layers[-1])

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

    def _target(self, s: Settings) -> int:
        if s.target is None:
            return int(self.probabilities(s.image).argmax())
        if not 0 <= s.target < len(self.class_names):
            raise ValueError(f"class {s.target} out of range (0..{len(self.class_names) - 1})")
        return int(s.target)

    def explainer(self, method: str, base: str = "grad_cam", rules: str = "paper") -> Explainer:
        """The cached registry explainer of a method (FG-CAM without denoising: the explorer denoises)."""
        key = (method, base, rules) if method == "fg_cam" else (method, rules) if method in LRPS else (method,)
        if key not in self._explainers:
            options: dict[str, Any] = {} if method in CAMS else {"rules": rules}
            if method == "fg_cam":
                options["denoise"] = None
            self._explainers[key] = make_explainer(registry_name(method, base), self.model, self.preprocess, **options)
        return self._explainers[key]

    # -- computing ------------------------------------------------------------------
    def _positions(self, extra: int, upto: int | None = None) -> list[int]:
        """Positions of the pooling layers and the input (at or below ``upto``), plus ``extra``."""
        pos = {self.graph.position(layer) for layer in self.layers} | {extra}
        return sorted(p for p in pos if upto is None or self.graph.reaches(p, upto))

    def _top(self, s: Settings, target: int, fg: FGCAM) -> tuple[TopComponents, Tensor | None]:
        """FG-CAM step 1 with ``fg``'s rules and its CAM weights, cached per (image, class, base, rules).

        The components do not depend on the rules, but the trace they are pushed down with does:
        under other rules, step 1's components are reused and only a forward without gradients
        runs (``calls["trace"]``), not step 1 again (``calls["top"]``).
        """
        key = (s.image, target, s.base, s.rules)
        if key not in self._tops:
            done = next((t for k, t in self._tops.items() if k[:3] == key[:3]), None)
            if done is None:
                self.calls["top"] += 1
                with torch.enable_grad():
                    top = TopComponents(fg, self._input(s.image), target)
                weights = top.weights
            else:
                self.calls["trace"] += 1
                top = TopComponents(fg, self._input(s.image), target, source=lambda x, t: done[0].components)
                weights = done[1]
            _cache_put(self._tops, key, (top, weights), 4)
        self._tops.move_to_end(key)
        return self._tops[key]

    def _fg_explanation(self, s: Settings, target: int, position: int) -> Explanation:
        fg = self.explainer("fg_cam", s.base, s.rules)
        assert isinstance(fg, FGCAM)
        L = fg.component_position
        if not self.graph.reaches(position, L):
            raise ValueError(f"FG-CAM explains at the component layer {layer_label(self.graph.name(L))} "
                             f"or below it, not at {layer_label(self.graph.name(position))}")
        top, weights = self._top(s, target, fg)
        I = denoise(top.components, s.fraction) if s.denoise else top.components
        self.calls["propagate"] += 1
        names = {p: self.graph.name(p) for p in self._positions(position, L)}
        R = top.propagate(I, list(names.values()))
        return Explanation({p: R[n] for p, n in names.items()}, top.target, top.logits, weights,
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
        if s.model != self.model_name:
            raise ValueError(f"these settings are for model {s.model!r}, the explorer shows {self.model_name!r}; "
                             "set(model=...) first")
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
            _cache_put(self._results, key, cached, self.max_cached)
        self._results.move_to_end(key)
        return cached, position

    # -- settings -------------------------------------------------------------------
    def _apply(self, changes: dict[str, Any]) -> Settings:
        """New settings from ``changes`` (values other than KEEP), validated."""
        changes = {k: v for k, v in changes.items() if v is not KEEP}
        s = self.settings
        new = self._loaded[self.model_name]  # the model the other settings are checked against
        if "model" in changes and changes["model"] != s.model:
            new = self._load(str(changes["model"]))  # loads it the first time
            changes["model"] = str(changes["model"])
            if "layer" not in changes:
                changes["layer"] = self._carry_layer(s.layer, new)
            if "target" not in changes and new.class_names != self.class_names:
                changes["target"] = None  # another model's class i is another class
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
            changes["layer"] = new.layer_spec(changes["layer"])
        if "fraction" in changes:
            denoise_rank(float(changes["fraction"]), 1, 1)  # validates (0, 1]
            changes["fraction"] = float(changes["fraction"])
        if changes.get("target") == PREDICTED:
            changes["target"] = None
        elif changes.get("target") is not None:
            changes["target"] = int(changes["target"])
        return replace(s, **changes)

    def set(self, **changes: Any) -> Settings:
        """Change settings without rendering; raises on invalid values. Returns the new settings.

            >>> app.set(method="lrp", layer="input", signed=True)
            >>> expl, position = app.explanation()
        """
        new = self._apply(changes)
        if new != self.settings:
            self.figure = None  # rendered for other settings
        if new.model != self.model_name:
            self._activate(new.model)
        self.settings = new
        self._notify("settings")
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
        model: Any = KEEP,
        *,
        raise_errors: bool = False,
    ) -> ExplorerFigure:
        """Change settings (those given) and render; returns the Figure.

        ``model``: a name of :attr:`model_names` (loaded the first time; the layer moves to the
        new model's layer at the same resolution unless ``layer`` is given);
        ``image``: index, name, file path or a 3 x H x W tensor; ``target``: class index, or
        None / ``"predicted"`` (the predicted class); ``method``: a key of
        :data:`~fgcam_lib.ui.settings.METHODS`, ``"fg_grad_cam"``-style names or labels;
        ``layer``: e.g. 33, ``"features.13"``, ``"input"``; ``rules``: "paper" or "canonical";
        ``denoise``/``fraction``: FG-CAM's SVD denoising; ``signed``: keep negative relevance
        (red/blue). Invalid combinations give a figure with the message (also in
        ``self.error``; :attr:`figure` is then None) unless ``raise_errors``.
        """
        changes = dict(model=model, image=image, target=target, method=method, base=base, layer=layer, rules=rules,
                       denoise=denoise, fraction=fraction, signed=signed, k=k)
        self.error = None
        try:
            self.set(**changes)
            expl, position = self.explanation()
            fig = self.figure = self.render(expl, position)
        except USER_ERRORS as err:
            if raise_errors:
                raise
            self.error = _message(err)
            self.figure = None  # what was shown belongs to other settings
            fig = _error_figure(self.error)
        self._notify("result")
        return fig

    # -- what the controls show -----------------------------------------------------
    def _class_options(self) -> tuple[tuple[str, Any], ...]:
        top = self.top_classes(self.settings.image, 5)
        target = self.settings.target
        if target is not None and target not in [c for c, _, _ in top]:
            top.append((target, self.class_names[target], float(self.probabilities()[target])))
        return ((f"predicted: {top[0][1]} ({top[0][2]:.2f})", PREDICTED),) + tuple(
            (f"{n} ({p:.2f})", c) for c, n, p in top)

    def _layer_options(self) -> tuple[tuple[str, Any], ...]:
        extra = [] if self.settings.layer in self.layers else [self.settings.layer]
        out = []
        for layer in self.layers + extra:
            shape = self._shapes[self.graph.position(layer)]
            out.append((f"{layer_label(layer)} ({shape[-2]}x{shape[-1]})", layer))
        return tuple(out)

    def _fraction_options(self) -> tuple[tuple[str, Any], ...]:
        shape = self._shapes[self.graph.default_component_layer()]
        options = fraction_choices(int(shape[1]), int(shape[2] * shape[3]))
        if all(abs(f - self.settings.fraction) > 1e-12 for _, f in options):
            options = sorted(options + [(f"{self.settings.fraction:.3g}", self.settings.fraction)], key=lambda o: o[1])
        return tuple(options)

    def controls(self) -> dict[str, Control]:
        """What each control lists and shows for the current settings (see :class:`Control`).

            >>> app.controls()["target"].value          # the predicted class's option
            'predicted'
        """
        s = self.settings
        fg = s.method == "fg_cam"
        return {
            "model": Control(tuple((model_label(name), name) for name in self._sources), s.model,
                             len(self._sources) > 1),
            "image": Control(tuple((name, i) for i, (name, _) in enumerate(self.images)), s.image),
            "target": Control(self._class_options(), PREDICTED if s.target is None else s.target),
            "method": Control(tuple((v, k) for k, v in METHODS.items()), s.method),
            "base": Control(tuple((method_label(b), b) for b in BASES), s.base, fg),
            "layer": Control(self._layer_options(), s.layer),
            "rules": Control(tuple((r, r) for r in RULES), s.rules, s.method not in CAMS),
            "denoise": Control(None, s.denoise, fg),
            "fraction": Control(self._fraction_options(), s.fraction, fg and s.denoise),
            "signed": Control(None, s.signed),
        }

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
            what += f" [{method_label(s.base)}, {s.rules} rules, {dn}]"
        elif s.method in LRPS:
            what += f" [{s.rules} rules]"
        model = f"{s.model} · " if len(self._sources) > 1 else ""
        return (f"{model}{self.images[s.image][0]} · {what} · {layer_label(s.layer)} · "
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
                     title=f"map at {layer_label(s.layer)} ({h}x{w})")
        if has_svd:
            viz.singular_values_plot(axes[3], expl.extras["top"], s.fraction if s.denoise else None)
        at_top = expl.weights is not None and position == self.graph.default_component_layer()
        viz.component_strip(comps, s.k, weights=expl.weights if at_top else None, fig=lower,
                            channel_names=["R", "G", "B"] if position == INPUT and comps.shape[1] == 3 else None,
                            title=f"components at {layer_label(s.layer)}: top {min(s.k, comps.shape[1])} "
                                  f"of {comps.shape[1]} channels by total |relevance|")
        fig.suptitle(self.describe(s), fontsize=10)
        return fig

    def snapshot(self) -> bytes:
        """A light PNG of the current settings' figure (rendered if needed): what a saved notebook shows."""
        fig = self.figure if self.figure is not None else self.update()
        return viz.light_png(fig, dpi=self.display_dpi)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook a headless explorer shows its current figure."""
        png = base64.b64encode(self.snapshot()).decode("ascii")
        return {"image/png": png, "text/plain": f"Explorer: {self.describe()}"}


def _resolve(name: str, source: ModelSource) -> tuple[nn.Module, Any]:
    """``(model, preprocess)`` from a pair or a loader, checked."""
    got = source if isinstance(source, tuple) else source()
    if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], nn.Module)):
        raise TypeError(f"model {name!r} must be a (model, preprocess) pair or a function returning one")
    return got
