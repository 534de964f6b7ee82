"""Tests for fgcam_lib.evaluation.metrics: known answers on hand-built models, batching, ties,
edge cases and peer references (scipy, skimage, torchvision, pytorch-grad-cam)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fgcam_lib.evaluation import metrics as M

# ----------------------------------------------------------------------------------
# fixtures: a model whose class-0 logit is a known linear function of the pixels
# ----------------------------------------------------------------------------------


class PixelLinear(nn.Module):
    """logit_0 = sum_ij weight_ij * x[:, 0, i, j]; the other classes have logit 0."""

    def __init__(self, weight: torch.Tensor, n_classes: int = 3) -> None:
        super().__init__()
        self.register_buffer("weight", weight.clone())
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x[:, 0] * self.weight).flatten(1).sum(1)
        zeros = torch.zeros_like(z)
        return torch.stack([z] + [zeros] * (self.n_classes - 1), dim=1)


def region_weights(h: int, w: int, rows: slice, cols: slice, total: float = 6.0,
                   seed: int = 0) -> torch.Tensor:
    """Positive, distinct weights on a rectangle (sum ``total``), zero elsewhere."""
    g = torch.Generator().manual_seed(seed)
    wt = torch.zeros(h, w, dtype=torch.float64)
    block = torch.rand(rows.stop - rows.start, cols.stop - cols.start, generator=g,
                       dtype=torch.float64) + 0.5
    wt[rows, cols] = block / block.sum() * total
    return wt


def ones_images(b: int, h: int, w: int) -> torch.Tensor:
    return torch.ones(b, 3, h, w, dtype=torch.float64)


def softmax0(z: float, k: int = 3) -> float:
    return math.exp(z) / (math.exp(z) + (k - 1))


@pytest.fixture
def toy():
    h, w = 16, 16
    wt = region_weights(h, w, slice(4, 12), slice(4, 8))  # 32 of 256 pixels
    model = PixelLinear(wt).eval()
    return model, wt, ones_images(1, h, w)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()


# ----------------------------------------------------------------------------------
# import weight
# ----------------------------------------------------------------------------------


def test_import_is_light():
    code = ("import sys, fgcam_lib.evaluation.metrics; "
            "bad = [m for m in ('matplotlib', 'pandas', 'skimage') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# ----------------------------------------------------------------------------------
# blur
# ----------------------------------------------------------------------------------


def scipy_blur(x: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
    """Separable reference: scipy correlate1d, 'mirror' = reflect without the edge."""
    from scipy.ndimage import correlate1d

    half = (k - 1) / 2
    t = np.linspace(-half, half, k)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    a = x.double().numpy()
    a = correlate1d(a, g, axis=-2, mode="mirror")
    a = correlate1d(a, g, axis=-1, mode="mirror")
    return torch.from_numpy(a)


@pytest.mark.parametrize("shape", [(2, 3, 40, 52), (1, 3, 20, 20), (1, 2, 5, 9), (1, 1, 1, 6)])
def test_blur_matches_separable_reference(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    out = M.blur_baseline(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, scipy_blur(x, 51, 50.0), rtol=0, atol=1e-12)


def test_blur_matches_torchvision_reflect():
    from torchvision.transforms.functional import gaussian_blur

    x = torch.randn(2, 3, 40, 56)
    ref = gaussian_blur(x, [51, 51], [50.0, 50.0])
    torch.testing.assert_close(M.blur_baseline(x), ref, rtol=0, atol=1e-5)
    x = torch.randn(1, 3, 30, 40)
    torch.testing.assert_close(M.blur_baseline(x, 7, 2.0), gaussian_blur(x, [7, 7], [2.0, 2.0]),
                               rtol=0, atol=1e-5)


def test_blur_of_constant_is_constant_and_rejects_bad_kernel():
    x = torch.full((1, 3, 10, 12), 0.7)
    torch.testing.assert_close(M.blur_baseline(x), x)
    with pytest.raises(ValueError):
        M.blur_baseline(x, kernel_size=4)
    with pytest.raises(ValueError):
        M.blur_baseline(x, sigma=0.0)


# ----------------------------------------------------------------------------------
# ranking and ties
# ----------------------------------------------------------------------------------


def test_rank_distinct_values_exact():
    maps = torch.randn(3, 7, 9)
    order = M.rank_pixels(maps, seed=5)
    ref = torch.argsort(maps.flatten(1), dim=1, descending=True)
    assert torch.equal(order, ref)
    ranks = M.pixel_ranks(order, (7, 9))
    assert ranks.shape == (3, 7, 9)
    assert torch.equal(ranks.flatten(1).gather(1, order), torch.arange(63).expand(3, -1))


def test_ties_broken_randomly_and_reproducibly():
    maps = torch.zeros(1, 8, 8)
    o1, o1b, o2 = (M.rank_pixels(maps, seed=s) for s in (1, 1, 2))
    assert torch.equal(o1, o1b)
    assert not torch.equal(o1, o2)
    assert not torch.equal(o1[0], torch.arange(64))
    assert sorted(o1[0].tolist()) == list(range(64))


def test_ties_only_among_equal_values():
    # three levels; within a level the order is random, across levels exact
    levels = torch.randint(0, 3, (2, 10, 10)).float()
    order = M.rank_pixels(levels, seed=3)
    vals = levels.flatten(1).gather(1, order)
    assert bool((vals[:, 1:] <= vals[:, :-1]).all())


def test_rank_batched_equals_unbatched():
    maps = torch.randint(0, 3, (4, 6, 6)).float()
    order = M.rank_pixels(maps, (12, 12), seed=7)
    for i in range(4):
        assert torch.equal(order[i], M.rank_pixels(maps[i:i + 1], (12, 12), seed=7)[0])


def test_upsample_options():
    maps = torch.rand(2, 4, 4)
    up = M.upsample_maps(maps, (16, 20))
    ref = F.interpolate(maps[:, None], (16, 20), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(up, ref)
    up_ac = M.upsample_maps(maps, (16, 20), align_corners=True)
    assert not torch.allclose(up, up_ac)
    near = M.upsample_maps(maps, (8, 8), mode="nearest")
    torch.testing.assert_close(near, maps.repeat_interleave(2, 1).repeat_interleave(2, 2))
    assert M.upsample_maps(maps, (4, 4)) is maps


# ----------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------


def test_validation_errors(toy):
    model, wt, x = toy
    good = torch.rand(1, 4, 4)
    bad = good.clone()
    bad[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        M.average_drop_increase(model, x, bad)
    bad[0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="inf"):
        M.insertion_deletion(model, x, bad)
    with pytest.raises(ValueError, match="maps"):
        M.insertion_deletion(model, x, torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="3-D"):
        M.average_drop_increase(model, x, torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="3-D"):
        M.rank_pixels(torch.rand(16))
    with pytest.raises(ValueError, match="4-D"):
        M.average_drop_increase(model, x[0], good)
    with pytest.raises(ValueError, match="target"):
        M.average_drop_increase(model, x, good, target=5)
    with pytest.raises(ValueError, match="target"):
        M.average_drop_increase(model, x, good, target=[0, 1])
    with pytest.raises(ValueError, match="keep"):
        M.average_drop_increase(model, x, good, keep=1.5)
    with pytest.raises(ValueError, match="percentage"):
        M.road(model, x, good, percentages=(0.5, 1.0))
    with pytest.raises(ValueError, match="order"):
        M.road(model, x, good, order="middle")
    with pytest.raises(ValueError, match="baseline"):
        M.average_drop_increase(model, x, good, baseline=torch.zeros(2, 3, 5, 5))
    with pytest.raises(ValueError, match="boxes"):
        M.proportion(good, [[(0, 0, 1)]], (16, 16))
    with pytest.raises(ValueError, match="exactly one"):
        M.pointing_game(good)
    with pytest.raises(ValueError, match="masks"):
        M.proportion_mask(good, torch.ones(2, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="shapes differ"):
        M.similarity(torch.rand(1, 4, 4), torch.rand(1, 5, 5))


# ----------------------------------------------------------------------------------
# Average Drop / Increase
# ----------------------------------------------------------------------------------


def test_average_drop_known_answers(toy):
    model, wt, x = toy
    y = softmax0(float(wt.sum()))
    oracle = M.average_drop_increase(model, x, wt[None], baseline=0.0)
    assert oracle.prob_clean.item() == pytest.approx(y)
    assert oracle.drop.item() == pytest.approx(0.0, abs=1e-9)
    assert oracle.increase.item() == 0.0
    assert oracle.n_kept.item() == 128
    # reversed map: keeps only zero-weight pixels -> logit 0 -> p = 1/3
    rev = M.average_drop_increase(model, x, -wt[None], baseline=0.0)
    assert rev.prob_kept.item() == pytest.approx(1 / 3)
    assert rev.drop.item() == pytest.approx((y - 1 / 3) / y * 100)
    rand = M.average_drop_increase(model, x, torch.rand(1, 16, 16), baseline=0.0)
    assert oracle.drop.item() < rand.drop.item() < rev.drop.item()


def test_average_increase_counts_rising_probability():
    wt = torch.zeros(8, 8, dtype=torch.float64)
    wt[:2] = 1.0      # 16 helpful pixels
    wt[4:] = -0.5     # 32 harmful pixels
    model = PixelLinear(wt).eval()
    x = ones_images(1, 8, 8)
    res = M.average_drop_increase(model, x, wt[None].clamp(min=0) + 0.0, baseline=0.0)
    assert res.prob_kept.item() > res.prob_clean.item()
    assert res.increase.item() == 100.0 and res.drop.item() == 0.0
    assert res.average_increase == 100.0 and res.average_drop == 0.0


def test_average_drop_underflowing_probability_counts_zero():
    wt = torch.full((6, 6), 100.0)
    model = PixelLinear(wt).eval()
    x = torch.ones(1, 3, 6, 6)  # logit_0 = 3600: class 1 has probability exactly 0
    res = M.average_drop_increase(model, x, torch.rand(1, 6, 6), target=1, baseline=0.0)
    assert res.prob_clean.item() == 0.0
    assert res.drop.item() == 0.0 and torch.isfinite(res.drop).all()


def test_signed_rule_keeps_only_positive_pixels():
    m = torch.full((2, 10, 10), -1.0)
    m[0, :2] = torch.rand(2, 10) + 0.1   # 20% positive -> keep those 20
    m[1, :7] = torch.rand(7, 10) + 0.1   # 70% positive -> keep the top 50
    mask = M.keep_mask(m, (10, 10), keep=0.5, signed=True)
    assert mask.flatten(1).sum(1).tolist() == [20, 50]
    assert bool(mask[0, :2].all())
    unsigned = M.keep_mask(m, (10, 10), keep=0.5, signed=False)
    assert unsigned.flatten(1).sum(1).tolist() == [50, 50]
    none_pos = M.keep_mask(-torch.rand(1, 4, 4) - 0.1, (4, 4), signed=True)
    assert not bool(none_pos.any())


def test_keep_mask_constant_map_is_not_raster():
    mask = M.keep_mask(torch.zeros(1, 8, 8), (8, 8), keep=0.5, seed=0)
    assert mask.sum() == 32
    assert not bool(mask[0, :4].all())


def test_average_drop_batching_and_targets():
    model = small_cnn().double()
    x = torch.randn(5, 3, 24, 24, dtype=torch.float64)
    maps = torch.randint(0, 3, (5, 6, 6)).double()
    full = M.average_drop_increase(model, x, maps, batch_size=64)
    chunked = M.average_drop_increase(model, x, maps, batch_size=2)
    torch.testing.assert_close(full.drop, chunked.drop)
    for i in range(5):
        one = M.average_drop_increase(model, x[i:i + 1], maps[i:i + 1])
        torch.testing.assert_close(one.drop, full.drop[i:i + 1])
        torch.testing.assert_close(one.prob_kept, full.prob_kept[i:i + 1])
    top = full.target
    explicit = M.average_drop_increase(model, x, maps, target=top.tolist())
    torch.testing.assert_close(explicit.drop, full.drop)
    as_int = M.average_drop_increase(model, x, maps, target=1)
    assert as_int.target.tolist() == [1] * 5


def test_average_drop_blur_baseline_matches_manual(toy):
    model, wt, _ = toy
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    maps = torch.rand(2, 4, 4, dtype=torch.float64)
    res = M.average_drop_increase(model, x, maps)
    mask = M.keep_mask(maps, (16, 16))
    kept = torch.where(mask[:, None], x, M.blur_baseline(x))
    probs = torch.softmax(model(kept), 1).gather(1, res.target[:, None])[:, 0]
    torch.testing.assert_close(res.prob_kept, probs)


# ----------------------------------------------------------------------------------
# insertion / deletion
# ----------------------------------------------------------------------------------


def slow_curves(model, x, baseline, order, step, target):
    """Reference: build every step image one at a time with a Python loop."""
    h, w = x.shape[-2:]
    n = math.ceil(h * w / step)
    dele, ins = [], []
    for k in range(n + 1):
        changed = torch.zeros(h * w, dtype=torch.bool)
        changed[order[: min(k * step, h * w)]] = True
        changed = changed.view(1, 1, h, w)
        d = torch.where(changed, baseline, x)
        i = torch.where(changed, x, baseline)
        with torch.no_grad():
            dele.append(torch.softmax(model(d), 1)[0, target].item())
            ins.append(torch.softmax(model(i), 1)[0, target].item())
    return torch.tensor(ins, dtype=torch.float64), torch.tensor(dele, dtype=torch.float64)


def test_insertion_deletion_matches_slow_reference(toy):
    model, wt, _ = toy
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64) + wt[None, None]
    maps = torch.rand(1, 4, 4, dtype=torch.float64)
    res = M.insertion_deletion(model, x, maps, target=0, step=10, batch_size=7)
    order = M.rank_pixels(maps, (16, 16))[0]
    ins, dele = slow_curves(model, x, M.blur_baseline(x), order, 10, 0)
    assert res.n_steps == 26 and res.insertion_curve.shape == (1, 27)
    torch.testing.assert_close(res.insertion_curve[0].double(), ins)
    torch.testing.assert_close(res.deletion_curve[0].double(), dele)
    assert res.insertion_auc.item() == pytest.approx(float(torch.trapezoid(ins, dx=1 / 26)))
    assert res.overall.item() == pytest.approx(res.insertion_auc.item() - res.deletion_auc.item())


def test_insertion_deletion_known_ordering(toy):
    model, wt, x = toy
    kw = dict(baseline=0.0, step=4)
    oracle = M.insertion_deletion(model, x, wt[None], **kw)
    rand = M.insertion_deletion(model, x, torch.rand(1, 16, 16), **kw)
    rev = M.insertion_deletion(model, x, -wt[None], **kw)
    assert oracle.overall.item() > rand.overall.item() > rev.overall.item()
    assert oracle.deletion_auc.item() < rand.deletion_auc.item() < rev.deletion_auc.item()
    assert oracle.insertion_auc.item() > rand.insertion_auc.item() > rev.insertion_auc.item()
    # end points: full image and full baseline
    y, b = softmax0(float(wt.sum())), 1 / 3
    for r in (oracle, rand, rev):
        assert r.deletion_curve[0, 0].item() == pytest.approx(y)
        assert r.deletion_curve[0, -1].item() == pytest.approx(b)
        assert r.insertion_curve[0, 0].item() == pytest.approx(b)
        assert r.insertion_curve[0, -1].item() == pytest.approx(y)
    # oracle deletion: after 8 steps (32 pixels) the whole region is gone
    assert oracle.deletion_curve[0, 8].item() == pytest.approx(b)


@pytest.mark.parametrize("size,step,n_steps", [((224, 224), 448, 112), ((128, 128), 147, 112),
                                               ((24, 40), 9, 107)])
def test_default_step_counts(size, step, n_steps):
    h, w = size
    assert M.default_step(h, w) == step
    model = PixelLinear(torch.zeros(h, w, dtype=torch.float64)).eval()
    res = M.insertion_deletion(model, ones_images(1, h, w), torch.rand(1, 5, 5),
                               baseline=0.0, batch_size=128)
    assert res.step == step and res.n_steps == n_steps
    assert res.deletion_curve.shape == (1, n_steps + 1)


def test_insertion_deletion_batched_and_chunked():
    model = small_cnn().double()
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    maps = torch.randint(0, 4, (3, 5, 5)).double()
    full = M.insertion_deletion(model, x, maps, step=6, batch_size=64)
    assert full.n_steps == 24
    chunked = M.insertion_deletion(model, x, maps, step=6, batch_size=5)
    torch.testing.assert_close(full.insertion_curve, chunked.insertion_curve)
    torch.testing.assert_close(full.deletion_curve, chunked.deletion_curve)
    for i in range(3):
        one = M.insertion_deletion(model, x[i:i + 1], maps[i:i + 1], step=6, batch_size=9)
        torch.testing.assert_close(one.insertion_curve, full.insertion_curve[i:i + 1])
        torch.testing.assert_close(one.overall, full.overall[i:i + 1])


def test_insertion_deletion_non_square_and_constant_map():
    model = small_cnn().double()
    x = torch.randn(2, 3, 12, 30, dtype=torch.float64)
    res = M.insertion_deletion(model, x, torch.zeros(2, 3, 7))
    assert res.insertion_auc.shape == (2,) and torch.isfinite(res.overall).all()
    other = M.insertion_deletion(model, x, torch.zeros(2, 3, 7), seed=1)
    assert not torch.allclose(res.deletion_curve, other.deletion_curve)


# ----------------------------------------------------------------------------------
# localisation
# ----------------------------------------------------------------------------------


def test_boxes_to_masks_conventions():
    m = M.boxes_to_masks([[(15, 0, 20, 3)]], (12, 20))  # x = column, y = row
    assert m.shape == (1, 12, 20)
    ref = torch.zeros(12, 20, dtype=torch.bool)
    ref[0:3, 15:20] = True
    assert torch.equal(m[0], ref)
    # border / outside boxes are clipped; union of several boxes; empty list
    m = M.boxes_to_masks([[(-5, -5, 3, 2), (18, 10, 25, 30)], []], (12, 20))
    ref = torch.zeros(12, 20, dtype=torch.bool)
    ref[0:2, 0:3] = True
    ref[10:12, 18:20] = True
    assert torch.equal(m[0], ref) and not bool(m[1].any())
    # tensor inputs: B x 4 and B x n x 4
    t = torch.tensor([[2.0, 1.0, 4.0, 3.0]])
    assert torch.equal(M.boxes_to_masks(t, (5, 5)), M.boxes_to_masks(t[:, None], (5, 5)))


def test_proportion_known_answers():
    masks = torch.zeros(2, 12, 20, dtype=torch.bool)
    masks[0, 2:6, 3:15] = True
    masks[1, 7:12, 0:4] = True
    assert M.proportion_mask(masks.float(), masks).tolist() == [1.0, 1.0]
    # negative values are ignored, positive mass split 3:1
    m = torch.tensor([[[3.0, -5.0], [1.0, 0.0]]])
    got = M.proportion_mask(m, torch.tensor([[[True, True], [False, False]]]))
    assert got.item() == pytest.approx(0.75)
    zero = M.proportion_mask(torch.zeros(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))
    assert torch.isnan(zero).all()
    neg = M.proportion_mask(-torch.rand(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))
    assert torch.isnan(neg).all()


def test_proportion_low_res_rows_and_columns():
    m = torch.zeros(1, 4, 4)
    m[0, 1, 2] = 1.0  # row 1, column 2 -> rows 4:8, columns 8:12 at 16 x 16
    kw = dict(mode="nearest")
    assert M.proportion(m, [[(8, 4, 12, 8)]], (16, 16), **kw).item() == 1.0
    assert M.proportion(m, [[(4, 8, 8, 12)]], (16, 16), **kw).item() == 0.0
    # bilinear: equals the mask version on the upsampled map
    boxes = [[(6, 2, 13, 9)]]
    up = M.upsample_maps(m, (16, 16))
    manual = (up * M.boxes_to_masks(boxes, (16, 16))).sum() / up.sum()
    assert M.proportion(m, boxes, (16, 16)).item() == pytest.approx(manual.item())


def test_proportion_batched_equals_unbatched():
    maps = torch.rand(3, 5, 5) - 0.3
    boxes = [[(0, 0, 10, 10)], [(3, 4, 20, 9), (0, 0, 2, 2)], []]
    full = M.proportion(maps, boxes, (12, 20))
    for i in range(3):
        one = M.proportion(maps[i:i + 1], boxes[i:i + 1], (12, 20))
        torch.testing.assert_close(one, full[i:i + 1], equal_nan=True)
    assert full[2].item() == 0.0


def test_pointing_game_tolerance_boundary():
    region = torch.zeros(1, 64, 64, dtype=torch.bool)
    region[0, 32, 32] = True

    def at(r, c):
        m = torch.zeros(1, 64, 64)
        m[0, r, c] = 1.0
        return m

    assert M.pointing_game(at(32, 46), region).item() == 1.0
    assert M.pointing_game(at(32, 47), region).item() == 0.0          # distance 15, strict
    assert M.pointing_game(at(32, 47), region, inclusive=True).item() == 1.0
    assert M.pointing_game(at(41, 44), region).item() == 0.0          # 9-12-15 triangle
    assert M.pointing_game(at(41, 44), region, inclusive=True).item() == 1.0
    assert M.pointing_game(at(40, 43), region).item() == 1.0
    assert M.pointing_game(at(32, 33), region, tolerance=0).item() == 0.0


def test_pointing_game_boxes_constant_and_empty():
    m = torch.zeros(3, 8, 8)
    m[0, 1, 1] = 1.0  # upsampled to 64 x 64 the max sits near (12, 12)
    m[2, 6, 6] = 1.0
    boxes = [[(30, 30, 40, 40)], [(0, 0, 64, 64)], []]
    got = M.pointing_game(m, boxes=boxes, image_size=(64, 64))
    assert got[0].item() == 1.0 or got[0].item() == 0.0
    assert got[1].item() == 0.0  # constant map: miss by definition
    assert math.isnan(got[2].item())  # no object
    far = M.pointing_game(m[:1], boxes=[[(50, 50, 64, 64)]], image_size=(64, 64))
    assert far.item() == 0.0
    near = M.pointing_game(m[:1], boxes=[[(20, 20, 30, 30)]], image_size=(64, 64))
    assert near.item() == 1.0


def test_max_points_ties_are_random():
    m = torch.zeros(1, 10, 10)
    m[0, 2, 3] = m[0, 7, 8] = 1.0
    seen = {tuple(M.max_points(m, seed=s)[0].tolist()) for s in range(20)}
    assert seen == {(2, 3), (7, 8)}


# ----------------------------------------------------------------------------------
# ROAD
# ----------------------------------------------------------------------------------


def dense_imputation(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Slow reference: one equation per removed pixel, solved densely."""
    c, h, w = img.shape
    idx = {p: i for i, p in enumerate(zip(*np.nonzero(removed)))}
    a = np.zeros((len(idx), len(idx)))
    b = np.zeros((len(idx), c))
    for (r, q), i in idx.items():
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if dr == dc == 0 or not (0 <= r + dr < h and 0 <= q + dc < w):
                    continue
                wt = 1 / 12 if dr and dc else 1 / 6
                a[i, i] -= wt
                if removed[r + dr, q + dc]:
                    a[i, idx[(r + dr, q + dc)]] += wt
                else:
                    b[i] -= wt * img[:, r + dr, q + dc]
    sol = np.linalg.solve(a, b)
    out = img.copy()
    for (r, q), i in idx.items():
        out[:, r, q] = sol[i]
    return out


