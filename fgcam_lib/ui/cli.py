"""The ``fgcam explain`` and ``fgcam scenes`` commands: explain image files, write benchmark scenes.

    fgcam explain cat.jpg photos/ "more/*.png" --method fg_grad_cam --out explanations   # the real ImageNet network
    fgcam scenes --split test --n 4 --out scenes          # benchmark scenes as tagged PNG files
    fgcam explain scenes/ --layer 13                      # benchmark scenes: the bundled model

``explain`` writes, per image, ``<stem>_<method>_<layer>.png`` (the image, the map over it
with a colourbar, a title naming method, layer, class and probability) and
``<stem>_<method>_<layer>.npy`` (the raw map, float32, at the layer's resolution h x w;
``--upsample`` saves it at the image's own H x W instead), and prints each image's top-5
classes. A missing or unreadable file is reported on one line and the others still run;
the exit status is 1 if any image failed, 2 for a usage error (unknown model, method or
layer, missing weights).

The ``fgcam`` command itself (and ``fgcam evaluate``) is :mod:`fgcam_lib.cli`, which adds these
commands to its parser (:func:`add_commands`) and runs them. In Python:
``from fgcam_lib.cli import main; main(["explain", "cat.jpg", "--out", "out"])``.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch

__all__ = ["add_commands", "run", "explain_files", "expand_images", "write_scenes"]

GLOB_CHARS = set("*?[")


def _at_least_one(text: str) -> int:
    """``--top``'s type: a usage error (exit status 2) below 1, like any bad flag."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_commands(sub: "argparse._SubParsersAction") -> None:
    """Add the ``explain`` and ``scenes`` commands to the ``fgcam`` parser's subcommands."""
    from ..methods.registry import method_names

    ex = sub.add_parser(
        "explain", help="explain image files: an overlay PNG and the raw map (.npy) per image, top-5 classes",
        description="Explain image files with one method at one layer. Writes <stem>_<method>_<layer>.png "
                    "(image, map overlay, colourbar, title) and .npy (the raw map, float32, at the layer's "
                    "resolution h x w, or the image's H x W with --upsample) per image into --out, and prints "
                    "the top-5 classes. A missing or unreadable file is one line; the others still run. "
                    "On 2 CPU cores one image takes about a second with the default network (EfficientNet-Lite0, "
                    "ImageNet, 224 px) or the bundled model and 5-20 s with VGG16-BN (Score-CAM bases: much longer).",
    )
    ex.add_argument("images", nargs="+", metavar="IMAGE",
                    help="image files, folders (every image in them) or quoted globs such as 'photos/*.jpg'")
    ex.add_argument("--model", default=None,
                    help="'efficientnet_lite0' (a real ImageNet network, weights installed offline), "
                         "'bundled' (the 8 benchmark shape classes) or a torchvision classifier such as "
                         "vgg16_bn, resnet50, densenet121 (needs its weights file). Default: bundled when "
                         "every image is a benchmark scene written by `fgcam scenes`, else efficientnet_lite0")
    ex.add_argument("--weights", default=None,
                    help="checkpoint file (default: data/ for bundled, the torch hub cache for torchvision)")
    ex.add_argument("--method", default="fg_grad_cam", choices=method_names(), metavar="METHOD",
                    help=f"one of {', '.join(method_names())} (default: fg_grad_cam)")
    ex.add_argument("--layer", default=None,
                    help="a layer name ('features.13', 'layer3', 'input') or, on VGG, the paper's index "
                         "(13, 23, 33, -1 = input); default: input for FG-CAM and LRP, the last feature "
                         "layer for the CAMs")
    ex.add_argument("--target", type=int, default=None, help="class index to explain (default: each image's top-1)")
    ex.add_argument("--denoise", type=float, default=None,
                    help="FG-CAM's SVD denoising: rank fraction in (0, 1], e.g. 0.1 (FG-CAM methods only)")
    ex.add_argument("--signed", action="store_true", help="keep negative relevance (red/blue map, no final ReLU)")
    ex.add_argument("--upsample", action="store_true",
                    help="save the .npy map at the image's own H x W (bilinear) instead of the layer's h x w")
    ex.add_argument("--out", default="explanations", help="output folder, created if missing (default: explanations)")
    ex.add_argument("--top", type=_at_least_one, default=5, help="how many top classes to print (default: 5)")
    ex.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    sc = sub.add_parser("scenes", help="write benchmark scenes as PNG files (tagged, so explain uses the bundled model)",
                        description="Write scenes of the synthetic benchmark as PNG files <split>_<index>_<class>.png.")
    sc.add_argument("--split", default="test", help="benchmark split: test, loc, pairs, ... (default: test)")
    sc.add_argument("--n", type=int, default=8, help="how many scenes, from index 0 (default: 8)")
    sc.add_argument("--seed", type=int, default=0, help="scene seed (default: 0, the bundled models' test scenes)")
    sc.add_argument("--size", type=int, default=96, help="side in pixels (default: 96, the bundled models' input)")
    sc.add_argument("--out", default="scenes", help="output folder (default: scenes)")


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``explain`` or ``scenes`` command; its exit status."""
    return write_scenes(args) if args.command == "scenes" else explain_files(args)


def _error(message: str) -> None:
    """One line on stderr; multi-line library messages are joined."""
    print("fgcam: " + " ".join(str(message).split()), file=sys.stderr)


def expand_images(specs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files named by ``specs`` (files, folders, globs) and one problem line per spec that names none.

    Example::

        >>> files, problems = expand_images(["cat.jpg", "photos/", "more/*.png"])
    """
    from ..data.readers import image_extensions

    exts = image_extensions()
    files: list[Path] = []
    problems: list[str] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in exts)
            if not found:
                problems.append(f"no image files in folder {spec!r}")
            files += found
        elif not path.exists() and GLOB_CHARS & set(spec):
            found = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
            if not found:
                problems.append(f"no files match {spec!r}")
            files += found
        else:
            files.append(path)  # a missing file is reported when it is read, in order
    return files, problems


