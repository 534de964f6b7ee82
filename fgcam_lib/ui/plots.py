"""Figures of summaries and example maps: confidence-interval forest plots and map grids.

Both read the names and directions of :mod:`fgcam_lib.catalogue` and draw with
:mod:`fgcam_lib.ui.viz`'s colour maps; matplotlib and seaborn are imported inside.

    >>> from fgcam_lib.ui.plots import forest_plot, example_grid
    >>> fig = forest_plot(summarize(rows).xs("13", level="layer"), ["average_drop", "overall"], hue=None)
    >>> fig = example_grid(batch.images, {"paper": {13: maps13, "input": maps_in}}, [(0, 13), (0, "input")])
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..catalogue import HIGHER_IS_BETTER, is_input_layer, layer_label, metric_axis_label, metric_label

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["forest_plot", "example_grid"]


def forest_plot(summary: "pd.DataFrame", metrics: Sequence[str], *, y: str = "method", hue: str | None = "layer",
                order: Sequence[Any] | None = None, labels: Mapping[Any, str] | None = None,
                title: str | None = None, panel_width: float = 3.0):
    """Means with confidence intervals as dots and whiskers: one panel per metric,
    one row per level of ``y`` (in ``order``), one colour per level of ``hue``.

    ``summary``: a :func:`fgcam_lib.evaluation.tables.summarize` frame. Panel titles carry the metric's label and
    whether higher or lower is better. Returns the figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    s = summary.reset_index()
    ys = list(order) if order is not None else list(dict.fromkeys(s[y]))
    hues = list(dict.fromkeys(s[hue])) if hue else [None]
    palette = dict(zip(hues, sns.color_palette(n_colors=len(hues))))
    fig, axes = plt.subplots(1, len(metrics), figsize=(panel_width * len(metrics) + 1.5, 0.38 * len(ys) + 1.4),
                             sharey=True, layout="constrained", squeeze=False)
    offsets = np.linspace(-0.2, 0.2, len(hues)) if len(hues) > 1 else [0.0]
    for ax, metric in zip(axes[0], metrics):
        part = s[s["metric"] == metric]
        for h, off in zip(hues, offsets):
            sub = part if h is None else part[part[hue] == h]
            sub = sub.set_index(y).reindex(ys)
            pos = np.arange(len(ys)) + off
            ok = sub["mean"].notna().to_numpy()
            err = np.vstack([sub["mean"] - sub["ci_low"], sub["ci_high"] - sub["mean"]])[:, ok]
            ax.errorbar(sub["mean"][ok], pos[ok], xerr=err, fmt="o", ms=4, capsize=2, color=palette[h],
                        label=None if h is None else str(h))
        arrow = "higher is better" if HIGHER_IS_BETTER.get(metric, True) else "lower is better"
        ax.set_title(f"{metric_label(metric)}\n({arrow})", fontsize=9)
        ax.set_xlabel(metric_axis_label(metric), fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0, 0].set_yticks(np.arange(len(ys)), [labels.get(v, str(v)) if labels else str(v) for v in ys])
    axes[0, 0].invert_yaxis()
    if hue and len(hues) > 1:
        axes[0, -1].legend(title=hue, fontsize=8, title_fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def example_grid(images: Tensor, maps: Mapping[str, Mapping[Any, Tensor]], columns: Sequence[tuple[int, Any]], *,
                 signed: Callable[[Any], bool] = is_input_layer, image_titles: Mapping[int, str] | None = None,
                 row_labels: Mapping[str, str] | None = None, column_label: Callable[[Any], str] | None = None,
                 quantile: float = 0.995, title: str | None = None, panel_size: float = 1.25):
    """Example maps of many variants: one row per variant, one column per (image, layer).

    ``images``: B x 3 x H x W in [0, 1]; ``maps[variant][layer]``: B x h x w;
    ``columns``: (image index, layer) pairs; the first row shows the images. Maps at
    layers where ``signed(layer)`` are drawn red (positive) / blue (negative) around a
    white zero, the others with the sequential colormap. Each map is divided by the
    ``quantile`` of its absolute values (clipped at 1), so a few extreme pixels do not
    wash out the rest; one colorbar per colour scale.
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from . import viz

    rows = list(maps)
    fig, axes = plt.subplots(len(rows) + 1, len(columns), layout="constrained", squeeze=False,
                             figsize=(panel_size * len(columns) + 2.6, panel_size * (len(rows) + 1) + 0.5))
    used = {False: False, True: False}
    for c, (i, layer) in enumerate(columns):
        ax = axes[0, c]
        ax.imshow(viz.as_image(images[i]))
        viz.clean_axes(ax)
        name = (image_titles or {}).get(i, f"image {i}")
        ax.set_title(f"{name}\n{column_label(layer) if column_label else layer_label(layer)}", fontsize=8)
        for r, variant in enumerate(rows, start=1):
            ax = axes[r, c]
            m = maps[variant].get(layer)
            if m is None:
                viz.clean_axes(ax)
                continue
            s = bool(signed(layer))
            m = m[i].detach().float().cpu()
            scale = float(torch.quantile(m.abs().flatten(), quantile)) or float(m.abs().max()) or 1.0
            m = (m / scale).clamp(-1.0 if s else 0.0, 1.0)
            viz.show_map(ax, m, signed=s, normalize=False, vmax=1.0, size=tuple(images.shape[-2:]))
            used[s] = True
    for r, variant in enumerate(rows, start=1):
        axes[r, 0].set_ylabel((row_labels or {}).get(variant, variant), fontsize=8, rotation=0, ha="right",
                              va="center")
    axes[0, 0].set_ylabel("image", fontsize=8, rotation=0, ha="right", va="center")
    pct = f"{quantile * 100:g}th percentile"
    for s in (False, True):
        if used[s]:
            norm = Normalize(-1, 1) if s else Normalize(0, 1)
            cb = fig.colorbar(ScalarMappable(norm=norm, cmap=viz.DIVERGING_CMAP if s else viz.SEQUENTIAL_CMAP),
                              ax=axes.ravel().tolist(), shrink=0.35, aspect=25, pad=0.01)
            cb.set_label(f"signed relevance / {pct} of |R|" if s else f"relevance / {pct}", fontsize=8)
            cb.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
