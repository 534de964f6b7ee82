"""Tests for fgcam_lib.data: image loading, sample photos, ImageNet val, folders, collate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fgcam_lib import data
from fgcam_lib.data import (
    IMAGENET_ENV_VARS,
    ImageFolderDataset,
    ImageNetVal,
    collate,
    load_image,
    load_images,
    read_synset_mapping,
    sample_photos,
)

# --------------------------------------------------------------------------- fixtures

SYNSETS = ["n01440764", "n01443537", "n01751748"]  # tench, goldfish, sea snake (ImageNet order)
SYNSET_LINES = ["n01440764 tench, Tinca tinca", "n01443537 goldfish, Carassius auratus", "n01751748 sea snake"]

# image id -> (width, height, [(synset, (x0, y0, x1, y1)), ...]); None = no annotation
ANNOTATIONS: dict[str, tuple[int, int, list[tuple[str, tuple[int, int, int, int]]] | None]] = {
    "ILSVRC2012_val_00000001": (400, 300, [("n01751748", (40, 30, 200, 150))]),  # small single box
    "ILSVRC2012_val_00000002": (320, 240, [("n01440764", (10, 20, 100, 120)), ("n01440764", (150, 30, 300, 200))]),
    "ILSVRC2012_val_00000003": (200, 200, [("n01443537", (0, 0, 180, 190))]),  # box covers 85.5%
    "ILSVRC2012_val_00000004": (100, 80, None),  # image without annotation
}


def _voc_xml(width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    objs = "".join(
        f"<object><name>{s}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for s, b in objects
    )
    return (
        f"<annotation><folder>val</folder><size><width>{width}</width><height>{height}</height>"
        f"<depth>3</depth></size>{objs}</annotation>"
    )


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny ImageNet val tree: JPEGs, an XML folder, the Kaggle CSV, the synset mapping."""
    root = tmp_path_factory.mktemp("imagenet")
    val, xml = root / "val", root / "xml"
    val.mkdir()
    xml.mkdir()
    rng = np.random.default_rng(0)
    rows = ["ImageId,PredictionString"]
    for stem, (w, h, objects) in ANNOTATIONS.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(val / f"{stem}.JPEG", quality=90)
        if objects is None:
            continue
        (xml / f"{stem}.xml").write_text(_voc_xml(w, h, objects))
        rows.append(f"{stem}," + " ".join(f"{s} {b[0]} {b[1]} {b[2]} {b[3]}" for s, b in objects))
    (val / "README.txt").write_text("not an image")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (root / "LOC_synset_mapping.txt").write_text("\n".join(SYNSET_LINES) + "\n")
    return {
        "val": val,
        "xml": xml,
        "csv": root / "LOC_val_solution.csv",
        "synsets": root / "LOC_synset_mapping.txt",
    }


@pytest.fixture(params=["xml", "csv"])
def val_ds(request: pytest.FixtureRequest, imagenet: dict[str, Path]) -> ImageNetVal:
    return ImageNetVal(imagenet["val"], boxes=imagenet[request.param], synsets=imagenet["synsets"])


def _by_name(ds: ImageNetVal) -> dict[str, dict]:
    return {Path(item["path"]).stem: item for item in (ds[i] for i in range(len(ds)))}


# --------------------------------------------------------------------------- load_image


def _save(tmp_path: Path, name: str, im: Image.Image) -> Path:
    path = tmp_path / name
    im.save(path)
    return path


def test_load_image_rgb_exact_values(tmp_path: Path) -> None:
    arr = np.zeros((5, 7, 3), dtype=np.uint8)
    arr[..., 0], arr[..., 2] = 255, 128
    x = load_image(_save(tmp_path, "rgb.png", Image.fromarray(arr)))
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([1.0, 0.0, 128 / 255]))


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "P_transparent", "I;16", "1", "CMYK"])
def test_load_image_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 9, 3), dtype=np.uint8))
    if mode == "P_transparent":
        im = rgb.convert("P")
        im.info["transparency"] = 0
    elif mode == "I;16":
        im = Image.fromarray((np.arange(12 * 9, dtype=np.uint16) * 600).reshape(12, 9))
    else:
        im = rgb.convert(mode)
    path = _save(tmp_path, f"img_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}", im)
    x = load_image(path)
    assert x.shape == (3, 12, 9) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    if mode in ("L", "I;16", "1"):
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    if mode == "I;16":  # 16-bit grey keeps its range: 600 * k / 65535
        torch.testing.assert_close(x[0, 0, 1], torch.tensor(600 / 65535))