def _class_names(model: Any, n: int) -> list[str]:
    names = getattr(model, "categories", None) or (getattr(model, "card", None) or {}).get("classes")
    return list(names) if names and len(names) == n else [str(i) for i in range(n)]


def _layer(spec: str | None, method: str) -> str | None:
    """The layer to explain: the given one, else the input for FG-CAM / LRP and None (the CAM's default)."""
    if spec is not None:
        return spec
    from ..methods.registry import METHODS

    return "input" if METHODS[method].family in ("fgcam", "lrp") else None


@dataclass
class _Job:
    """What every image of one ``explain`` call shares."""

    model: Any
    preprocess: Any
    explainer: Any
    method: str
    layer: Any
    args: argparse.Namespace
    names: list[str] | None = None


def _build(args: argparse.Namespace) -> _Job:
    """Model and explainer; raises ValueError / WeightsNotFoundError with a one-line reason."""
    from ..data.models import load_model
    from ..methods.registry import METHODS, label, make_explainer, method_layers, supports

    extra: dict[str, float] = {}
    if args.denoise is not None:
        if METHODS[args.method].family != "fgcam":
            raise ValueError(f"--denoise applies to FG-CAM methods only, not {args.method!r}")
        extra["denoise"] = args.denoise
    model, preprocess = load_model(args.model, weights=args.weights, device=args.device)
    explainer = make_explainer(args.method, model, preprocess=preprocess, **extra)
    layer = _layer(args.layer, args.method)
    layer = explainer.default_layer if layer is None else layer
    explainer.graph.position(layer)  # an unknown layer fails once, here, with the closest names
    if not supports(args.method, layer, model):
        where = method_layers(args.method, model)
        shown = ", ".join(where[:4]) + (f", ... {where[-1]}" if len(where) > 4 else "")
        raise ValueError(f"{label(args.method)} is not defined at layer {layer!r}; pick one of {shown}")
    return _Job(model, preprocess, explainer, args.method, layer, args)


def _title(job: _Job, cls: int, prob: float) -> str:
    from . import viz
    from ..methods.registry import label

    name = job.names[cls] if job.names else str(cls)
    return f"{label(job.method)} · {viz.layer_label(job.layer)} · class {name} ({cls}), p = {prob:.2f}"