def test_imputation_matches_dense_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 6, 7, generator=g, dtype=torch.float64)
    removed = torch.rand(2, 6, 7, generator=g) < 0.6
    out = M.impute_linear(x, removed, noise=0.0)
    for i in range(2):
        ref = dense_imputation(x[i].numpy(), removed[i].numpy())
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-12)
    assert torch.equal(out[~removed[:, None].expand_as(x)], x[~removed[:, None].expand_as(x)])


def test_imputation_matches_pytorch_grad_cam():
    road_mod = pytest.importorskip("pytorch_grad_cam.metrics.road")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 12, 10, generator=g)
    removed = torch.rand(1, 12, 10, generator=g) < 0.5
    ref = road_mod.NoisyLinearImputer(noise=0.0)(x[0], (~removed[0]).float())
    torch.testing.assert_close(M.impute_linear(x, removed, noise=0.0)[0], ref,
                               rtol=0, atol=1e-5)


def test_imputation_reproduces_linear_ramp():
    h, w = 32, 24
    r = torch.arange(h, dtype=torch.float64)[:, None]
    c = torch.arange(w, dtype=torch.float64)[None, :]
    ramp = torch.stack([0.1 * r + 0.05 * c, -0.02 * r + 0.3 * c + 1, 0.07 * r + 0 * c])[None]
    inner = torch.zeros(1, h, w, dtype=torch.bool)
    inner[0, 8:20, 5:17] = True
    torch.testing.assert_close(M.impute_linear(ramp, inner, noise=0.0), ramp,
                               rtol=0, atol=1e-10)
    # scattered holes off the border row/column: still exact
    holes = torch.rand(1, h, w, generator=torch.Generator().manual_seed(3)) < 0.3
    interior = holes.clone()
    interior[:, [0, -1]] = False
    interior[:, :, [0, -1]] = False
    torch.testing.assert_close(M.impute_linear(ramp, interior, noise=0.0), ramp,
                               rtol=0, atol=1e-10)
    # holes on the border: one-sided neighbours bias the border pixels only
    err = (M.impute_linear(ramp, holes, noise=0.0) - ramp).abs().amax(1)[0]
    assert err[2:-2, 2:-2].max().item() < 0.05
    assert err[holes[0]].median().item() < 1e-3


