"""Registry of the explanation methods the paper compares, by short name.

One place that knows, for each method, its display label (as in the paper's tables),
how to build it, at which layers it is defined and whether its maps are signed there.
Runners, notebooks and widgets build explainers through :func:`make_explainer`, so a
method is configured identically everywhere.

    >>> from fgcam_lib.methods import make_explainer, supports, is_signed
    >>> fg = make_explainer("fg_grad_cam_denoise", model, preprocess=preprocess)
    >>> maps = fg(x, layer=[33, 23, 13, "input"])     # {layer: B x h x w}, one propagation
    >>> supports("grad_cam", "input"), is_signed("lrp", "input")
    (False, True)

Families:

- ``cam``: Grad-CAM, Score-CAM, Layer-CAM, Grad-CAM++, XGrad-CAM, applied directly at a
  feature layer (not at the input, not above the component layer);
- ``fgcam``: FG-CAM on each CAM base (+ SVD denoising with rank fraction 0.1), at any
  layer at or below the component layer, the input included;
- ``lrp``: LRP, CLRP, SGLRP from the logits, at any layer.

Signed maps: at the input the paper compares LRP, CLRP, SGLRP and FG-CAM on maps that
keep their negative pixels (the Table 4 rule of Average Drop: keep only the positive
pixels when they are at most 50%); elsewhere maps are Eq. 8's ``ReLU(sum_c I_c)``.
Score-CAM weights use the authors' variant (``"paper"``: the target's softmax
probability of each masked input) for both Score-CAM and FG-Score-CAM, so at the
component layer the two share their weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from .base import Explainer, normalization
from .cam import GradCAM, GradCAMpp, LayerCAM, ScoreCAM, XGradCAM
from .fgcam import CLRP, FGCAM, LRP, SGLRP
from ..catalogue import METHOD_LABELS, is_input_layer
from ..engine.graph import INPUT, Graph, graph_of

__all__ = [
    "MethodSpec", "METHODS", "FAMILIES", "PAPER_CAM_METHODS", "PAPER_INPUT_METHODS",
    "make_explainer", "method_layers", "supports", "is_signed", "label",
    "method_names", "paper_layers", "resolution_layers",
]

FAMILIES: tuple[str, ...] = ("cam", "fgcam", "lrp")

#: Methods of the paper's Tables 1-3 (layers 33, 23, 13), in the paper's order.
PAPER_CAM_METHODS: tuple[str, ...] = (
    "grad_cam", "fg_grad_cam", "fg_grad_cam_denoise",
    "score_cam", "fg_score_cam", "fg_score_cam_denoise", "layer_cam",
)
#: Methods of the paper's Tables 4-6 (the input layer), in the paper's order.
PAPER_INPUT_METHODS: tuple[str, ...] = (
    "lrp", "clrp", "sglrp",
    "fg_grad_cam", "fg_grad_cam_denoise", "fg_score_cam", "fg_score_cam_denoise",
)


@dataclass(frozen=True)
class MethodSpec:
    """How to build one method and where it applies.

    ``build(model, mean, std, **kwargs) -> Explainer``; ``defaults`` are the keyword
    arguments the registry passes (overridable in :func:`make_explainer`).
    ``signed_at_input``: its input-layer maps keep negative values for the metrics.
    The display label is the catalogue's (:data:`fgcam_lib.catalogue.METHOD_LABELS`).
    """

    name: str
    family: str
    build: Callable[..., Explainer] = field(repr=False)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    signed_at_input: bool = False
    description: str = ""

    @property
    def label(self) -> str:
        """The paper's display label, from :data:`fgcam_lib.catalogue.METHOD_LABELS`."""
        return METHOD_LABELS[self.name]


def _cam(cls: type) -> Callable[..., Explainer]:
    """Builder for a CAM class; CAMs read no pixel bounds, so mean/std are dropped."""

    def build(model: nn.Module, mean: Sequence[float], std: Sequence[float], **kw: Any) -> Explainer:
        return cls(model, **kw)

    return build


def _fgcam(model: nn.Module, mean: Sequence[float], std: Sequence[float], **kw: Any) -> Explainer:
    return FGCAM(model, mean=mean, std=std, **kw)


def _lrp(cls: type) -> Callable[..., Explainer]:
    def build(model: nn.Module, mean: Sequence[float], std: Sequence[float], **kw: Any) -> Explainer:
        return cls(model, mean=mean, std=std, **kw)

    return build