def _save_figure(job: _Job, image: "torch.Tensor", m: "torch.Tensor", title: str, path: Path) -> None:
    """Image | map over the image with its colourbar, under one title."""
    import matplotlib.pyplot as plt

    from . import viz

    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.2), constrained_layout=True)
    try:
        axes[0].imshow(viz.as_image(image))
        axes[0].set_title("image", fontsize=9)
        viz.clean_axes(axes[0])
        viz.show_map(axes[1], m, image, job.args.signed, title="map over the image", colorbar=True)
        fig.suptitle(title, fontsize=10)
        viz.save(fig, path)
    finally:
        plt.close(fig)


def _stem(path: Path, used: set[str]) -> str:
    """The file's stem, made unique within one run (a/cat.png and b/cat.png)."""
    stem, k = path.stem, 2
    while stem in used:
        stem, k = f"{path.stem}_{k}", k + 1
    used.add(stem)
    return stem


def _explain_one(job: _Job, path: Path, out: Path, used: set[str]) -> list[Path]:
    """Explain one file; returns the files written. Raises on an unreadable file."""
    import numpy as np
    import torch

    from ..data.readers import load_image

    image = load_image(path)
    x = job.preprocess(image).to(job.args.device)
    expl = job.explainer.explain(x, job.args.target, [job.layer])
    m = expl.map(job.layer, signed=job.args.signed).detach().float().cpu()
    probs = expl.logits.float().softmax(1)[0].cpu()
    if job.names is None:
        job.names = _class_names(job.model, probs.numel())
    cls = int(expl.target[0])
    top = torch.topk(probs, min(job.args.top, probs.numel()))
    ranked = "  ".join(f"{i + 1}. {job.names[c]} ({c}) {float(p):.3f}" for i, (p, c) in
                       enumerate(zip(top.values.tolist(), top.indices.tolist())))
    print(f"{path}: {ranked}")
    stem = f"{_stem(path, used)}_{job.method}_{str(job.layer).replace('/', '_')}"
    saved = m[0]
    if job.args.upsample:
        from ..methods.base import resize_maps

        saved = resize_maps(m, tuple(image.shape[-2:]))[0]
    npy = out / f"{stem}.npy"
    np.save(npy, saved.numpy().astype(np.float32))
    png = out / f"{stem}.png"
    _save_figure(job, image, m[0], _title(job, cls, float(probs[cls])), png)
    return [png, npy]


def explain_files(args: argparse.Namespace) -> int:
    """``fgcam explain``: the exit status (0 all written, 1 some images failed, 2 nothing could run)."""
    from ..data.models import WeightsNotFoundError

    files, problems = expand_images(args.images)
    for line in problems:
        _error(line)
    if not files:
        _error("no images to explain")
        return 2
    if args.model is None:
        from ..data.scenes import is_scene_file

        args.model = "bundled" if all(is_scene_file(f) for f in files) else "efficientnet_lite0"
        print(f"model: {args.model} " + ("(every image is a benchmark scene)" if args.model == "bundled" else
                                         "(a real ImageNet network; --model bundled for the benchmark's classes)"),
              file=sys.stderr)
    try:
        job = _build(args)
    except (WeightsNotFoundError, FileNotFoundError, ValueError, TypeError) as err:
        _error(err)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    written, failed = 0, len(problems)
    for path in files:
        try:
            _explain_one(job, path, out, used)
            written += 1
        except (FileNotFoundError, ValueError, OSError) as err:
            _error(f"skipped {path}: {err}")
            failed += 1
    print(f"wrote {written} overlay(s) and map(s) to {out}{os.sep}" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


def write_scenes(args: argparse.Namespace) -> int:
    """``fgcam scenes``: benchmark scenes as tagged PNG files; the exit status."""
    from ..data.scenes import SyntheticScenes

    try:
        paths = SyntheticScenes(args.split, args.n, seed=args.seed, size=args.size).save(args.out)
    except (ValueError, OSError) as err:
        _error(err)
        return 2
    print(f"wrote {len(paths)} scene(s) to {Path(args.out)}{os.sep}")
    return 0