def test_load_image_grey_value(tmp_path: Path) -> None:
    x = load_image(_save(tmp_path, "g.png", Image.new("L", (4, 3), 128)))
    torch.testing.assert_close(x, torch.full((3, 3, 4), 128 / 255))


def test_load_image_rgba_drops_alpha(tmp_path: Path) -> None:
    x = load_image(_save(tmp_path, "a.png", Image.new("RGBA", (4, 4), (10, 20, 30, 0))))
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([10, 20, 30]) / 255.0)


@pytest.mark.parametrize("size, shape", [(None, (3, 30, 50)), (16, (3, 16, 16)), ((20, 40), (3, 20, 40)), (64, (3, 64, 64))])
def test_load_image_resize(tmp_path: Path, size, shape) -> None:
    arr = np.random.default_rng(2).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    x = load_image(_save(tmp_path, "r.png", Image.fromarray(arr)), size=size)
    assert tuple(x.shape) == shape
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_load_image_resize_constant_stays_constant() -> None:
    x = load_image(Image.new("RGB", (37, 23), (51, 102, 204)), size=(11, 64))
    torch.testing.assert_close(x, torch.tensor([0.2, 0.4, 0.8]).view(3, 1, 1).expand(3, 11, 64))


def test_load_image_accepts_pil_and_path_str(tmp_path: Path) -> None:
    im = Image.fromarray(np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    path = _save(tmp_path, "p.png", im)
    torch.testing.assert_close(load_image(im), load_image(str(path)))


def test_load_image_exif_orientation(tmp_path: Path) -> None:
    im = Image.new("RGB", (20, 10), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif.tobytes())
    assert load_image(path).shape == (3, 20, 10)
    assert load_image(path, exif_transpose=False).shape == (3, 10, 20)


def test_load_image_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(missing)


def test_load_image_not_an_image(tmp_path: Path) -> None:
    bad = tmp_path / "fake.png"
    bad.write_text("hello, I am text")
    with pytest.raises(ValueError, match="fake.png.* is not a readable image"):
        load_image(bad)


def test_load_image_truncated_and_directory(tmp_path: Path) -> None:
    good = _save(tmp_path, "full.jpg", Image.fromarray(np.full((64, 64, 3), 90, np.uint8)))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="is not a readable image"):
        load_image(cut)
    with pytest.raises(ValueError, match="is not a readable image"):
        load_image(tmp_path)


@pytest.mark.parametrize("size", [0, -3, (10,), "12", 2.5])
def test_load_image_bad_size(size) -> None:
    with pytest.raises((ValueError, TypeError)):
        load_image(Image.new("RGB", (4, 4)), size=size)


def test_load_images_batch_and_mismatch(tmp_path: Path) -> None:
    a = _save(tmp_path, "a.png", Image.new("RGB", (10, 6)))
    b = _save(tmp_path, "b.jpg", Image.new("L", (7, 9)))
    assert load_images([a, b], size=32).shape == (2, 3, 32, 32)
    assert load_images([a, a], size=None).shape == (2, 3, 6, 10)
    with pytest.raises(ValueError, match="different sizes"):
        load_images([a, b], size=None)
    with pytest.raises(ValueError):
        load_images([], size=8)


# --------------------------------------------------------------------------- sample photos


def test_sample_photos_default() -> None:
    x, names, classes = sample_photos(64)
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05
    assert names == ["cat", "coffee", "astronaut", "rocket", "motorcycle", "china", "flower", "grace_hopper"]
    assert len(classes) == len(names) and all(0 <= c < 1000 for c in classes)
    assert classes[0] in (281, 282, 285) and classes[1] in (504, 967, 968)
    for name in names:  # every natural photo has a licence, correct classes and a box inside it
        spec = data.SAMPLE_PHOTOS[name]
        assert spec.licence and spec.imagenet_class == spec.correct[0] and spec.box is not None


def test_photo_boxes_follow_the_crop_and_resize() -> None:
    from fgcam_lib.data.photos import photo_boxes

    boxes = photo_boxes(224)
    assert len(boxes) == 8 and all(b is not None for b in boxes)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
    # coffee is 400 x 600: the centre square starts at x = 100; its box (170, 20, 400, 270) becomes
    # (70, 20, 300, 270) there, times 224 / 400
    (b,) = photo_boxes(400, names=["coffee"])
    assert b == pytest.approx((70.0, 20.0, 300.0, 270.0))
    assert photo_boxes(64, names=["horse"]) == [None]