def _registry() -> dict[str, MethodSpec]:
    """All methods, in the order the paper introduces them."""
    score = {"variant": "paper"}
    fg_score = {"base": "score_cam", "score_cam_variant": "paper"}
    specs = [
        MethodSpec("grad_cam", "cam", _cam(GradCAM), {}, False,
                   "Grad-CAM: spatial mean of the target logit's gradient"),
        MethodSpec("score_cam", "cam", _cam(ScoreCAM), score, False,
                   "Score-CAM, the authors' variant (softmax score of each masked input)"),
        MethodSpec("layer_cam", "cam", _cam(LayerCAM), {}, False,
                   "Layer-CAM: ReLU(gradient) * activation"),
        MethodSpec("grad_cam_pp", "cam", _cam(GradCAMpp), {}, False,
                   "Grad-CAM++: positive gradients weighted by their closed-form alphas"),
        MethodSpec("xgrad_cam", "cam", _cam(XGradCAM), {}, False,
                   "XGrad-CAM: gradient averaged with the activations as weights"),
        MethodSpec("fg_grad_cam", "fgcam", _fgcam, {"base": "grad_cam"}, True,
                   "FG-CAM with Grad-CAM weights, paper rules"),
        MethodSpec("fg_grad_cam_denoise", "fgcam", _fgcam,
                   {"base": "grad_cam", "denoise": 0.1}, True,
                   "FG-Grad-CAM with SVD denoising (top 10% singular values)"),
        MethodSpec("fg_score_cam", "fgcam", _fgcam, fg_score, True,
                   "FG-CAM with Score-CAM weights (authors' variant), paper rules"),
        MethodSpec("fg_score_cam_denoise", "fgcam", _fgcam,
                   {**fg_score, "denoise": 0.1}, True,
                   "FG-Score-CAM with SVD denoising (top 10% singular values)"),
        MethodSpec("fg_grad_cam_pp", "fgcam", _fgcam, {"base": "grad_cam_pp"}, True,
                   "FG-CAM with Grad-CAM++ weights, paper rules"),
        MethodSpec("fg_xgrad_cam", "fgcam", _fgcam, {"base": "xgrad_cam"}, True,
                   "FG-CAM with XGrad-CAM weights, paper rules"),
        MethodSpec("lrp", "lrp", _lrp(LRP), {}, True, "LRP from the target logit, paper rules"),
        MethodSpec("clrp", "lrp", _lrp(CLRP), {}, True, "contrastive LRP, paper rules"),
        MethodSpec("sglrp", "lrp", _lrp(SGLRP), {}, True, "softmax-gradient LRP, paper rules"),
        MethodSpec("cp_lrp", "lrp", _lrp(LRP), {"rules": "cp_lrp"}, True,
                   "CP-LRP (attention held constant; epsilon rule, LayerNorm std held), as LXT computes it"),
        MethodSpec("attn_lrp", "lrp", _lrp(LRP), {"rules": "attn_lrp"}, True,
                   "AttnLRP (relevance through the attention weights too), epsilon rule"),
    ]
    return {s.name: s for s in specs}


#: name -> :class:`MethodSpec`
METHODS: dict[str, MethodSpec] = _registry()


