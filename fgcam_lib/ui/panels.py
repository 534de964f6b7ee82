"""Diagnostic panels: per-channel component strips, the SVD spectrum of the components and
metric curves with confidence bands.

    >>> from fgcam_lib.ui.panels import component_strip, singular_values_plot
    >>> expl = fg.explain(x, layer=13)
    >>> fig = component_strip(expl.components[13], k=8, image=x_display[0])
    >>> singular_values_plot(plt.gca(), TopComponents(fg, x).components, fraction=0.1)
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure, SubFigure

from .overlays import ArrayLike, as_image, as_tensor, clean_axes, color_scale, colormap, new_figure, one_image, show_map

__all__ = ["top_channels", "component_strip", "singular_values_plot", "metric_plot"]


def _components_2d(components: ArrayLike, index: int = 0) -> torch.Tensor:
    """c x h x w components (picking image ``index`` from B x c x h x w)."""
    return one_image(components, 3, index, "c x h x w components")


def top_channels(components: ArrayLike, k: int = 8, weights: ArrayLike | None = None, index: int = 0) -> list[int]:
    """Indices of the ``k`` channels with the largest total ``|relevance|`` (or weight, when given)."""
    comps = _components_2d(components, index)
    if weights is not None:
        w = as_tensor(weights)
        score = (w[index] if w.dim() == 2 else w).reshape(-1)
        if score.numel() != comps.shape[0]:
            raise ValueError(f"{score.numel()} weights for {comps.shape[0]} channels")
    else:
        score = comps.abs().sum((1, 2))
    k = max(1, min(int(k), comps.shape[0]))
    return torch.argsort(score, descending=True, stable=True)[:k].tolist()


def component_strip(
    components: ArrayLike,
    k: int = 8,
    image: ArrayLike | None = None,
    *,
    weights: ArrayLike | None = None,
    order: str = "relevance",
    index: int = 0,
    ncols: int | None = None,
    mode: str = "nearest",
    colorbar: bool = True,
    panel_size: float = 1.4,
    fig: Figure | SubFigure | None = None,
    title: str | None = None,
    channel_names: Sequence[str] | None = None,
) -> Figure | SubFigure:
    """Per-channel explanation components of the top-``k`` channels, on one signed scale.

    ``components``: c x h x w or B x c x h x w (image ``index``). Channels are ranked by
    total ``|relevance|`` (``order="relevance"``) or by CAM weight (``order="weight"``,
    needs ``weights``: c or B x c). Each panel is titled with the channel index, its
    sum and (when ``weights`` are given) its weight; all panels share ``[-v, v]`` with
    ``v`` the largest ``|I|`` shown, so channels are comparable. ``image`` adds a
    leading reference panel. Draws into ``fig`` (a figure or subfigure) when given.
    ``channel_names`` (one per channel, e.g. "RGB" at the input) replace "ch i".

        >>> expl = fg.explain(x, layer=13)
        >>> fig = component_strip(expl.components[13], k=8, image=x_display[0])
    """
    if order not in ("relevance", "weight"):
        raise ValueError(f"unknown order {order!r}; use 'relevance' or 'weight'")
    if order == "weight" and weights is None:
        raise ValueError("order='weight' needs weights")
    comps = _components_2d(components, index)
    chosen = top_channels(comps, k, weights if order == "weight" else None)
    w = None if weights is None else as_tensor(weights)
    w = None if w is None else (w[index] if w.dim() == 2 else w).reshape(-1)
    if w is not None and w.numel() != comps.shape[0]:
        w = None  # weights of another layer: rank and title by relevance only
    lead = 1 if image is not None else 0
    n = len(chosen) + lead
    ncols = n if ncols is None else max(1, min(ncols, n))
    nrows = -(-n // ncols)
    if fig is None:
        fig = new_figure((panel_size * ncols + (0.8 if colorbar else 0.2), panel_size * nrows + 0.55))
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    vmax = float(comps[chosen].abs().max()) or 1.0
    if image is not None:
        axes[0].imshow(as_image(image))
        clean_axes(axes[0])
        axes[0].set_title("image", fontsize=8)
    for ax, c in zip(axes[lead:], chosen):
        name = channel_names[c] if channel_names is not None else f"ch {c}"
        label = f"{name}\nΣ {float(comps[c].sum()):+.2g}"
        if w is not None:
            label += f"\nw {float(w[c]):+.2g}"
        show_map(ax, comps[c], signed=True, normalize=False, vmax=vmax, mode=mode, title=label)
        ax.title.set_fontsize(7.5)
    for ax in axes[n:]:
        ax.set_axis_off()
    if colorbar:
        cb = fig.colorbar(ScalarMappable(norm=color_scale(True, vmax), cmap=colormap(True)), ax=list(axes[lead:n]),
                          shrink=0.85, aspect=20, pad=0.01)
        cb.ax.tick_params(labelsize=7)
    fig.suptitle(title or f"top {len(chosen)} of {comps.shape[0]} channels by "
                 f"{'weight' if order == 'weight' else 'total |relevance|'}", fontsize=9)
    return fig


def singular_values_plot(
    ax: Axes,
    components: ArrayLike,
    fraction: float | None = 0.1,
    *,
    index: int = 0,
    log: bool = True,
    title: str | None = None,
) -> Axes:
    """The SVD spectrum of the row-centred C x K component matrix (K = h w).

    The singular values kept by denoising with rank fraction ``fraction``
    (``floor(fraction * min(C, K))``, at least 1) are drawn in colour, the rest in
    grey, with the cut marked and the share of energy (sum of squares) kept.

        >>> I = TopComponents(fg, x).components
        >>> singular_values_plot(plt.gca(), I, fraction=0.1)
    """
    from ..methods.fgcam import denoise_rank

    comps = _components_2d(components, index).double()
    C = comps.shape[0]
    M = comps.reshape(C, -1)
    M = M - M.mean(1, keepdim=True)
    S = torch.linalg.svdvals(M).numpy()
    x = np.arange(1, len(S) + 1)
    rank = denoise_rank(fraction, C, M.shape[1]) if fraction is not None else len(S)
    energy = float((S[:rank] ** 2).sum() / max((S ** 2).sum(), 1e-300))
    nonzero = S > S.max(initial=0.0) * 1e-9  # centring makes the last value ~0 when K <= C
    zeros = int((~nonzero).sum())
    x, S_shown = x[nonzero], S[nonzero]
    ax.plot(x, S_shown, color="0.75", lw=1, zorder=1)
    kept = x <= rank
    ax.scatter(x[~kept], S_shown[~kept], s=12, color="0.6", zorder=2,
               label="dropped" + (f" (+{zeros} ~ 0 not shown)" if zeros else ""))
    ax.scatter(x[kept], S_shown[kept], s=18, color="C3", zorder=3, label=f"kept: {rank} ({energy:.0%} of energy)")
    if fraction is not None:
        ax.axvline(rank + 0.5, color="C3", ls="--", lw=1)
    if log and len(S_shown):
        ax.set_yscale("log")
    ax.set_xlabel("index", fontsize=8)
    ax.set_ylabel("singular value", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False, loc="best")
    frac = f", fraction {fraction:g}" if fraction is not None else ""
    ax.set_title(title or f"SVD of {C} x {M.shape[1]} components{frac}", fontsize=9)
    return ax



def metric_plot(
    df: Any,
    x: str,
    y: str = "mean",
    hue: str | None = None,
    *,
    lower: str = "ci_low",
    upper: str = "ci_high",
    ax: Axes | None = None,
    logx: bool = False,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Axes:
    """Metric curves (e.g. vs depth or rank fraction) with confidence bands.

    ``df``: a tidy DataFrame with columns ``x``, ``y`` (default ``"mean"``), optional
    ``hue`` and the band columns ``lower``/``upper`` (drawn when present).

        >>> metric_plot(df, x="fraction", hue="method", logx=True, ylabel="insertion AUC")
    """
    import seaborn as sns

    if ax is None:
        ax = new_figure((5.0, 3.4)).subplots()
    levels = list(dict.fromkeys(df[hue])) if hue else [None]
    palette = dict(zip(levels, sns.color_palette(n_colors=len(levels))))
    data = df.sort_values(x)
    sns.lineplot(data=data, x=x, y=y, hue=hue, palette=palette if hue else None, marker="o", errorbar=None, ax=ax,
                 color=None if hue else palette[None])
    if lower in df.columns and upper in df.columns:
        for level in levels:
            part = data if level is None else data[data[hue] == level]
            ax.fill_between(part[x], part[lower], part[upper], color=palette[level], alpha=0.2, lw=0)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title)
    if hue and ax.get_legend() is not None:
        ax.legend(title=hue, fontsize=8, frameon=False)
    return ax