def test_sample_photos_subset_size_and_horse() -> None:
    x, names, classes = sample_photos((32, 48), names=["coffee", "horse"])
    assert x.shape == (2, 3, 32, 48) and names == ["coffee", "horse"] and classes == [967, 339]
    horse = x[1]
    assert torch.equal(horse[0], horse[2])  # grey silhouette
    with pytest.raises(KeyError, match="available"):
        sample_photos(32, names=["unicorn"])


def test_photo_set_scores_the_hand_box_for_every_correct_class() -> None:
    from fgcam_lib.data.photos import PhotoSet, photo_boxes
    from fgcam_lib.evaluation.batch import Batch, load_batch

    ds = PhotoSet(64, ["coffee", "horse", "astronaut"])   # the horse has no box: left out
    assert ds.image_ids == ["coffee", "astronaut"] and len(ds) == 2
    item = ds[0]
    assert item["label"] == 967 and item["classes"].tolist() == [967, 968, 504]
    assert item["boxes"].shape == (3, 4) and torch.allclose(item["boxes"][1], torch.tensor(photo_boxes(64, ["coffee"])[0]))
    b = load_batch(ds, None)
    assert isinstance(b, Batch) and b.ids == ["coffee", "astronaut"]
    boxes, _ = b.region(torch.tensor([504, 0]))   # a correct class other than the label, then a wrong one
    assert torch.allclose(boxes[0][0], item["boxes"][0]) and torch.allclose(boxes[1][0], ds[1]["boxes"][0])
    with pytest.raises(ValueError, match="has a box"):
        PhotoSet(32, ["horse"])


def test_sample_photo_class_names_match_imagenet() -> None:
    weights = pytest.importorskip("torchvision.models").VGG16_BN_Weights.IMAGENET1K_V1
    categories = weights.meta["categories"]
    for spec in data.SAMPLE_PHOTOS.values():
        assert categories[spec.imagenet_class] == spec.class_name
        assert all(0 <= c < 1000 for c in spec.correct)


# --------------------------------------------------------------------------- ImageNet val


def test_synset_mapping_file(imagenet: dict[str, Path]) -> None:
    mapping, names = read_synset_mapping(imagenet["synsets"])
    assert mapping == {s: i for i, s in enumerate(SYNSETS)}
    assert names[0] == "tench, Tinca tinca" and names[2] == "sea snake"


def test_imagenet_labels_and_resized_boxes(val_ds: ImageNetVal) -> None:
    assert len(val_ds) == 3  # the image without an annotation is left out
    items = _by_name(val_ds)
    one = items["ILSVRC2012_val_00000001"]
    assert one["image"].shape == (3, 224, 224) and one["image"].dtype == torch.float32
    assert 0.0 <= one["image"].min() and one["image"].max() <= 1.0
    assert one["label"] == 2 and one["classes"].tolist() == [2]
    sx, sy = 224 / 400, 224 / 300
    expected = torch.tensor([[40 * sx, 30 * sy, 200 * sx, 150 * sy]])
    torch.testing.assert_close(one["boxes"], expected)
    torch.testing.assert_close(one["boxes"], torch.tensor([[22.4, 22.4, 112.0, 112.0]]))
    two = items["ILSVRC2012_val_00000002"]
    assert two["label"] == 0 and two["classes"].tolist() == [0, 0] and two["boxes"].shape == (2, 4)
    torch.testing.assert_close(two["boxes"][1], torch.tensor([150 * 0.7, 30 * 224 / 240, 300 * 0.7, 200 * 224 / 240]))
    assert items["ILSVRC2012_val_00000003"]["label"] == 1
    assert [val_ds[i]["index"] for i in range(3)] == [0, 1, 2]


def test_imagenet_non_square_size(imagenet: dict[str, Path]) -> None:
    ds = ImageNetVal(imagenet["val"], boxes=imagenet["xml"], synsets=imagenet["synsets"], size=(150, 100))
    item = _by_name(ds)["ILSVRC2012_val_00000001"]
    assert item["image"].shape == (3, 150, 100)
    torch.testing.assert_close(item["boxes"], torch.tensor([[10.0, 15.0, 50.0, 75.0]]))


def test_imagenet_synsets_as_dict_or_list(imagenet: dict[str, Path]) -> None:
    for spec in (SYNSETS, {s: i for i, s in enumerate(SYNSETS)}):
        ds = ImageNetVal(imagenet["val"], boxes=imagenet["csv"], synsets=spec, size=32)
        assert [ds[i]["label"] for i in range(len(ds))] == [2, 0, 1]
    with pytest.raises(ValueError, match="synsets="):
        ImageNetVal(imagenet["val"], boxes=imagenet["xml"], synsets=None)
    with pytest.raises(ValueError, match="missing from the class mapping"):
        ImageNetVal(imagenet["val"], boxes=imagenet["xml"], synsets=SYNSETS[:2])


