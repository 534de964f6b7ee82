"""Inputs a user may pass: each one is supported or stopped by a one-line error saying what to do.

Image inputs go through :func:`fgcam_lib.data.readers.to_batch` (and the model's preprocess);
tensors go to the explainers, which cast dtypes, work under ``no_grad`` / ``inference_mode``,
and refuse empty batches, NaN/Inf, [0, 255] pixels and a non-bool ``signed``.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fgcam_lib import FGCAM, LRP, Epsilon, GradCAM, ZPlus, paper
from fgcam_lib.data.readers import to_batch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def x(images: torch.Tensor) -> torch.Tensor:
    """Two normalised-looking images (standard normal values) for the 64 px tiny VGG."""
    return images[:2]


@pytest.fixture()
def photo(tmp_path) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)


def _png(path, arr: np.ndarray):
    Image.fromarray(arr).save(path)
    return path


# --------------------------------------------------------------------------- image inputs


def test_list_of_paths(tmp_path, photo):
    a = _png(tmp_path / "a.png", photo)
    b = _png(tmp_path / "b.png", photo[::-1].copy())
    batch = to_batch([a, str(b)])
    assert batch.shape == (2, 3, 20, 30) and batch.dtype == torch.float32
    assert torch.allclose(batch[0], torch.from_numpy(photo).permute(2, 0, 1).float() / 255)


def test_list_of_different_sizes_needs_size(tmp_path, photo):
    a = _png(tmp_path / "a.png", photo)
    b = _png(tmp_path / "b.png", photo[:10])
    with pytest.raises(ValueError, match="different sizes.*pass size="):
        to_batch([a, b])
    assert to_batch([a, b], size=16).shape == (2, 3, 16, 16)


def test_missing_file_in_a_list(tmp_path, photo):
    with pytest.raises(FileNotFoundError, match="gone.png"):
        to_batch([_png(tmp_path / "a.png", photo), tmp_path / "gone.png"])


def test_grey_2d_array(photo):
    grey = photo[..., 0]
    batch = to_batch(grey)
    assert batch.shape == (1, 3, 20, 30)
    assert torch.equal(batch[0, 0], batch[0, 2]) and torch.allclose(batch[0, 0], torch.from_numpy(grey).float() / 255)


def test_rgba_array_drops_alpha(photo):
    rgba = np.concatenate([photo, np.full(photo.shape[:2] + (1,), 7, np.uint8)], axis=2)
    assert torch.equal(to_batch(rgba), to_batch(photo))


def test_chw_numpy_array_is_detected(photo):
    hwc = photo.astype(np.float32) / 255
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    assert to_batch(chw).shape == (1, 3, 20, 30)
    assert torch.equal(to_batch(chw), to_batch(hwc))


def test_hwc_tensor_and_batches(photo):
    t = torch.from_numpy(photo)
    assert torch.equal(to_batch(t), to_batch(photo))                         # H x W x C tensor
    assert torch.equal(to_batch(t.permute(2, 0, 1)), to_batch(photo))        # C x H x W tensor
    assert to_batch(np.stack([photo, photo])).shape == (2, 3, 20, 30)        # B x H x W x C array


def test_float64_and_half_pixels_become_float32(photo):
    x64 = torch.from_numpy(photo).permute(2, 0, 1).double() / 255
    assert to_batch(x64).dtype == torch.float32
    assert to_batch(x64.half()).dtype == torch.float32


def test_pil_image(photo):
    assert torch.equal(to_batch(Image.fromarray(photo)), to_batch(photo))


@pytest.mark.parametrize("bad, match", [
    (torch.rand(3, 8, 8) * 255, r"divide by 255"),
    (torch.randn(3, 8, 8) * 2, r"already normalised.*explainer directly"),
    (torch.full((3, 8, 8), float("nan")), r"NaN or infinite"),
    (torch.zeros(0, 3, 8, 8), r"empty"),
    ([], r"empty list"),
    (np.array(["a.png", "b.png"]), r"list"),
    (np.zeros((5, 8, 8)), r"C = 1, 3 or 4"),
    (12, r"expected a path"),
])
def test_image_input_errors(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        to_batch(bad)


def _preprocess_takes_arrays() -> bool:
    from fgcam_lib.data.models import Preprocess

    try:
        Preprocess(8)(np.zeros((8, 8), np.float32))
        return True
    except Exception:
        return False


needs_to_batch = pytest.mark.skipif(not _preprocess_takes_arrays(),
                                    reason="Preprocess.to_tensor does not read inputs with to_batch yet")


@needs_to_batch
def test_preprocess_reads_every_image_input(tmp_path, photo):
    from fgcam_lib.data.models import Preprocess

    pre = Preprocess(16)
    a = _png(tmp_path / "a.png", photo)
    chw = np.ascontiguousarray(photo.transpose(2, 0, 1))
    assert pre([a, a]).shape == (2, 3, 16, 16)
    for arr in (photo[..., 0], np.concatenate([photo, photo[..., :1]], axis=2), chw):
        assert pre(arr).shape == (1, 3, 16, 16)
    assert torch.allclose(pre(chw), pre(photo))
    with pytest.raises(ValueError, match="divide by 255"):
        pre(torch.rand(1, 3, 16, 16) * 255)


# --------------------------------------------------------------------------- explainer inputs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_input_dtype_is_cast_to_the_model(tiny_vgg, x, dtype):
    fg = FGCAM(tiny_vgg)
    ref = fg(x, layer=13)
    got = fg(x.to(dtype), layer=13)
    assert got.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float64 else 5e-2
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * float(ref.abs().max()))


def test_float64_model_takes_float32_input(tiny_vgg, x):
    model = copy.deepcopy(tiny_vgg).double()
    maps = GradCAM(model)(x, layer="features.33")
    assert maps.dtype == torch.float64 and maps.shape == (2, 4, 4)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_calls_inside_no_grad_and_inference_mode(tiny_vgg, x, context):
    fg, cam = FGCAM(tiny_vgg), GradCAM(tiny_vgg)
    ref_fg, ref_cam = fg(x, layer="input"), cam(x)
    with context():
        got_fg, got_cam = fg(x, layer="input"), cam(x)
    torch.testing.assert_close(got_fg, ref_fg)
    torch.testing.assert_close(got_cam, ref_cam)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_inputs_are_refused(tiny_vgg, x, value):
    bad = x.clone()
    bad[0, 1, 2, 3] = value
    with pytest.raises(ValueError, match="1 NaN or infinite value"):
        FGCAM(tiny_vgg)(bad, layer="input")


def test_pixels_in_0_255_are_refused_but_normalised_input_passes(tiny_vgg, x):
    cam = GradCAM(tiny_vgg)
    with pytest.raises(ValueError, match=r"\[0, 255\].*preprocess"):
        cam(torch.rand(1, 3, 64, 64) * 255)
    from fgcam_lib.data.models import Preprocess

    with pytest.raises(ValueError, match=r"float pixels must lie in \[0, 1\]"):
        Preprocess(64)(torch.rand(1, 3, 64, 64) * 255)        # preprocess refuses [0, 255] floats
    with pytest.raises(ValueError, match=r"were \[0, 255\] pixels normalised as \[0, 1\]"):
        cam((torch.rand(1, 3, 64, 64) * 255 - 0.45) / 0.225)   # normalised by hand as if in [0, 1]
    cam(x * 3)                        # normalised inputs, even wide ones: no false alarm
    cam(x * 8)                        # and far wider ones (about [-35, 35])
    cam(torch.rand(1, 3, 64, 64))     # un-normalised [0, 1] pixels: the model's business
    cam.check_pixel_range = False     # a model that really takes [0, 255]
    assert cam(torch.rand(1, 3, 64, 64) * 255).shape == (1, 2, 2)


@pytest.mark.parametrize("make", [FGCAM, GradCAM, LRP])
def test_empty_batch(tiny_vgg, x, make):
    with pytest.raises(ValueError, match="empty batch.*at least one image"):
        make(tiny_vgg)(x[:0])


@pytest.mark.parametrize("rules, match", [
    ({"conv": "zplus"}, r"not 'zplus'.*use ZPlus\(\)"),
    ({"conv": "epsilon"}, r"use Epsilon\(\)"),
    ({"conv": ZPlus}, r"instantiate it: ZPlus\(\)"),
    ({"linear": Epsilon}, r"instantiate it: Epsilon\(\)"),
])
def test_rules_as_strings_or_classes_fail_at_construction(tiny_vgg, rules, match):
    for make in (FGCAM, LRP):
        with pytest.raises(TypeError, match=match):
            make(tiny_vgg, rules=rules)
    with pytest.raises(TypeError, match=match):
        FGCAM(tiny_vgg, rules=paper().with_rules(rules))


@pytest.mark.parametrize("signed", ["yes", 1, None, "False"])
def test_signed_must_be_a_bool(tiny_vgg, x, signed):
    with pytest.raises(TypeError, match="signed must be True or False"):
        FGCAM(tiny_vgg)(x, layer="input", signed=signed)


def test_numpy_bool_signed_is_fine(tiny_vgg, x):
    fg = FGCAM(tiny_vgg)
    torch.testing.assert_close(fg(x, layer="input", signed=np.bool_(True)), fg(x, layer="input", signed=True))


# --------------------------------------------------------------------------- outputs


def test_upsample_to_the_input(tiny_vgg, x):
    cam = GradCAM(tiny_vgg)
    small = cam(x, layer="features.23")
    assert small.shape == (2, 8, 8)                                      # default: unchanged
    big = cam(x, layer="features.23", upsample=True)
    assert big.shape == (2, 64, 64)
    ref = F.interpolate(small[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(big, ref)
    assert bool((big >= 0).all())


def test_upsample_sizes_and_many_layers(tiny_vgg, x):
    fg = FGCAM(tiny_vgg)
    many = fg(x, layer=[13, "input"], upsample=(32, 48))
    assert {k: tuple(v.shape) for k, v in many.items()} == {13: (2, 32, 48), "input": (2, 32, 48)}
    assert fg(x, layer="input", upsample=True).shape == (2, 64, 64)
    expl = fg.explain(x, layer=13)
    assert expl.map(13, upsample=True).shape == (2, 64, 64)
    assert expl.map(13, upsample=20).shape == (2, 20, 20)
    with pytest.raises(TypeError, match="upsample must be"):
        fg(x, layer=13, upsample="input")


def test_explanation_repr_is_short(tiny_vgg, images):
    expl = FGCAM(tiny_vgg).explain(torch.cat([images] * 3), layer=[13, 23, 33, "input", 6, 43])
    text = repr(expl)
    assert len(text) < 400, text
    assert text.startswith("Explanation(target=[") and "(9 images)" in text
    assert "13: 9x" in text and "'input': 9x3x64x64" in text and "(6 layers)" in text and "weights=9x" in text
    top = expl.top_classes(3)
    assert len(top) == 9 and abs(sum(p for _, p in top[0]) - 1) < 1 and top[0][0][0] == int(expl.target[0])
