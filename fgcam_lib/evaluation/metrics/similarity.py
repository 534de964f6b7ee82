"""Map similarity (Spearman, SSIM) and the cascading model-parameter randomisation of Adebayo et al. (2018)."""
from __future__ import annotations

import copy
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .common import TargetLike, check_images, check_maps, clean_logits, resolve_target

def _minmax(a: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant array becomes all zeros."""
    lo, hi = float(a.min()), float(a.max())
    return np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two min-max normalised maps (``data_range=1``, skimage defaults).

    The window is 7, or the largest odd size that fits a smaller map; maps under
    3 x 3 give NaN.
    """
    from skimage.metrics import structural_similarity

    side = min(a.shape)
    if side < 3:
        return float("nan")
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(_minmax(a), _minmax(b), data_range=1.0, win_size=win))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two flattened maps (NaN if one is constant)."""
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a.ravel(), b.ravel()).statistic)


def similarity(map_a: Tensor, map_b: Tensor, absolute: bool = False) -> dict[str, Tensor]:
    """Per-image Spearman rank correlation and SSIM between two map batches.

    ``spearman = corr(rank(a), rank(b))`` over the pixels (``scipy.stats.spearmanr``;
    NaN when a map is constant); ``ssim`` on maps min-max normalised to [0, 1],
    ``data_range=1`` (``skimage.metrics.structural_similarity``). ``absolute=True``
    compares ``|a|`` and ``|b|``. Shapes: two ``B x h x w`` maps (same size) ->
    ``{"spearman": B, "ssim": B}`` float64 tensors.

    Example:
        >>> a = torch.rand(2, 8, 8)
        >>> similarity(a, a)["spearman"]
        tensor([1., 1.], dtype=torch.float64)
    """
    map_a, map_b = check_maps(map_a), check_maps(map_b)
    if map_a.shape != map_b.shape:
        raise ValueError(f"map shapes differ: {tuple(map_a.shape)} vs {tuple(map_b.shape)}")
    a = map_a.detach().cpu().double().numpy()
    b = map_b.detach().cpu().double().numpy()
    if absolute:
        a, b = np.abs(a), np.abs(b)
    rho = [_spearman(a[i], b[i]) for i in range(a.shape[0])]
    ssim = [_ssim(a[i], b[i]) for i in range(a.shape[0])]
    return {"spearman": torch.tensor(rho, dtype=torch.float64),
            "ssim": torch.tensor(ssim, dtype=torch.float64)}


def reset_parameters(module: nn.Module, seed: int) -> None:
    """Re-initialise a module in place with its own ``reset_parameters`` methods.

    The global RNG is forked (and seeded with ``seed``) so the caller's random state
    is untouched and the re-initialisation is reproducible.
    """
    resettable = [m for m in module.modules() if callable(getattr(m, "reset_parameters", None))]
    if not resettable:
        if any(True for _ in module.parameters()):
            raise ValueError(
                f"{type(module).__name__} has parameters but no reset_parameters(); "
                "pass reinit= to cascading_randomization")
        return
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in resettable:
            m.reset_parameters()


def cascading_randomization(
    model: nn.Module,
    explain_fn: Callable[[nn.Module, Tensor, Tensor], Tensor],
    x: Tensor,
    target: TargetLike,
    layers_top_down: Sequence[str | Sequence[str]],
    *,
    seed: int = 0,
    reinit: Callable[[nn.Module, int], None] | None = None,
    batch_size: int = 64,
) -> list[dict]:
    """Cascading model-parameter randomisation (Adebayo et al., 2018).

    Step 0 explains the original model; step s (1-based) explains a deep copy whose
    first s entries of ``layers_top_down`` (module paths such as ``"classifier.6"``,
    or groups of paths; classifier first, then features deep to shallow) are
    re-initialised, cumulatively. ``explain_fn(model, x, target) -> B x h x w`` is
    called with a fresh copy each step, so the caller's model is never changed;
    layer j is re-initialised with seed ``seed + j`` (the same values at every
    step; ``j`` counts module paths, groups flattened) by ``reinit(module, seed)``
    (default: the modules' ``reset_parameters`` under a forked RNG).
    ``target=None`` is resolved once to the original model's top-1 class, so every
    step explains the same class.
    Returns one record per (step, image): ``step``, ``layer`` (the layer randomised
    at that step, ``"original"`` for step 0), ``randomized`` (all randomised layers
    so far, joined by ``"; "``), ``image``, ``spearman``, ``ssim``, ``spearman_abs``,
    ``ssim_abs`` (see :func:`similarity`); ``pandas.DataFrame(records)`` tabulates it.

    Example:
        >>> recs = cascading_randomization(model, explain, x, None, ["classifier.6", "features.40"])
        >>> len(recs) == 3 * x.shape[0]
        True
    """
    check_images(x)
    reinit = reinit or reset_parameters
    groups = [[g] if isinstance(g, str) else list(g) for g in layers_top_down]
    names = [", ".join(g) for g in groups]
    base_copy = copy.deepcopy(model)
    t = resolve_target(target, clean_logits(base_copy, x, batch_size))
    original = check_maps(explain_fn(base_copy, x, t), x.shape[0]).detach()
    del base_copy

    records: list[dict] = []

    def add(step: int, layer: str, randomized: str, maps: Tensor) -> None:
        sim = similarity(original, maps)
        sim_abs = similarity(original, maps, absolute=True)
        for i in range(x.shape[0]):
            records.append({
                "step": step, "layer": layer, "randomized": randomized, "image": i,
                "spearman": float(sim["spearman"][i]), "ssim": float(sim["ssim"][i]),
                "spearman_abs": float(sim_abs["spearman"][i]),
                "ssim_abs": float(sim_abs["ssim"][i]),
            })

    add(0, "original", "", original)
    for s in range(1, len(groups) + 1):
        randomised = copy.deepcopy(model)
        flat_names = [name for group in groups[:s] for name in group]
        for q, name in enumerate(flat_names):
            reinit(randomised.get_submodule(name), seed + q)
        maps = check_maps(explain_fn(randomised, x, t), x.shape[0]).detach()
        add(s, names[s - 1], "; ".join(names[:s]), maps)
        del randomised
    return records
