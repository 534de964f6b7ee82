"""The explorer's session: its models, images and everything computed on them, with no settings.

    >>> session = Session({"bundled": (model, preprocess)}, "bundled")
    >>> session.add_image(image, "cat")
    0
    >>> session.top_classes(0, k=3)                  # [(class, name, probability), ...]
    >>> expl, position = session.explanation(Settings(model="bundled", layer=13))

Models: ``sources`` maps names to ``(model, preprocess)`` pairs or to loaders (functions that
return such a pair), called the first time the model is loaded. One model is *active*
(:meth:`Session.activate`): the one whose layers, classes and caches the explorer shows. Each
model keeps its own caches (:class:`ModelEntry`), so switching back recomputes nothing.

Explainers come from the method registry (:func:`fgcam_lib.methods.make_explainer`), FG-CAM's
step 1 from :class:`~fgcam_lib.methods.components.TopComponents`. Caching: explainers per
(method, base, rules); the predicted-class forward per image; step 1 per (image, class,
base), so changing the rank fraction only re-runs denoising and the propagation, and
changing the rules a forward without gradients (the trace of the other rules) and the
propagation; each explanation's components at every pooling layer and the input, so
changing the layer is free. :attr:`Session.calls` counts forwards (``"forward"``, ``"top"``,
``"trace"``, ``"explain"``), propagations (``"propagate"``) and models loaded (``"load"``).
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence, Union

import torch
from torch import nn

from ..catalogue import layer_label
from ..engine.graph import Graph, graph_of
from ..engine.ops import eval_mode
from ..engine.walk import blank_shapes
from ..methods.base import Explainer, Explanation
from ..methods.components import TopComponents
from ..methods.fgcam import FGCAM, denoise
from ..methods.registry import make_explainer
from .gallery import ModelLoader, as_image_tensor, class_names_of, image_name
from .settings import CAMS, LRPS, Settings, pool_layers, registry_name

__all__ = ["Session", "ModelEntry", "ModelSource", "resolve"]

Tensor = torch.Tensor
#: what a model menu maps a name to: a loaded ``(model, preprocess)`` pair, or a loader of one
ModelSource = Union["tuple[nn.Module, Any]", ModelLoader]


def _cache_put(cache: OrderedDict, key: Hashable, value: Any, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


def resolve(name: str, source: ModelSource) -> tuple[nn.Module, Any]:
    """``(model, preprocess)`` from a pair or a loader, checked."""
    got = source if isinstance(source, tuple) else source()
    if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], nn.Module)):
        raise TypeError(f"model {name!r} must be a (model, preprocess) pair or a function returning one")
    return got


@dataclass
class ModelEntry:
    """One loaded model with what the session knows and has computed about it.

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
    def of(cls, model: nn.Module, preprocess: Any, class_names: Sequence[str] | None = None) -> ModelEntry:
        """Trace ``model`` and list its layers and their shapes (one forward of a blank input)."""
        graph = graph_of(model)
        shapes = blank_shapes(model, graph, preprocess.size)
        n_classes = int(shapes[graph.output][1])
        names = list(class_names) if class_names is not None else class_names_of(model, n_classes)
        return cls(model, preprocess, graph, next(model.parameters()).device,
                   pool_layers(model, preprocess.size, shapes), shapes, names)

    def copy(self) -> ModelEntry:
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


