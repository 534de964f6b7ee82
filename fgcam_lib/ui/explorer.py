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

The explorer puts three parts together: the session (:mod:`.session`: models, images, cached
explainers and explanations; what is cached and what ``app.calls`` counts is described there),
the settings state (:mod:`.state`: the current settings, validating a change, the controls)
and the figure (:mod:`.render`). A fork shares the session's models and copies its caches.
"""
from __future__ import annotations

import base64
from collections import Counter
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from . import viz
from ..engine.graph import Graph
from ..methods.base import Explainer, Explanation
from .gallery import default_images, image_name, knows_benchmark
from .render import ExplorerFigure, describe, error_figure, render
from .session import ModelEntry, ModelSource, Session, resolve
from .settings import DEFAULT_MODEL, KEEP, Control, Settings
from .state import SettingsState

__all__ = ["Explorer", "USER_ERRORS"]

Tensor = torch.Tensor
#: errors shown as a message instead of a traceback
USER_ERRORS = (ValueError, TypeError, KeyError, IndexError, FileNotFoundError, RuntimeError)


def _message(err: BaseException) -> str:
    """The one-line message of a user error: a KeyError's text without the quotes its str()
    adds, any other text as it is (a closing quote of a quoted name stays)."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]
    else:
        text = str(err)
    return text.strip() or type(err).__name__


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
    shown), ``images``, ``calls``, ``session`` (:class:`~.session.Session`) and ``state``
    (:class:`~.state.SettingsState`).

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
        sources = dict(models or {})
        if model_name is None:
            model_name = next((n for n, src in sources.items() if isinstance(src, tuple) and src[0] is model),
                              DEFAULT_MODEL)
        # the model given is the loaded entry of its name (first in the menu when it is new)
        sources = ({**sources, model_name: (model, preprocess)} if model_name in sources
                   else {model_name: (model, preprocess), **sources})
        entry = ModelEntry.of(model, preprocess, class_names)
        self._bind(Session(sources, model_name, entry, max_cached))
        if images is None:  # a network that knows photos starts on one; a bundled model on a scene
            images = default_images(preprocess.size, photos_first=not knows_benchmark(entry.class_names))
        for i, item in enumerate(images):
            name, img = item if isinstance(item, tuple) else (image_name(item, i), item)
            self.add_image(img, name)
        if not self.images:
            raise ValueError("Explorer needs at least one image")
        self.state = SettingsState(self.session, Settings(layer=entry.layers[-1], model=model_name))
        self.error: str | None = None
        self.figure: ExplorerFigure | None = None
        self.display_dpi = display_dpi

    def _bind(self, session: Session) -> None:
        """Start on ``session`` with no listeners; its new images are announced as ``"images"``."""
        self._listeners: list[Callable[[str], None]] = []
        self.session = session
        session.on_new_image = lambda: self._notify("images")

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
        model, preprocess = resolve(start, models[start])
        return cls(model, preprocess, models={**models, start: (model, preprocess)}, model_name=start, **kwargs)

    def fork(self) -> Explorer:
        """A headless explorer on the same models and images, with its own settings.

        Caches are copied (explainers and loaded models shared), so what this one has computed
        is free for the fork, and what the fork sets or renders leaves this one, and any app
        showing it, alone.
        """
        other = Explorer.__new__(Explorer)
        other._bind(self.session.fork())
        other.state = SettingsState(other.session, self.settings)
        other.error, other.figure, other.display_dpi = self.error, self.figure, self.display_dpi
        return other

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(event)`` after each change: ``"settings"``, ``"images"``, ``"result"``."""
        self._listeners.append(listener)

    def _notify(self, event: str) -> None:
        for listener in self._listeners:
            listener(event)

    # -- what the session holds -----------------------------------------------------
    @property
    def settings(self) -> Settings:
        return self.state.settings

    @property
    def images(self) -> list[tuple[str, Tensor]]:
        """``(name, 3 x H x W image in [0, 1])`` pairs, in the image menu's order."""
        return self.session.images

    @property
    def calls(self) -> Counter[str]:
        """Forwards, propagations and models loaded so far (a Counter; see :mod:`.session`)."""
        return self.session.calls

    @property
    def max_cached(self) -> int:
        return self.session.max_cached

    @property
    def model_names(self) -> list[str]:
        """The models the explorer offers, in menu order (loaded or not)."""
        return self.session.model_names

    @property
    def model_name(self) -> str:
        return self.session.model_name

    @property
    def model(self) -> nn.Module:
        return self.session.model

    @property
    def preprocess(self) -> Any:
        return self.session.preprocess

    @property
    def graph(self) -> Graph:
        return self.session.graph

    @property
    def device(self) -> torch.device:
        return self.session.active.device

    @property
    def layers(self) -> list[int | str]:
        return self.session.active.layers

    @property
    def class_names(self) -> list[str]:
        return self.session.active.class_names

    @property
    def _sources(self) -> dict[str, ModelSource]:
        """The model menu: name -> loaded pair or loader (shared with forks)."""
        return self.session.sources

    def add_image(self, image: Any, name: str | None = None) -> int:
        """Add an image (tensor in [0, 1], PIL image or file path); returns its index.

        An image with a name already present replaces nothing: its index is returned.
        """
        return self.session.add_image(image, name)

    def display_image(self, i: int | None = None) -> Tensor:
        """Image ``i`` (default: the current one) at the model's input size, 3 x S x S in [0, 1]."""
        return self.session.display_image(self.settings.image if i is None else i)

    def probabilities(self, image: Any = None) -> Tensor:
        """Softmax probabilities of one image (default: the current one), a K vector; cached."""
        return self.session.probabilities(self.settings.image if image is None else image)

    def top_classes(self, image: Any = None, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` most probable classes as ``(index, name, probability)``, best first."""
        return self.session.top_classes(self.settings.image if image is None else image, k)

    def _target(self, s: Settings) -> int:
        return self.session.target(s)

    def explainer(self, method: str, base: str = "grad_cam", rules: str = "paper") -> Explainer:
        """The cached registry explainer of a method (FG-CAM without denoising: the explorer denoises)."""
        return self.session.explainer(method, base, rules)

    def explanation(self, s: Settings | None = None) -> tuple[Explanation, int]:
        """``(explanation with components keyed by position, position)`` for settings ``s``; cached."""
        return self.session.explanation(self.settings if s is None else s)

    def current_map(self) -> Tensor:
        """The current settings' map, h x w (Eq. 8; no ReLU when ``signed``)."""
        expl, position = self.explanation()
        return expl.map(position, self.settings.signed)[0]

    # -- settings -------------------------------------------------------------------
    def set(self, **changes: Any) -> Settings:
        """Change settings without rendering; raises on invalid values. Returns the new settings.

            >>> app.set(method="lrp", layer="input", signed=True)
            >>> expl, position = app.explanation()
        """
        new = self.state.validated(changes)
        if new != self.settings:
            self.figure = None  # rendered for other settings
        if new.model != self.model_name:
            self.session.activate(new.model)
        self.state.settings = new
        self._notify("settings")
        return new

    def controls(self) -> dict[str, Control]:
        """What each control lists and shows for the current settings (see :class:`Control`).

            >>> app.controls()["target"].value          # the predicted class's option
            'predicted'
        """
        return self.state.controls()

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
            fig = error_figure(self.error)
        self._notify("result")
        return fig

    # -- drawing --------------------------------------------------------------------
    def describe(self, s: Settings | None = None) -> str:
        """A one-line description of the settings (the figure's title)."""
        return describe(self.session, self.settings if s is None else s)

    def render(self, expl: Explanation, position: int, s: Settings | None = None) -> ExplorerFigure:
        """The explorer's figure: image, overlay, map, (SVD spectrum), component strip."""
        return render(self.session, expl, position, self.settings if s is None else s, self.display_dpi)

    def snapshot(self) -> bytes:
        """A light PNG of the current settings' figure (rendered if needed): what a saved notebook shows."""
        fig = self.figure if self.figure is not None else self.update()
        return viz.light_png(fig, dpi=self.display_dpi)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook a headless explorer shows its current figure."""
        png = base64.b64encode(self.snapshot()).decode("ascii")
        return {"image/png": png, "text/plain": f"Explorer: {self.describe()}"}