def test_imputation_noise():
    x = torch.zeros(1, 2, 40, 40, dtype=torch.float64)
    removed = torch.zeros(1, 40, 40, dtype=torch.bool)
    removed[0, 5:35, 5:35] = True
    out = M.impute_linear(x, removed, noise=(0.5, 0.0), seed=4)
    assert out[0, 0][removed[0]].std().item() == pytest.approx(0.5, rel=0.1)
    assert torch.equal(out[0, 1], x[0, 1])
    assert torch.equal(out[0, 0][~removed[0]], x[0, 0][~removed[0]])
    again = M.impute_linear(x, removed, noise=(0.5, 0.0), seed=4)
    assert torch.equal(out, again)


def test_road_known_ordering_and_batching(toy):
    model, wt, _ = toy
    x = torch.zeros(2, 3, 16, 16, dtype=torch.float64)
    x[:, 0] = (wt > 0).double() * 2.0  # bright object where the weights are
    maps = torch.stack([wt, torch.rand(16, 16, dtype=torch.float64)])
    kw = dict(percentages=(0.05, 0.1, 0.2), noise=0.0, target=0)
    morf = M.road(model, x, maps, order="morf", **kw)
    lerf = M.road(model, x, maps, order="lerf", **kw)
    assert morf.probs.shape == (2, 3) and morf.mean.shape == (2,)
    assert morf.mean[0] < morf.mean[1]          # oracle removes the object first
    assert lerf.mean[0] > lerf.mean[1]          # and keeps it under LeRF
    # batched == unbatched, chunking irrelevant
    noisy = M.road(model, x, maps, percentages=(0.3, 0.6), seed=2, batch_size=64)
    chunked = M.road(model, x, maps, percentages=(0.3, 0.6), seed=2, batch_size=1)
    torch.testing.assert_close(noisy.probs, chunked.probs)
    for i in range(2):
        one = M.road(model, x[i:i + 1], maps[i:i + 1], percentages=(0.3, 0.6), seed=2)
        torch.testing.assert_close(one.probs, noisy.probs[i:i + 1])