class Session:
    """Models (one active), images and caches; what an explorer and its forks compute with.

    Args:
        sources: the model menu, ``{name: (model, preprocess) or loader}`` in menu order;
            shared with forks, so a model loads once for all of them.
        active: the name of the loaded model to start on.
        entry: that model's :class:`ModelEntry`.
        max_cached: explanations kept per model (least recently used dropped first).
    """

    def __init__(self, sources: dict[str, ModelSource], active: str, entry: ModelEntry, max_cached: int = 16) -> None:
        self.sources = sources
        self.entries: dict[str, ModelEntry] = {active: entry}
        self.images: list[tuple[str, Tensor]] = []
        self.calls: Counter[str] = Counter()
        self.max_cached = max_cached
        #: called after an image is added (the explorer tells its listeners)
        self.on_new_image: Callable[[], None] = lambda: None
        self.activate(active)

    def fork(self) -> Session:
        """The same models, images and sources, copies of the caches, its own call counts."""
        other = Session.__new__(Session)
        other.sources, other.max_cached = self.sources, self.max_cached
        other.entries = {name: entry.copy() for name, entry in self.entries.items()}
        other.images = list(self.images)
        other.calls = Counter()
        other.on_new_image = lambda: None
        other.activate(self.model_name)
        return other

    # -- models ---------------------------------------------------------------------
    @property
    def model_names(self) -> list[str]:
        """The models on offer, in menu order (loaded or not)."""
        return list(self.sources)

    def load(self, name: str) -> ModelEntry:
        """The entry of model ``name``, loading it on first use (``calls["load"]``)."""
        if name not in self.entries:
            if name not in self.sources:
                raise ValueError(f"unknown model {name!r}; use one of {', '.join(map(repr, self.sources))}")
            source = self.sources[name]
            if not isinstance(source, tuple):
                self.calls["load"] += 1
            model, preprocess = resolve(name, source)
            self.sources[name] = (model, preprocess)  # shared with forks: each model loads once
            self.entries[name] = ModelEntry.of(model, preprocess)
        return self.entries[name]

    def activate(self, name: str) -> None:
        """Make model ``name`` (already loaded) the one explained."""
        self.model_name = name
        self.active = self.entries[name]

    @property
    def model(self) -> nn.Module:
        return self.active.model

    @property
    def preprocess(self) -> Any:
        return self.active.preprocess

    @property
    def graph(self) -> Graph:
        return self.active.graph

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
        self.on_new_image()
        return len(self.images) - 1

    def image_index(self, image: Any) -> int:
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

    def display_image(self, i: int) -> Tensor:
        """Image ``i`` at the active model's input size, 3 x S x S in [0, 1]."""
        return self.preprocess.resize(self.images[i][1][None])[0].clamp(0, 1)

    def input(self, i: int) -> Tensor:
        """Image ``i`` preprocessed for the active model, 1 x 3 x S x S on its device."""
        return self.preprocess(self.images[i][1][None]).to(self.active.device)

    # -- classes --------------------------------------------------------------------
    def probabilities(self, image: Any) -> Tensor:
        """Softmax probabilities of one image under the active model, a K vector; cached."""
        i = self.image_index(image)
        probs = self.active.probs
        if i not in probs:
            self.calls["forward"] += 1
            with torch.no_grad(), eval_mode(self.model):
                probs[i] = self.model(self.input(i)).softmax(1)[0].cpu()
        return probs[i]

    def top_classes(self, image: Any, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` most probable classes as ``(index, name, probability)``, best first."""
        p = self.probabilities(image)
        values, idx = p.topk(min(k, p.numel()))
        return [(int(c), self.active.class_names[int(c)], float(v)) for v, c in zip(values, idx)]

    def target(self, s: Settings) -> int:
        """The class the settings explain: theirs, or the image's predicted class."""
        if s.target is None:
            return int(self.probabilities(s.image).argmax())
        n = len(self.active.class_names)
        if not 0 <= s.target < n:
            raise ValueError(f"class {s.target} out of range (0..{n - 1})")
        return int(s.target)

    # -- explanations ---------------------------------------------------------------
    def explainer(self, method: str, base: str = "grad_cam", rules: str = "paper") -> Explainer:
        """The cached registry explainer of a method (FG-CAM without denoising: the session denoises)."""
        key = (method, base, rules) if method == "fg_cam" else (method, rules) if method in LRPS else (method,)
        explainers = self.active.explainers
        if key not in explainers:
            options: dict[str, Any] = {} if method in CAMS else {"rules": rules}
            if method == "fg_cam":
                options["denoise"] = None
            explainers[key] = make_explainer(registry_name(method, base), self.model, self.preprocess, **options)
        return explainers[key]

    def explanation(self, s: Settings) -> tuple[Explanation, int]:
        """``(explanation with components keyed by position, position)`` for settings ``s``; cached."""
        if s.model != self.model_name:
            raise ValueError(f"these settings are for model {s.model!r}, the explorer shows {self.model_name!r}; "
                             "set(model=...) first")
        target = self.target(s)
        position = self.graph.position(s.layer)
        if s.method == "fg_cam":
            key: tuple = (s.image, target, "fg_cam", s.base, s.rules, s.fraction if s.denoise else None)
        elif s.method in LRPS:
            key = (s.image, target, s.method, s.rules)
        else:
            key = (s.image, target, s.method, position)
        results = self.active.results
        cached = results.get(key)
        if cached is None or position not in cached.components:
            make = self._fg_explanation if s.method == "fg_cam" else self._other_explanation
            cached = make(s, target, position)
            _cache_put(results, key, cached, self.max_cached)
        results.move_to_end(key)
        return cached, position

    def _positions(self, extra: int, upto: int | None = None) -> list[int]:
        """Positions of the pooling layers and the input (at or below ``upto``), plus ``extra``."""
        pos = {self.graph.position(layer) for layer in self.active.layers} | {extra}
        return sorted(p for p in pos if upto is None or self.graph.reaches(p, upto))

    def _top(self, s: Settings, target: int, fg: FGCAM) -> tuple[TopComponents, Tensor | None]:
        """FG-CAM step 1 with ``fg``'s rules and its CAM weights, cached per (image, class, base, rules).

        The components do not depend on the rules, but the trace they are pushed down with does:
        under other rules, step 1's components are reused and only a forward without gradients
        runs (``calls["trace"]``), not step 1 again (``calls["top"]``).
        """
        tops = self.active.tops
        key = (s.image, target, s.base, s.rules)
        if key not in tops:
            done = next((t for k, t in tops.items() if k[:3] == key[:3]), None)
            if done is None:
                self.calls["top"] += 1
                with torch.enable_grad():
                    top = TopComponents(fg, self.input(s.image), target)
                weights = top.weights
            else:
                self.calls["trace"] += 1
                top = TopComponents(fg, self.input(s.image), target, source=lambda x, t: done[0].components)
                weights = done[1]
            _cache_put(tops, key, (top, weights), 4)
        tops.move_to_end(key)
        return tops[key]

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
        expl = ex.explain(self.input(s.image), target, names)
        return Explanation({p: expl.components[n].detach() for p, n in zip(positions, names)},
                           expl.target, expl.logits, expl.weights)
