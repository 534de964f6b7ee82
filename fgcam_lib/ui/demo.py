"""The main job: explain a handful of benchmark scenes offline and write comparison figures.

    python -m fgcam_lib.ui.demo [--n-single 3] [--n-pairs 2] [--out figures]

Grad-CAM, Layer-CAM and FG-Grad-CAM (with and without denoising) at layers 33, 23, 13 and
the input on the bundled model; for two-object scenes, FG-Grad-CAM for each object's class.
Then the eight real photos with the real ImageNet network (EfficientNet-Lite0, weights installed
offline): demo_photos_layer.png and demo_photos_input.png.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..data.models import load_model
from ..methods.registry import make_explainer, supports

LAYERS = [33, 23, 13, "input"]
#: registry names, in the rows' order; the figures label them from the catalogue
METHODS = ("grad_cam", "layer_cam", "fg_grad_cam", "fg_grad_cam_denoise")


def explain_all(model, x: torch.Tensor, target=None, preprocess=None, layers=LAYERS) -> dict[str, dict]:
    """method name -> {layer: B x h x w}; CAMs skip the input layer (undefined there)."""
    out = {}
    for name in METHODS:
        here = [layer for layer in layers if supports(name, layer)]
        out[name] = make_explainer(name, model, preprocess)(x, target=target, layer=here)
    return out


def real_photos(out: Path) -> list[Path]:
    """The eight real photos explained by the real ImageNet network (EfficientNet-Lite0): every
    method at its middle stage, FG-Grad-CAM at the input, each photo's hand-drawn box outlined."""
    from . import viz
    from ..data.imagenet_models import class_label
    from ..data.photos import photo_boxes, sample_photos
    from ..methods.registry import paper_layers

    try:
        model, pre = load_model("efficientnet_lite0")
    except ImportError as err:
        print(f"(skipping the real-photo part: {err})")
        return []
    photos, names, _ = sample_photos(size=pre.size)
    x = pre.normalize(photos)
    with torch.no_grad():
        probs = model(x).softmax(1)
    top = probs.argmax(1).tolist()
    stages = paper_layers(model, pre.size)
    print("EfficientNet-Lite0 (ImageNet) on the real photos: " + "; ".join(
        f"{n} -> {class_label(c)} {float(probs[i, c]):.2f}" for i, (n, c) in enumerate(zip(names, top))))
    t0 = time.time()
    maps = explain_all(model, x, preprocess=pre, layers=stages + ["input"])
    print(f"explained {len(x)} photos with 4 methods at {', '.join(stages)} and the input in {time.time() - t0:.1f} s")
    titles = [f"{n}\n{class_label(c)}" for n, c in zip(names, top)]
    boxes = photo_boxes(pre.size)
    mid = stages[len(stages) // 2]
    written = []
    fig = viz.grid(photos, maps, layout="images", layer=mid, image_titles=titles, boxes=boxes,
                   title=f"EfficientNet-Lite0 (ImageNet), layer {mid}\nboxes drawn by hand")
    written.append(viz.save(fig, out / "demo_photos_layer.png"))
    fig = viz.grid(photos, {k: v for k, v in maps.items() if "input" in v}, layout="images", layer="input",
                   image_titles=titles, boxes=boxes,
                   title="EfficientNet-Lite0 (ImageNet), input\nboxes drawn by hand")
    written.append(viz.save(fig, out / "demo_photos_input.png"))
    return written


def describe(logits: torch.Tensor, classes: list[str], truth: list[str]) -> list[str]:
    p = logits.softmax(1)
    top = p.topk(2, dim=1)
    lines = []
    for i in range(len(p)):
        guess = ", ".join(f"{classes[c]} {v:.2f}" for v, c in zip(top.values[i].tolist(), top.indices[i].tolist()))
        lines.append(f"  scene {i}: truth {truth[i]:<16s} top-2: {guess}")
    return lines


def run(n_single: int = 3, n_pairs: int = 2, out: str | Path = "figures", seed: int = 0) -> list[Path]:
    from . import viz
    from ..data.scenes import SyntheticScenes

    torch.manual_seed(seed)
    out = Path(out)
    written: list[Path] = []
    model, pre = load_model("bundled")
    classes = list(model.card["classes"])
    single = SyntheticScenes("test", n=n_single, seed=seed, size=pre.size)
    pairs = SyntheticScenes("pairs", n=n_pairs, seed=seed, size=pre.size)
    items = [single[i] for i in range(n_single)] + [pairs[i] for i in range(n_pairs)]
    images = torch.stack([it["image"] for it in items])
    x = pre(images)
    with torch.no_grad():
        logits = model(x)
    truth = ["+".join(classes[c] for c in it["classes"].tolist()) for it in items]
    print(f"bundled model ({model.card.get('input_size')}px, {len(classes)} classes): predictions")
    print("\n".join(describe(logits, classes, truth)))

    t0 = time.time()
    maps = explain_all(model, x, preprocess=pre)
    print(f"explained {len(x)} scenes with 4 methods at layers 33, 23, 13 (+ the input for FG-CAM) "
          f"in {time.time() - t0:.1f} s")
    titles = [f"{t}" for t in truth]
    for i in range(len(x)):
        fig = viz.grid(images, maps, layout="layers", image_index=i, title=f"Scene {i}: {truth[i]} (predicted {classes[logits[i].argmax()]})")
        written.append(viz.save(fig, out / f"demo_scene{i}.png"))
    fig = viz.grid(images, maps, layout="images", layer=13, image_titles=titles, title="Layer 13 (features.13)")
    written.append(viz.save(fig, out / "demo_layer13.png"))
    fig = viz.grid(images, {k: v for k, v in maps.items() if "input" in v}, layout="images", layer="input",
                   image_titles=titles, title="Input layer")
    written.append(viz.save(fig, out / "demo_input.png"))

    # class discrimination on two-object scenes: one map per object class
    fg = make_explainer("fg_grad_cam_denoise", model, pre)
    px = x[n_single:]
    per_class = {}
    for k, which in enumerate(("first", "second")):
        tgt = [int(it["classes"][k]) for it in items[n_single:]]
        per_class[f"explaining the {which}\nclass of the row"] = fg(px, target=tgt, layer="input")
    pair_titles = truth[n_single:]
    fig = viz.grid(images[n_single:], per_class, layout="images", image_titles=pair_titles,
                   title="FG-Grad-CAM (denoising) at the input, one map per object's class\n"
                         "(where the other object lights up too, the map is not class-specific)")
    written.append(viz.save(fig, out / "demo_pairs.png"))

    written += real_photos(out)
    for p in written:
        print(f"wrote {p}")
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-single", type=int, default=3)
    ap.add_argument("--n-pairs", type=int, default=2)
    ap.add_argument("--out", default="figures")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    run(a.n_single, a.n_pairs, a.out, a.seed)


if __name__ == "__main__":
    main()