def test_road_zero_percentage_is_clean(toy):
    model, wt, x = toy
    res = M.road(model, x, torch.rand(1, 4, 4), percentages=(0.0,), target=0)
    assert res.probs.item() == pytest.approx(softmax0(float(wt.sum())))


# ----------------------------------------------------------------------------------
# sanity checks
# ----------------------------------------------------------------------------------


def test_similarity_matches_scipy_and_skimage():
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    a, b = torch.rand(3, 16, 16), torch.rand(3, 16, 16) - 0.5
    sim = M.similarity(a, b)
    sim_abs = M.similarity(a, b, absolute=True)
    for i in range(3):
        rho = spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert sim["spearman"][i].item() == pytest.approx(rho)
        an = (a[i] - a[i].min()) / (a[i].max() - a[i].min())
        bn = (b[i] - b[i].min()) / (b[i].max() - b[i].min())
        ref = structural_similarity(an.double().numpy(), bn.double().numpy(), data_range=1.0)
        assert sim["ssim"][i].item() == pytest.approx(ref)
        rho_abs = spearmanr(a[i].flatten().numpy(), b[i].abs().flatten().numpy()).statistic
        assert sim_abs["spearman"][i].item() == pytest.approx(rho_abs)
    same = M.similarity(a, a)
    torch.testing.assert_close(same["spearman"], torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(same["ssim"], torch.ones(3, dtype=torch.float64))


def test_similarity_edge_cases():
    const = M.similarity(torch.zeros(1, 8, 8), torch.rand(1, 8, 8))
    assert math.isnan(const["spearman"].item())
    assert math.isfinite(const["ssim"].item())
    tiny = M.similarity(torch.rand(1, 2, 2), torch.rand(1, 2, 2))
    assert math.isnan(tiny["ssim"].item())
    small = M.similarity(torch.rand(1, 4, 5), torch.rand(1, 4, 5))  # window shrinks to 3
    assert math.isfinite(small["ssim"].item())


def grad_x_input(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    model(x).gather(1, target[:, None]).sum().backward()
    return (x.grad * x).sum(1).detach()


def test_cascading_randomization():
    model = small_cnn(seed=1)
    x = torch.randn(2, 3, 12, 12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    layers = ["6", "2", "0"]
    recs = M.cascading_randomization(model, grad_x_input, x, None, layers)
    assert len(recs) == 4 * 2
    assert {r["step"] for r in recs} == {0, 1, 2, 3}
    assert [r["layer"] for r in recs if r["image"] == 0] == ["original", "6", "2", "0"]
    assert recs[-1]["randomized"] == "6; 2; 0"
    first = [r for r in recs if r["step"] == 0]
    assert all(r["spearman"] == pytest.approx(1.0) and r["ssim"] == pytest.approx(1.0)
               for r in first)
    last = [r for r in recs if r["step"] == 3]
    assert all(abs(r["spearman"]) < 0.9 for r in last)
    assert set(recs[0]) >= {"spearman", "ssim", "spearman_abs", "ssim_abs", "image"}
    # caller's model and global RNG untouched; reproducible
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert torch.equal(torch.get_rng_state(), rng)
    again = M.cascading_randomization(model, grad_x_input, x, None, layers)
    assert again == recs


def test_cascading_randomization_groups_and_custom_reinit():
    model = small_cnn(seed=2)
    x = torch.randn(1, 3, 10, 10)
    calls = []

    def zero_init(module: nn.Module, seed: int) -> None:
        calls.append(seed)
        with torch.no_grad():
            for p in module.parameters():
                p.normal_(0, 1, generator=torch.Generator().manual_seed(seed))

    recs = M.cascading_randomization(model, grad_x_input, x, torch.tensor([1]),
                                     [("6", "2"), "0"], reinit=zero_init, seed=10)
    assert len(recs) == 3
    assert recs[1]["layer"] == "6, 2"
    assert calls == [10, 11, 10, 11, 12]  # cumulative, same seed per layer every step


def test_cascading_randomization_needs_reset():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.s

    model = nn.Sequential(small_cnn(), Scale()).eval()
    with pytest.raises(ValueError, match="reset_parameters"):
        M.cascading_randomization(model, grad_x_input, torch.randn(1, 3, 8, 8), 0, ["1"])


# ----------------------------------------------------------------------------------
# devices
# ----------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_follow_cuda_device():
    model = small_cnn()
    x = torch.randn(2, 3, 32, 32)
    maps = torch.randint(0, 3, (2, 8, 8)).float()
    cuda_model = small_cnn().cuda()
    xc, mc = x.cuda(), maps.cuda()
    ad, adc = (M.average_drop_increase(model, x, maps),
               M.average_drop_increase(cuda_model, xc, mc))
    assert adc.drop.is_cuda
    torch.testing.assert_close(adc.drop.cpu(), ad.drop, rtol=1e-3, atol=1e-3)
    idl, idc = M.insertion_deletion(model, x, maps), M.insertion_deletion(cuda_model, xc, mc)
    assert idc.overall.is_cuda
    torch.testing.assert_close(idc.insertion_curve.cpu(), idl.insertion_curve,
                               rtol=1e-3, atol=1e-4)
    rc = M.road(cuda_model, xc, mc, percentages=(0.2, 0.5))
    assert rc.probs.is_cuda
    torch.testing.assert_close(rc.probs.cpu(), M.road(model, x, maps, percentages=(0.2, 0.5)).probs,
                               rtol=1e-3, atol=1e-4)
    boxes = [[(0, 0, 16, 16)], [(8, 8, 30, 20)]]
    assert M.proportion(mc, boxes, (32, 32)).is_cuda
    assert M.pointing_game(mc, boxes=boxes, image_size=(32, 32)).is_cuda
    torch.testing.assert_close(M.blur_baseline(xc).cpu(), M.blur_baseline(x), rtol=0, atol=1e-5)
