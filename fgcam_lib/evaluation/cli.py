"""``python -m fgcam_lib.evaluation``: the evaluation runner's command line.

    python -m fgcam_lib.evaluation --model bundled --data benchmark:test --num-images 8 --methods grad_cam,fg_grad_cam
    torchrun --nproc-per-node=8 -m fgcam_lib.evaluation --device cuda --model vgg16_bn --data imagenet: --protocol paper

Parses the options, loads the model and the data sets the protocol asks for, runs
:func:`fgcam_lib.evaluation.runner.run_evaluation` on each and prints the summary
(:mod:`fgcam_lib.evaluation.tables`). Under torchrun every rank runs this, computes its
share of the images (:mod:`fgcam_lib.evaluation.distributed`) and rank 0 prints.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from ..catalogue import METRIC_GROUPS
from ..methods.registry import METHODS, PAPER_CAM_METHODS, PAPER_INPUT_METHODS, supports
from .distributed import Ranks, close, from_env, rank_device
from .runner import LOCALIZATION_GROUPS, check_request, run_evaluation
from .store import results_path
from .tables import format_summary, format_table, summarize, table_number, throughput_table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DEFAULT_METRICS", "TIMES", "build_parser", "main"]

#: metric options a run computes unless --metrics says otherwise: the cheap ones
DEFAULT_METRICS: tuple[str, ...] = ("adai", "proportion")

#: measured wall times on 2 CPU cores (bundled model, benchmark:test, all default methods and layers), for --help
TIMES = """measured on 2 CPU cores shared with other jobs (load about 5; bundled model, benchmark:test,
the default methods and layers, wall time including start-up):
  --num-images 8                       112 s (A.D./A.I., Proportion, pointing game)
  --num-images 8 --metrics adai,insdel  17 min (insertion/deletion: 112 model calls per map and curve)
  --num-images 500                      about 1.5 h (estimated from the 8-image rates; the three Score-CAM
                                        methods: 2/3 of it)
Fewer methods run proportionally faster (e.g. --methods grad_cam,fg_grad_cam,lrp). Rows go to
results/ and a rerun resumes, so a larger --num-images only adds images.

