"""The three sanity checks of :mod:`fgcam_lib.evaluation.sanity` on any model, as three short tables.

    python -m fgcam_lib.evaluation.sanity_report --model bundled_resnet      # tables printed, rows in results/

Notebook 08 tells the story on the bundled VGG; this runs the same checks on any model (layers
at the paper's resolutions, :func:`fgcam_lib.methods.registry.paper_layers`): a bundled model on
the benchmark's scenes, a real ImageNet network (``--model efficientnet_lite0``) on the real
photos, with pairs of photos side by side as its two-object images:

- **randomisation**: the mean Spearman (|map|) to the original map once every linear layer is
  re-initialised, and once the last conv stage is too, with the verdict of
  :func:`~fgcam_lib.evaluation.sanity.randomization_verdict` (threshold 0.5);
- **class sensitivity**: on two-object scenes, the share of each class's map on its own
  object minus on the other one (``gap``), class-discriminative when its CI is above 0;
- **weight ablation**: Spearman (|map|) between FG-Grad-CAM and the same propagation of
  uniform CAM weights, beside the runner-up class's FG-Grad-CAM map as a yardstick.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from . import sanity as S
from ..data.fingerprint import model_fingerprint
from ..engine.graph import graph_of
from ..engine.walk import blank_shapes
from ..methods.registry import make_explainer, paper_layers
from .batch import load_batch

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["stage_groups", "sanity_tables", "main"]


def stage_groups(model: nn.Module, size: int = 224, shapes: dict[int, Any] | None = None) -> list[list[str]]:
    """Randomisation groups, top-down: each linear layer, then one group per conv stage, a stage
    being the convs (with their BatchNorms) whose outputs have the same resolution for a ``size``
    px input. On a VGG these are the convs between two pools; on a ResNet ``layer4``, ``layer3``,
    ..., the stem; on an EfficientNet the blocks between two strided convs.

    Example:
        >>> [g[0] for g in stage_groups(torchvision.models.resnet18())][:3]
        ['fc', 'layer4.1.conv2', 'layer3.1.conv2']
    """
    groups = S.randomization_groups(model, by="conv")
    linear = [g for g in groups if isinstance(model.get_submodule(g[0]), nn.Linear)]
    graph = graph_of(model)
    shapes = blank_shapes(model, graph, size) if shapes is None else shapes
    names = {n.name: i for i, n in enumerate(graph.nodes)}
    stages: dict[tuple[int, ...], list[str]] = {}
    for g in groups[len(linear):]:  # deep to shallow, so the coarsest resolution comes first
        node = names.get(g[-1], names.get(f"{g[0]}.conv2d"))   # the BN after the conv, else the conv
        side = tuple(int(v) for v in shapes[node][-2:]) if node is not None else (-1, -1)
        stages.setdefault(side, []).extend(g)
    return linear + list(stages.values())


def _sanity_data(model: nn.Module, size: int, n_images: int, n_pairs: int,
                 data: str) -> tuple[Any, Any, tuple[str, str]]:
    """(images, two-object images, what each is): benchmark scenes for a model of the benchmark's
    classes, the real photos and photo pairs otherwise (``data="auto"``)."""
    from ..data.scenes import CLASSES, SyntheticScenes

    card = getattr(model, "card", {}) or {}
    if data == "auto":
        data = "benchmark" if list(card.get("classes", [])) == list(CLASSES) else "photos"
    if data == "benchmark":
        seed = int(card.get("scene_seed", 0))
        return (SyntheticScenes("test", n_images, seed=seed, size=size),
                SyntheticScenes("pairs", n_pairs, seed=seed, size=size), ("test scenes", "two-object scenes"))
    if data == "photos":
        from ..data.photos import PhotoPairs, PhotoSet

        return PhotoSet(size), PhotoPairs(size, n=n_pairs), ("real photos", "pairs of photos side by side")
    raise ValueError(f"unknown data {data!r}; use 'auto', 'benchmark' or 'photos'")


def sanity_tables(model: nn.Module, preprocess: Any, n_images: int = 12, n_pairs: int = 24, n_ablation: int = 24,
                  seed: int = 0, threshold: float = 0.5, data: str = "auto") -> dict[str, "pd.DataFrame"]:
    """``{"randomization", "class_sensitivity", "weight_ablation"}`` tables for ``model`` (see the module doc).

    ``data``: ``"benchmark"`` (test scenes, two-object scenes), ``"photos"`` (the real photos,
    at most 8, and pairs of them side by side with each photo's square as its mask) or
    ``"auto"``: the benchmark for a model of the benchmark's classes, the photos otherwise.
    ``df.attrs["data"]`` says which, ``df.attrs["n"]`` how many images each table used.
    """
    import pandas as pd

    torch.manual_seed(seed)
    size = int(getattr(preprocess, "size", 96))
    shapes = blank_shapes(model, graph_of(model), size)   # one blank forward serves both layer lookups
    layers = paper_layers(model, size, shapes)
    finest = layers[-1]
    images, two, what = _sanity_data(model, size, max(n_images, n_ablation), n_pairs, data)
    test = load_batch(images, preprocess)
    n_images, n_ablation = min(n_images, len(test.x)), min(n_ablation, len(test.x))
    groups = stage_groups(model, size, shapes)
    n_linear = sum(isinstance(model.get_submodule(g[0]), nn.Linear) for g in groups)
    pairs = [("grad_cam", finest), ("layer_cam", finest), ("fg_grad_cam", finest), ("lrp", finest),
             ("fg_grad_cam", "input"), ("lrp", "input"), ("clrp", "input"), ("sglrp", "input")]
    signed = {m: True for m in ("fg_grad_cam", "lrp", "clrp", "sglrp")}
    casc = S.cascading(model, preprocess, test.x[:n_images], None, pairs, groups[:n_linear + 1], seed=seed,
                       signed=signed)
    summary = S.summarize_values(casc, ["method", "layer", "step"], ["spearman_abs"], seed=seed)
    rand = pd.concat({"linear layers random": S.randomization_verdict(summary, n_linear, threshold=threshold),
                      "+ last stage random": S.randomization_verdict(summary, n_linear + 1, threshold=threshold)},
                     axis=1)

    pairs_b = load_batch(two, preprocess)
    classes, masks = torch.stack(pairs_b.classes), torch.stack(pairs_b.masks)
    frames = []
    for name, layer in [("grad_cam", finest), ("layer_cam", finest), ("fg_grad_cam", finest),
                        ("fg_grad_cam", "input"), ("lrp", "input"), ("clrp", "input"), ("sglrp", "input")]:
        cs = S.class_sensitivity(make_explainer(name, model, preprocess=preprocess), pairs_b.x, classes, masks,
                                 layer=layer, signed=layer == "input")
        frames.append(cs.assign(method=name, layer=str(layer)))
    cs_sum = S.summarize_values(pd.concat(frames, ignore_index=True), ["method", "layer"], ["own", "other", "gap"],
                                seed=seed)
    cs_table = cs_sum[["own", "other", "gap", "gap_low", "gap_high"]].assign(
        discriminative=["yes" if lo > 0 else ("no" if hi <= 0 else "unclear")
                        for lo, hi in zip(cs_sum["gap_low"], cs_sum["gap_high"])])

    abl = S.weight_ablation(model, preprocess, test.x[:n_ablation], [*layers, "input"], modes=("ones",), seed=seed)
    abl_sum = S.summarize_values(abl, ["variant", "layer"], ["spearman_abs"], seed=seed)
    abl_table = abl_sum["spearman_abs"].unstack("layer")[[str(l) for l in [*layers, "input"]]]
    tables = {"randomization": rand, "class_sensitivity": cs_table, "weight_ablation": abl_table}
    for t, n, d in zip(tables.values(), (n_images, len(pairs_b.x), n_ablation), (what[0], what[1], what[0])):
        t.attrs.update(data=d, n=n)
    return tables


def main(argv: Sequence[str] | None = None) -> int:
    import pandas as pd

    from ..data.models import WeightsNotFoundError, load_model

    p = argparse.ArgumentParser(prog="python -m fgcam_lib.evaluation.sanity_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bundled")
    p.add_argument("--data", choices=("auto", "benchmark", "photos"), default="auto",
                   help="auto: benchmark scenes for a bundled model, the real photos (and pairs of them) otherwise")
    p.add_argument("--n-images", type=int, default=12, help="test images for the randomisation (photos: at most 8)")
    p.add_argument("--n-pairs", type=int, default=24, help="two-object images for class sensitivity")
    p.add_argument("--n-ablation", type=int, default=24, help="test images for the weight ablation (photos: at most 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="results", help="folder for sanity_<table>_<model fingerprint>.csv")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, pre = load_model(args.model)
    except (WeightsNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tables = sanity_tables(model, pre, args.n_images, args.n_pairs, args.n_ablation, args.seed, data=args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        for name, t in tables.items():
            path = out / f"sanity_{name}_{model_fingerprint(model)}.csv"
            t.to_csv(path)
            print(f"\n{name} ({args.model}, {t.attrs['data']}, n = {t.attrs['n']}; {path})\n{t.round(3).to_string()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