def method_names(family: str | None = None) -> list[str]:
    """Registered names, optionally of one family (``"cam"``, ``"fgcam"``, ``"lrp"``)."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    return [n for n, s in METHODS.items() if family is None or s.family == family]


def _spec(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid names: {', '.join(METHODS)}") from None


def label(name: str) -> str:
    """The paper's display label, e.g. ``"FG-Grad-CAM (denoising)"`` (the catalogue's)."""
    return _spec(name).label


def make_explainer(
    name: str,
    model: nn.Module,
    preprocess: Any = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **overrides: Any,
) -> Explainer:
    """Build a registered method on ``model``.

    ``mean``/``std`` (default: from ``preprocess``, see :func:`normalization`) give the
    pixel bounds of the canonical preset's z-beta rule; CAMs ignore them. ``overrides``
    replace the registry's keyword arguments (e.g. ``denoise=0.2``, ``rules="canonical"``,
    ``batch_size=32``).

    Example:
        >>> cam = make_explainer("score_cam", model, preprocess=pre, batch_size=32)
        >>> cam(x, layer="features.33").shape        # B x h x w
    """
    spec = _spec(name)
    m, s = normalization(model, preprocess)
    mean = tuple(mean) if mean is not None else m
    std = tuple(std) if std is not None else s
    return spec.build(model, mean, std, **{**spec.defaults, **overrides})


def resolution_layers(model: nn.Module, size: int = 224, shapes: dict[int, Any] | None = None) -> list[tuple[int, str]]:
    """``(stride, layer)`` for the layers a reader looks at, deepest first, one per resolution of a
    ``size`` px input (:meth:`~fgcam_lib.engine.dag.Graph.stages`: the pools on VGG-style models,
    the stage outputs elsewhere); ``stride`` is the input side over the layer's, a power of two.
    ``shapes``: the nodes' shapes for that input if already known (:func:`~fgcam_lib.engine.walk.blank_shapes`).

    Example:
        >>> resolution_layers(torchvision.models.resnet18())[:2]
        [(32, 'layer4'), (16, 'layer3')]
    """
    import math

    from ..engine.walk import blank_shapes

    from ..engine.tokens import grid_of

    graph = graph_of(model)
    shapes = blank_shapes(model, graph, size) if shapes is None else shapes
    return [(2 ** round(math.log2(size / grid_of(graph, p, shapes, (size, size)).w)), graph.name(p))
            for p in graph.stages(shapes)]


def paper_layers(model: nn.Module, size: int = 224, shapes: dict[int, Any] | None = None) -> list[str]:
    """The paper's three CAM layers on ``model``: ``["33", "23", "13"]`` on VGG16-BN's layout
    (the max-pools at 1/16, 1/8, 1/4 of the input); elsewhere the layers at those resolutions
    (other VGGs: their pools; ResNet: ``["layer3", "layer2", "layer1"]``; Swin: ``["features", "features.3",
    "features.1"]``), for a ``size`` px input. A ViT keeps one token grid: the three blocks below its top.

    Example:
        >>> paper_layers(torchvision.models.resnet50())
        ['layer3', 'layer2', 'layer1']
    """
    graph = graph_of(model)
    if graph.vgg_style and graph.n_features == 44:
        return ["33", "23", "13"]
    stages = resolution_layers(model, size, shapes)
    if len({stride for stride, _ in stages}) == 1 and len(stages) >= 4:
        return [name for _, name in stages[1:4]]  # one token grid throughout (ViT): the three blocks below the top
    by_stride = dict(stages)
    missing = [s for s in (16, 8, 4) if s not in by_stride]
    if missing:
        raise ValueError(f"{type(model).__name__} has no stage output at 1/{missing[0]} of a {size} px input; "
                         "name the layers")
    return [by_stride[s] for s in (16, 8, 4)]


def is_signed(name: str, layer: int | str) -> bool:
    """Whether ``name``'s maps at ``layer`` are evaluated signed (Table 4 rule)."""
    return _spec(name).signed_at_input and is_input_layer(layer)


def _position_ok(spec: MethodSpec, graph: Graph, position: int) -> bool:
    """Whether a method of ``spec``'s family is defined at ``position`` of ``graph``."""
    if spec.family == "lrp":
        return True
    if position != INPUT and not graph.nodes[position].data:
        return False
    below = graph.reaches(position, graph.default_component_layer())
    return below and (spec.family == "fgcam" or position != INPUT)


def supports(name: str, layer: int | str, model: nn.Module | None = None) -> bool:
    """Whether ``name`` is defined at ``layer``.

    Without a model only the input is checked (CAMs are not defined there); with a model
    the layer is resolved and checked against the component layer (CAMs and FG-CAM need
    a layer at or below it; FG-CAM's default component layer is assumed). A layer the
    model does not have raises ``ValueError``: a typo is not "unsupported".

    Example:
        >>> supports("grad_cam", "input"), supports("fg_grad_cam", "input")
        (False, True)
    """
    spec = _spec(name)
    if model is None:
        return not (spec.family == "cam" and is_input_layer(layer))
    graph = graph_of(model)
    return _position_ok(spec, graph, graph.position(layer))


def method_layers(name: str, model: nn.Module) -> list[str]:
    """Every layer (module path, or ``"input"``) of ``model`` where ``name`` is defined.

    Example:
        >>> method_layers("grad_cam", model)[:2]
        ['features.0', 'features.1']
    """
    spec = _spec(name)
    graph = graph_of(model)
    return [graph.name(p) for p in range(INPUT, len(graph)) if _position_ok(spec, graph, p)]