def test_imagenet_without_boxes(imagenet: dict[str, Path]) -> None:
    ds = ImageNetVal(imagenet["val"], size=16)
    assert len(ds) == 4
    item = ds[3]
    assert item["label"] == -1 and item["boxes"].shape == (0, 4) and item["classes"].shape == (0,)


def test_localization_subset(val_ds: ImageNetVal) -> None:
    loc = val_ds.localization_subset()
    assert [Path(r.path).stem for r in loc.records] == ["ILSVRC2012_val_00000001"]
    assert loc[0]["boxes"].shape == (1, 4) and loc[0]["index"] == 0
    loose = val_ds.localization_subset(max_box_fraction=0.9)
    assert len(loose) == 2  # the 85.5% box passes, the two-box image still does not
    assert len(val_ds) == 3  # the parent is untouched


def test_random_subset_deterministic(tmp_path: Path, imagenet: dict[str, Path]) -> None:
    for i in range(1, 13):
        Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / f"ILSVRC2012_val_{i:08d}.JPEG")
    ds = ImageNetVal(tmp_path, size=8)
    assert len(ds) == 12
    paths = lambda sub: [str(r.path) for r in sub.records]  # noqa: E731
    a, b = ds.random_subset(5, seed=0), ds.random_subset(5, seed=0)
    assert len(a) == 5 and paths(a) == paths(b) and paths(a) == sorted(paths(a))
    assert len({tuple(paths(ds.random_subset(5, seed=s))) for s in range(6)}) > 1
    assert len(ds.random_subset(100, seed=1)) == 12
    assert len(ds.random_subset(0, seed=1)) == 0
    real = ImageNetVal(imagenet["val"], boxes=imagenet["xml"], synsets=imagenet["synsets"])
    assert isinstance(real.random_subset(2, seed=3), ImageNetVal)


