"""Tests of the synthetic benchmark scenes (fgcam_lib.data.scenes)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fgcam_lib.data.scenes import CLASSES, SPLITS, SyntheticScenes, masks_to_boxes

SIZE = 96


def _mask_box(mask: torch.Tensor) -> list[float]:
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


def test_classes_distinct_and_enough() -> None:
    assert len(CLASSES) >= 8
    assert len(set(CLASSES)) == len(CLASSES)
    assert SyntheticScenes.CLASSES == CLASSES


def test_item_format() -> None:
    ds = SyntheticScenes("test", n=5, seed=0, size=SIZE)
    item = ds[3]
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["classes"].dtype == torch.long and item["classes"].shape == (1,)
    assert item["label"] == int(item["classes"][0])
    assert 0 <= item["label"] < len(CLASSES)
    assert item["boxes"].shape == (1, 4) and item["masks"].shape == (1, SIZE, SIZE)
    assert item["masks"].dtype == torch.bool
    assert item["index"] == 3
    assert len(ds) == 5
    with pytest.raises(IndexError):
        ds[5]


def test_deterministic_across_instances() -> None:
    a = SyntheticScenes("test", n=10, seed=3, size=SIZE)
    b = SyntheticScenes("test", n=10, seed=3, size=SIZE)
    for i in (0, 7):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"])
        assert torch.equal(x["masks"], y["masks"])
        assert torch.equal(x["boxes"], y["boxes"])
        assert torch.equal(a[i]["image"], x["image"])  # same item twice
    # n does not change a scene: index i is the same whatever the dataset length
    assert torch.equal(SyntheticScenes("test", n=100, seed=3, size=SIZE)[7]["image"], a[7]["image"])


def test_known_scene_fingerprint() -> None:
    """Scenes must be identical on every machine: pin a few values of known scenes."""
    ds = SyntheticScenes("test", n=10, seed=0, size=SIZE)
    assert [ds[i]["label"] for i in range(10)] == [4, 5, 4, 0, 1, 6, 3, 5, 3, 0]
    item = ds[0]
    assert int(item["masks"].sum()) == 590
    assert item["boxes"].tolist() == [[24.0, 18.0, 56.0, 56.0]]
    assert abs(float(item["image"].mean()) - 0.3715) < 1e-3


def test_splits_and_seeds_differ() -> None:
    imgs = {s: SyntheticScenes(s, n=3, seed=0, size=SIZE)[0]["image"] for s in SPLITS}
    names = list(imgs)
    for i, s in enumerate(names):
        for t in names[i + 1:]:
            assert not torch.equal(imgs[s], imgs[t]), (s, t)
    other_seed = SyntheticScenes("test", n=3, seed=1, size=SIZE)[0]["image"]
    assert not torch.equal(imgs["test"], other_seed)
    with pytest.raises(ValueError):
        SyntheticScenes("nope", n=1)


@pytest.mark.parametrize("split", ["test", "pairs", "loc"])
def test_boxes_are_mask_bounding_boxes(split: str) -> None:
    ds = SyntheticScenes(split, n=30, seed=0, size=SIZE)
    for i in range(len(ds)):
        item = ds[i]
        for mask, box in zip(item["masks"], item["boxes"]):
            assert mask.any()
            assert box.tolist() == _mask_box(mask)
        assert torch.equal(masks_to_boxes(item["masks"]), item["boxes"])


@pytest.mark.parametrize("split", ["test", "pairs"])
def test_masks_are_exactly_the_object_pixels(split: str) -> None:
    """Pixels that changed when objects were drawn = visible object pixels + occluders."""
    ds = SyntheticScenes(split, n=30, seed=0, size=SIZE, occlusion=0.5)
    n_occluded = 0
    for i in range(len(ds)):
        s = ds.render(i)
        changed = np.abs(s.image - s.background).max(-1) > 0
        union = s.masks.any(0)
        # every visible object pixel differs from the background (colours are continuous)
        assert (changed[union]).mean() > 0.99
        # nothing changed outside objects and occluders
        assert not (changed & ~union & ~s.occluder).any()
        # occluded pixels are not in any mask
        assert not (s.masks & s.occluder[None]).any()
        # masks do not overlap
        assert int(s.masks.sum(0).max()) <= 1
        n_occluded += int(s.occluder.any())
    assert n_occluded > 0


def test_pairs_have_two_objects_of_different_classes() -> None:
    ds = SyntheticScenes("pairs", n=40, seed=0, size=SIZE)
    for i in range(len(ds)):
        item = ds[i]
        c = item["classes"]
        assert c.shape == (2,) and int(c[0]) != int(c[1])
        assert item["label"] == int(c[0])
        areas = item["masks"].flatten(1).sum(1)
        assert bool((areas > 0.12 * areas.max()).all())  # neither object mostly hidden


def test_loc_boxes_at_most_half_the_image() -> None:
    ds = SyntheticScenes("loc", n=60, seed=0, size=SIZE)
    for i in range(len(ds)):
        b = ds[i]["boxes"][0]
        assert float((b[2] - b[0]) * (b[3] - b[1])) <= 0.5 * SIZE * SIZE


def test_object_scale_and_class_balance() -> None:
    ds = SyntheticScenes("test", n=200, seed=0, size=SIZE)
    images, classes = ds.to_tensors()
    assert images.dtype == torch.uint8 and images.shape == (200, 3, SIZE, SIZE)
    assert classes.shape == (200, 1)
    counts = torch.bincount(classes[:, 0], minlength=len(CLASSES))
    assert bool((counts > 5).all())
    # uint8 tensors are the float images rounded
    assert torch.allclose(images[5].float() / 255, ds[5]["image"], atol=1 / 255)
    sides = [max(float(b[2] - b[0]), float(b[3] - b[1])) / SIZE for b in (ds[i]["boxes"][0] for i in range(50))]
    assert 0.1 < min(sides) and max(sides) < 0.7


def test_generation_is_fast_enough_for_1000_scenes() -> None:
    """1000 scenes render in seconds (smoke check; time is printed, not asserted)."""
    import time

    t = time.time()
    SyntheticScenes("train", n=1000, seed=0, size=SIZE).to_tensors()
    print(f"1000 scenes at {SIZE}px: {time.time() - t:.1f}s")