Several processes or GPUs: torchrun --nproc-per-node=N -m fgcam_lib.evaluation --num-images ...
(each rank computes every N-th batch and writes its own parts; rank 0 prints the tables)."""


def _split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser(prog: str = "python -m fgcam_lib.evaluation") -> argparse.ArgumentParser:
    """The command line's options (``prog``: the command's name in ``--help``)."""
    from ..data.scenes import SPLITS

    p = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate explanation methods (faithfulness, localization) as in the FG-CAM paper.",
        epilog=TIMES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="bundled",
                   help="'bundled' or a torchvision CNN (vgg16_bn, resnet50, densenet121, efficientnet_b0, ...)")
    p.add_argument("--weights", default=None, help="checkpoint path, or 'random' for an untrained network")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda or cuda:<i>; under torchrun 'cuda' means each rank's own GPU (LOCAL_RANK)")
    p.add_argument("--data", default="benchmark:test",
                   help=f"benchmark:<split> ({', '.join(SPLITS)}), photos (the eight sample photos with "
                        "hand-drawn boxes; photos:cat,coffee for some), imagenet:<val folder> "
                        "(empty folder: FGCAM_IMAGENET_* env vars), or a folder of images")
    p.add_argument("--boxes", default=None, help="ImageNet boxes: XML folder or LOC_val_solution.csv")
    p.add_argument("--synsets", default=None, help="ImageNet LOC_synset_mapping.txt")
    p.add_argument("--scene-seed", type=int, default=None, help="benchmark scene seed (default: the model card's)")
    p.add_argument("--protocol", choices=("custom", "paper"), default="custom",
                   help="paper: faithfulness metrics on 2000 random images, localization on 500 images "
                        "with one box covering <= 50%% of the image")
    p.add_argument("--num-images", "--n", dest="n", type=int, default=None,
                   help="images (default 500; paper protocol: faithfulness images, default 2000). "
                        "Try --num-images 8 first (times below). --n is short for it, but torchrun "
                        "refuses --n (a prefix of its own --nnodes): write --num-images there")
    p.add_argument("--num-loc-images", "--n-loc", dest="n_loc", type=int, default=None,
                   help="paper protocol: localization images (default 500)")
    p.add_argument("--methods", default=",".join(dict.fromkeys(PAPER_CAM_METHODS + PAPER_INPUT_METHODS)),
                   help=f"comma-separated, of {', '.join(METHODS)} (default: the paper's Tables 1-6)")
    p.add_argument("--layers", default=None,
                   help="comma-separated: indices into model.features, layer names or 'input'; "
                        "a method is skipped where it is not defined (a CAM at the input). Default: "
                        "33,23,13,input on VGG; elsewhere the layers at 1/16, 1/8, 1/4 of the input "
                        "(ResNet: layer3,layer2,layer1) and input")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help=f"comma-separated, of {', '.join(METRIC_GROUPS)} (default: {','.join(DEFAULT_METRICS)}, "
                        "the cheap ones; insdel (Tables 2 and 5) and road cost far more, so ask for them explicitly)")
    p.add_argument("--target", choices=("pred", "true"), default="pred",
                   help="class explained: the clean image's top-1 (pred) or the label (true)")
    p.add_argument("--out", default=None,
                   help="results file (.csv) or folder (.parquet); resumes if present. Default: "
                        "results/bench_<data>_<model fingerprint>.parquet, one per data set")
    p.add_argument("--no-save", action="store_true", help="keep the rows in memory only (no --out)")
    p.add_argument("--rows", action="store_true", help="also print the raw rows (one per image, method, layer, metric)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="images per explainer call")
    p.add_argument("--metric-batch-size", type=int, default=None,
                   help="perturbed images per forward pass (default: 64 up to 128 px, 16 above)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast precision of the metrics' forward passes (explanations stay in the model's "
                        "precision); bf16/fp16 are for GPUs, their effect on each metric is in RESULTS.md")
    p.add_argument("--channels-last", action="store_true",
                   help="convert the model to channels-last memory format (faster convolutions on some GPUs)")
    p.add_argument("--channels-last-metrics", action="store_true",
                   help="run the metrics' forward passes on a channels-last copy of the model (explanations "
                        "unchanged): about 2x faster on a CPU for depthwise convs (EfficientNet, MobileNet)")
    p.add_argument("--tie-seeds", default=None,
                   help="e.g. 0,1,2: score each map under these tie-breaking seeds instead (rows in "
                        "results/ties_<data>_<model>.parquet) and print each mean's spread over the seeds")
    p.add_argument("--throughput", action="store_true", help="print images/s per method at the end")
    p.add_argument("--table", default=None,
                   help="print the paper's tables 1-6, e.g. 1,2,3 (default: one summary row per method and layer)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _load_model(args: argparse.Namespace) -> tuple[nn.Module, Any]:
    from ..data.models import load_model

    torch.manual_seed(args.seed)  # a "random" model is then the same on every (resumed) run
    return load_model(args.model, weights=args.weights, device=args.device)


def _datasets(args: argparse.Namespace, model: nn.Module, size: int) -> list[tuple[str, Any, int, list[str]]]:
    """(data name, dataset, n, metric options) for each evaluation the arguments ask for."""
    from ..data.imagenet import ImageNetVal
    from ..data.images import ImageFolderDataset
    from ..data.scenes import SyntheticScenes

    metrics = _split_list(args.metrics)
    paper = args.protocol == "paper"
    n_faith = args.n if args.n is not None else (2000 if paper else 500)
    n_loc = args.n_loc if args.n_loc is not None else (500 if paper else n_faith)
    faith = [m for m in metrics if m not in LOCALIZATION_GROUPS] if paper else metrics
    loc = [m for m in metrics if m in LOCALIZATION_GROUPS] if paper else []
    kind, _, rest = args.data.partition(":")
    if kind == "benchmark":
        card = getattr(model, "card", {}) or {}
        seed = args.scene_seed if args.scene_seed is not None else int(card.get("scene_seed", 0))
        split = rest or "test"
        out = [(f"benchmark:{split}", SyntheticScenes(split, n_faith, seed=seed, size=size), n_faith, faith)]
        if loc:
            out.append(("benchmark:loc", SyntheticScenes("loc", n_loc, seed=seed, size=size), n_loc, loc))
    elif kind == "photos":
        from ..data.photos import PhotoSet

        ds = PhotoSet(size, _split_list(rest) or None)
        out = [("photos", ds, min(n_faith, len(ds)), metrics)]
    elif kind == "imagenet":
        boxes = args.boxes or os.environ.get("FGCAM_IMAGENET_BOXES")
        synsets = args.synsets or os.environ.get("FGCAM_IMAGENET_SYNSETS")
        ds = ImageNetVal(rest, boxes=boxes, synsets=synsets, size=size) if rest else ImageNetVal.from_env(size)
        name = f"imagenet:{Path(rest).name if rest else 'env'}"
        out = [(name, ds.random_subset(n_faith, args.seed) if paper else ds, n_faith, faith)]
        if loc:
            out.append((f"{name}:loc", ds.localization_subset().random_subset(n_loc, args.seed), n_loc, loc))
    else:
        ds = ImageFolderDataset(args.data, size=size)
        dropped = [m for m in metrics if m in LOCALIZATION_GROUPS]
        if dropped:
            print(f"note: {args.data} has no boxes; skipping {', '.join(dropped)}", file=sys.stderr)
        out = [(f"folder:{Path(args.data).name}", ds, n_faith, [m for m in faith if m not in LOCALIZATION_GROUPS])]
    return [o for o in out if o[3]]


def main(argv: Sequence[str] | None = None, prog: str = "python -m fgcam_lib.evaluation") -> int:
    """Command-line entry point; returns the exit status.

    Example:
        >>> main(["--num-images", "8", "--methods", "grad_cam,fg_grad_cam"])     # rows in results/, a summary printed
        0
    """
    args = build_parser(prog).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ranks = from_env(args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.device = rank_device(args.device, ranks)
    try:
        return _run(args, ranks)
    finally:
        close(ranks)


def _run(args: argparse.Namespace, ranks: Ranks) -> int:
    """Everything after the arguments: on every rank; only rank 0 prints notes and tables."""
    import pandas as pd

    from ..data.models import WeightsNotFoundError

    say = print if ranks.main else (lambda *a, **k: None)
    methods = _split_list(args.methods)
    try:
        check_request(methods, _split_list(args.metrics))
        tables = [table_number(t) for t in _split_list(args.table or "")]
        model, preprocess = _load_model(args)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if args.layers is None:
            from ..methods.registry import paper_layers

            layers = [*paper_layers(model, int(getattr(preprocess, "size", 224))), "input"]
        else:
            layers = _split_list(args.layers)
        for layer in layers:  # a typo must stop the run, not skip the layer
            supports(methods[0], layer, model)
        size = int(getattr(preprocess, "size", 224))
        plan = _datasets(args, model, size)
    except (WeightsNotFoundError, FileNotFoundError, ValueError) as err:
        say(f"error: {err}", file=sys.stderr)
        return 2
    skipped = [f"{m}@{l}" for m in methods for l in layers if not supports(m, l, model)]
    if skipped:
        say(f"note: not defined, skipped: {', '.join(skipped)}", file=sys.stderr)
    if ranks.distributed:
        say(f"{ranks.world} ranks: rank r computes batches r, r + {ranks.world}, ... of {args.batch_size} images",
            file=sys.stderr)
    mbs = args.metric_batch_size or (64 if size <= 128 else 16)
    if args.tie_seeds:
        return _ties(args, ranks, model, preprocess, plan, methods, layers, mbs)
    frames, stored = [], []
    for name, ds, n, metrics in plan:
        out = args.out if args.out is not None or args.no_save else results_path(name, model)
        if out is not None:
            say(f"{name}: rows go to {out} (a rerun resumes from there)", file=sys.stderr)
        try:
            frames.append(run_evaluation(model, preprocess, ds, methods, layers, metrics, n=n, out=out,
                                         seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress,
                                         target=args.target, data_name=name, metric_batch_size=mbs,
                                         precision=args.precision, metric_channels_last=args.channels_last_metrics,
                                         ranks=ranks))
        except ValueError as err:
            say(f"error: {err}", file=sys.stderr)
            return 2
        stored.append(out)
    if not ranks.main:
        return 0
    df = pd.concat(frames, ignore_index=True)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 500):
        if args.rows:
            print(df.to_string(index=False))
        if tables:
            for t in tables:
                print(f"\nTable {t}\n{format_table(summarize(df, table=t)).to_string()}")
        else:
            _print_summary(df)
        for (name, *_), out in zip(plan, stored):
            if out is not None:
                print(f"rows of {name}: {out}")
        if args.throughput:
            timing: dict[str, dict[str, float]] = {}
            for f in frames:
                for m, t in f.attrs.get("throughput", {}).items():
                    acc = timing.setdefault(m, {"images": 0, "explain_s": 0.0, "metrics_s": 0.0})
                    for k in acc:
                        acc[k] += t[k]
            print("\nThroughput (images/s; this run's computed images)\n" + throughput_table(timing).to_string())
    return 0


def _ties(args: argparse.Namespace, ranks: Ranks, model: nn.Module, preprocess: Any, plan: list, methods: list[str],
          layers: list[str], mbs: int) -> int:
    """``--tie-seeds``: the same maps under several tie seeds, and the spread of each mean."""
    import pandas as pd

    from .ties import tie_rows, tie_spread

    if ranks.distributed:
        print("error: --tie-seeds runs in one process; start it without torchrun", file=sys.stderr)
        return 2
    seeds = [int(s) for s in _split_list(args.tie_seeds)]
    for name, ds, n, metrics in plan:
        out = None if args.no_save else (args.out or results_path(name, model, prefix="ties"))
        if out is not None:
            print(f"{name}: rows go to {out} (a rerun resumes from there)", file=sys.stderr)
        rows = tie_rows(model, preprocess, ds, methods, layers, metrics, seeds=seeds, n=n, out=out,
                        batch_size=args.batch_size, metric_batch_size=mbs, data_name=name,
                        progress=not args.no_progress)
        with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 500):
            print(f"\n{name}: means over {rows['image_id'].nunique()} images under tie seeds {seeds}, and their spread")
            print(tie_spread(rows).round(4).to_string())
    return 0


def _print_summary(df: "pd.DataFrame") -> None:
    """One row per (data,) method and layer, one column per metric: ``mean ± half-width``."""
    summary = summarize(df)
    images = df.groupby("data")["image_id"].nunique()
    sizes = ", ".join(f"{n} {d}" for d, n in images.items())
    print(f"\nmean ± half-width of the 95% bootstrap CI over images ({sizes}); A.D./A.I. in %")
    print(format_summary(summary, rows=list(summary.index.names[:-1])).to_string())


if __name__ == "__main__":
    sys.exit(main())