def test_imagenet_missing_paths(tmp_path: Path, imagenet: dict[str, Path]) -> None:
    with pytest.raises(FileNotFoundError, match="not_there.*ILSVRC2012_val"):
        ImageNetVal(tmp_path / "not_there")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no ILSVRC2012_val"):
        ImageNetVal(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no_boxes.csv"):
        ImageNetVal(imagenet["val"], boxes=tmp_path / "no_boxes.csv", synsets=imagenet["synsets"])
    with pytest.raises(FileNotFoundError, match="mapping"):
        ImageNetVal(imagenet["val"], boxes=imagenet["xml"], synsets=tmp_path / "nomap.txt")


def test_imagenet_bad_csv(tmp_path: Path, imagenet: dict[str, Path]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Id,Boxes\nILSVRC2012_val_00000001,x\n")
    with pytest.raises(ValueError, match="ImageId and PredictionString"):
        ImageNetVal(imagenet["val"], boxes=bad, synsets=imagenet["synsets"])


def test_from_env_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in IMAGENET_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(FileNotFoundError) as err:
        ImageNetVal.from_env()
    message = str(err.value)
    assert all(var in message for var in IMAGENET_ENV_VARS) and "LOC_synset_mapping.txt" in message


def test_from_env_set(monkeypatch: pytest.MonkeyPatch, imagenet: dict[str, Path], tmp_path: Path) -> None:
    monkeypatch.setenv("FGCAM_IMAGENET_VAL", str(imagenet["val"]))
    monkeypatch.setenv("FGCAM_IMAGENET_BOXES", str(imagenet["csv"]))
    monkeypatch.setenv("FGCAM_IMAGENET_SYNSETS", str(imagenet["synsets"]))
    assert len(ImageNetVal.from_env(size=32)) == 3
    monkeypatch.setenv("FGCAM_IMAGENET_VAL", str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match="gone"):
        ImageNetVal.from_env()


def test_imagenet_dataloader(val_ds: ImageNetVal) -> None:
    batch = next(iter(DataLoader(val_ds, batch_size=3, collate_fn=collate)))
    assert batch["image"].shape == (3, 3, 224, 224)
    assert batch["label"].tolist() == [2, 0, 1]
    assert [b.shape[0] for b in batch["boxes"]] == [1, 2, 1]
    assert len(batch["path"]) == 3 and isinstance(batch["path"][0], str)


# --------------------------------------------------------------------------- image folder


def test_image_folder_dataset(tmp_path: Path) -> None:
    Image.new("RGB", (10, 20), (255, 0, 0)).save(tmp_path / "b.png")
    Image.new("L", (30, 10), 7).save(tmp_path / "a.JPG")
    (tmp_path / "notes.txt").write_text("skip me")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (5, 5)).save(tmp_path / "sub" / "c.bmp")
    ds = ImageFolderDataset(tmp_path, size=24)
    assert [Path(p).name for p in ds.paths] == ["a.JPG", "b.png"]
    item = ds[1]
    assert item["image"].shape == (3, 24, 24) and item["label"] == -1 and item["index"] == 1
    torch.testing.assert_close(item["image"][:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert len(ImageFolderDataset(tmp_path, size=24, recursive=True)) == 3
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 24, 24) and batch["label"].tolist() == [-1, -1]


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        ImageFolderDataset(tmp_path / "missing_dir")
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "x.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no image files"):
        ImageFolderDataset(tmp_path / "only_text")


# --------------------------------------------------------------------------- collate


def _scene_item(i: int, n: int) -> dict:
    return {
        "image": torch.full((3, 8, 8), float(i)),
        "mask": torch.zeros(8, 8),
        "label": i,
        "classes": torch.arange(n),
        "boxes": torch.rand(n, 4),
        "masks": torch.zeros(n, 8, 8, dtype=torch.bool),
        "path": f"scene_{i}",
        "index": i,
        "score": 0.5 * i,
    }


def test_collate_variable_boxes() -> None:
    batch = collate([_scene_item(0, 1), _scene_item(1, 3), _scene_item(2, 0)])
    assert batch["image"].shape == (3, 3, 8, 8) and batch["mask"].shape == (3, 8, 8)
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == [0, 1, 2]
    assert batch["index"].tolist() == [0, 1, 2]
    assert batch["score"].dtype == torch.float32
    assert isinstance(batch["boxes"], list) and [b.shape for b in batch["boxes"]] == [(1, 4), (3, 4), (0, 4)]
    assert [c.numel() for c in batch["classes"]] == [1, 3, 0]
    assert [m.shape[0] for m in batch["masks"]] == [1, 3, 0]
    assert batch["path"] == ["scene_0", "scene_1", "scene_2"]


def test_collate_same_size_boxes_stay_lists_and_ragged_tensors() -> None:
    batch = collate([_scene_item(0, 2), _scene_item(1, 2)])
    assert isinstance(batch["boxes"], list) and len(batch["boxes"]) == 2
    ragged = collate([{"x": torch.zeros(2)}, {"x": torch.zeros(3)}])
    assert isinstance(ragged["x"], list)


def test_collate_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        collate([])
    with pytest.raises(ValueError, match="keys"):
        collate([{"image": torch.zeros(1)}, {"img": torch.zeros(1)}])


def test_collate_in_dataloader() -> None:
    items = [_scene_item(i, i % 3) for i in range(5)]
    batches = list(DataLoader(items, batch_size=2, collate_fn=collate))
    assert [b["image"].shape[0] for b in batches] == [2, 2, 1]
    assert [len(b["boxes"]) for b in batches] == [2, 2, 1]


# --------------------------------------------------------------------------- module hygiene


def test_synthetic_scenes_reexport() -> None:
    scenes = pytest.importorskip("fgcam_lib.data.scenes")
    from fgcam_lib.data import SyntheticScenes

    assert SyntheticScenes is scenes.SyntheticScenes
    assert "SyntheticScenes" in dir(data)
    with pytest.raises(AttributeError):
        data.NoSuchThing  # noqa: B018


def test_import_is_light() -> None:
    code = (
        "import sys, fgcam_lib.data; "
        "print(sorted(m for m in ('matplotlib', 'pandas', 'skimage', 'ipywidgets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_data_modules_list_what_they_define() -> None:
    """One home per name: a module's ``__all__`` holds its own names; the package face gathers them."""
    from fgcam_lib.data import fingerprint, images, imagenet, photos, readers

    for mod in (fingerprint, images, imagenet, photos, readers):
        for name in mod.__all__:
            assert getattr(getattr(mod, name), "__module__", mod.__name__) in (mod.__name__, "typing"), (mod, name)
    assert not [n for n in ("_as_hw", "_resize", "_center_square", "_open_pil", "sample_photos", "ImageNetVal")
                if hasattr(images, n)]  # no old names left behind
    assert data.load_image is readers.load_image and data.ImageNetVal is imagenet.ImageNetVal
    assert data.sample_photos is photos.sample_photos and data.collate is images.collate
    assert set(data.__all__) <= set(dir(data))
