"""The explorer's figure: image, overlay, map at its true resolution, the SVD spectrum for FG-CAM
and the top-k per-channel components at that layer, under a one-line description.

    >>> fig = render(session, expl, position, settings)      # an ExplorerFigure
    >>> fig.png()[:4]
    b'\\x89PNG'
    >>> error_figure("Grad-CAM is not defined at the input")  # the headless form of a message
"""
from __future__ import annotations

import io

from matplotlib.figure import Figure

from . import viz
from ..catalogue import layer_label, method_label
from ..engine.graph import INPUT
from ..methods.base import Explanation
from ..methods.fgcam import denoise_rank
from .session import Session
from .settings import LRPS, METHODS, Settings

__all__ = ["ExplorerFigure", "render", "describe", "error_figure"]


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


def error_figure(message: str) -> ExplorerFigure:
    """A small figure that shows ``message`` (the headless form of the error area)."""
    fig = ExplorerFigure(figsize=(8, 1.6))
    fig.text(0.02, 0.5, message, color="#a00", fontsize=10, va="center", wrap=True)
    return fig


def describe(session: Session, s: Settings) -> str:
    """A one-line description of settings ``s`` on the session's active model (the figure's title)."""
    entry = session.active
    target = session.target(s)
    p = float(session.probabilities(s.image)[target])
    what = METHODS[s.method]
    if s.method == "fg_cam":
        shape = entry.shapes[entry.graph.default_component_layer()]
        C, K = int(shape[1]), int(shape[2] * shape[3])
        dn = f"denoise {s.fraction:g} (rank {denoise_rank(s.fraction, C, K)})" if s.denoise else "no denoising"
        what += f" [{method_label(s.base)}, {s.rules} rules, {dn}]"
    elif s.method in LRPS:
        what += f" [{s.rules} rules]"
    model = f"{s.model} · " if len(session.sources) > 1 else ""
    return (f"{model}{session.images[s.image][0]} · {what} · {layer_label(s.layer)} · "
            f"class {entry.class_names[target]} (p={p:.2f})" + (" · signed" if s.signed else ""))


def render(session: Session, expl: Explanation, position: int, s: Settings, display_dpi: int = 90) -> ExplorerFigure:
    """The explorer's figure of ``expl`` at ``position``: image, overlay, map, (SVD spectrum), component strip."""
    image = session.display_image(s.image)
    comps = expl.components[position]
    m = comps.sum(1)[0]
    m = m if s.signed else m.clamp(min=0)
    fig = ExplorerFigure(figsize=(11.5, 6.4), layout="constrained")
    fig.display_dpi = display_dpi
    upper, lower = fig.subfigures(2, 1, height_ratios=[1.3, 1.0])
    has_svd = s.method == "fg_cam"
    axes = upper.subplots(1, 4 if has_svd else 3, width_ratios=[1, 1, 1, 1.25] if has_svd else None)
    axes[0].imshow(viz.as_image(image))
    viz.clean_axes(axes[0])
    axes[0].set_title(session.images[s.image][0], fontsize=9)
    viz.show_map(axes[1], m, image, signed=s.signed, title="overlay")
    h, w = m.shape
    viz.show_map(axes[2], m, signed=s.signed, mode="nearest", colorbar=True,
                 title=f"map at {layer_label(s.layer)} ({h}x{w})")
    if has_svd:
        viz.singular_values_plot(axes[3], expl.extras["top"], s.fraction if s.denoise else None)
    at_top = expl.weights is not None and position == session.graph.default_component_layer()
    viz.component_strip(comps, s.k, weights=expl.weights if at_top else None, fig=lower,
                        channel_names=["R", "G", "B"] if position == INPUT and comps.shape[1] == 3 else None,
                        title=f"components at {layer_label(s.layer)}: top {min(s.k, comps.shape[1])} "
                              f"of {comps.shape[1]} channels by total |relevance|")
    fig.suptitle(describe(session, s), fontsize=10)
    return fig
