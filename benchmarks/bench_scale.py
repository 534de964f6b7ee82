"""Throughput at scale: the metric loops against the model's own forward speed, FG-Grad-CAM batched
against the authors' per-image loop, metric precision, and a projected time for the paper's protocol.

    python benchmarks/bench_scale.py insdel                         # (a) CPU; CUDA too when present
    python benchmarks/bench_scale.py authors --authors-repo PATH    # (b) a temporary copy of dongmo-qcq/FG-CAM
    python benchmarks/bench_scale.py precision --n 16               # bf16/fp16 metrics against fp32
    python benchmarks/bench_scale.py project                        # (c) the paper's Tables 1-6 on VGG16-BN
    python benchmarks/bench_scale.py all --json out.json

Every ratio compares two timings taken in the same run, interleaved, medians of ``--repeats``
(on a machine shared with other work wall-clock times move; their ratios much less).

(a) ``insdel``: insertion/deletion's forward passes per second (``2 (n_steps + 1)`` per map,
at ``--metric-batch`` images per pass) over a plain ``model(x)`` at the same batch size; the
target is >= 0.9 on a GPU. (b) ``authors``: images/s of ``FGCAM(model)(x, layer="input")`` on a
batch, and one image at a time, over the authors' ``FG_CAM(model, "grad_cam")`` looped over the
same images; their repository is copied to a temporary folder and imported from there, never
vendored; the maps are compared too. (c) ``project``: forward passes and explainer calls the
paper's protocol needs (2000 images for Tables 1, 2, 4, 5; 500 for 3 and 6), times the rates
measured here, on 1 and N devices.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision

from fgcam_lib import FGCAM
from fgcam_lib.evaluation import metrics as M
from fgcam_lib.evaluation.metrics.insertion_deletion import default_step
from fgcam_lib.evaluation.scoring import PRECISIONS, at_precision


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _medians(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per callable: one warm-up each, then round-robin ``repeats`` times."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _vgg(device: torch.device, size_classes: int = 1000) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg16_bn(num_classes=size_classes).eval().to(device)


def _model(name: str, device: torch.device) -> tuple[torch.nn.Module, int]:
    """(model, input size): ``bundled`` at its 96 px, else a torchvision model (random weights) at 224."""
    if name == "bundled":
        from fgcam_lib.data.models import load_model

        model, pre = load_model("bundled", device=str(device))
        return model, int(pre.size)
    torch.manual_seed(0)
    return getattr(torchvision.models, name)().eval().to(device), 224


# ------------------------------------------------------------------ (a) insertion/deletion
def bench_insdel(device: torch.device, model_name: str, images: int, metric_batch: int, repeats: int,
                 precision: str = "fp32") -> dict[str, Any]:
    """Insertion/deletion forward passes per second over plain forward passes at the same batch size."""
    model, size = _model(model_name, device)
    fast = at_precision(model, precision)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(images, 3, size, size, generator=g).to(device)
    maps = torch.rand(images, size // 8, size // 8, generator=g).to(device)
    plain = torch.rand(metric_batch, 3, size, size, generator=g).to(device)
    n_steps = -(-size * size // default_step(size, size))
    passes = images * 2 * (n_steps + 1)

    def forward() -> None:
        with torch.inference_mode():
            fast(plain)

    def insdel() -> None:
        M.insertion_deletion(fast, x, maps, batch_size=metric_batch)

    t = _medians({"forward": forward, "insdel": insdel}, repeats, device)
    fwd_rate, ins_rate = metric_batch / t["forward"], passes / t["insdel"]
    return {"bench": "insdel", "device": _device_name(device), "model": model_name, "size": size,
            "precision": precision, "metric_batch": metric_batch, "images": images, "passes": passes,
            "forward_images_per_s": fwd_rate, "insdel_passes_per_s": ins_rate, "ratio": ins_rate / fwd_rate}


# ---------------------------------------------------------------- (b) the authors' loop
def _authors_fgcam(repo: Path, workdir: Path, state: dict[str, torch.Tensor], device: torch.device):
    """The authors' VGG16-BN with ``state`` loaded and their ``FG_CAM``, imported from a copy of ``repo``."""
    copy = workdir / "fgcam_authors"
    if (repo / "FG_CAM.py").is_file():
        shutil.copytree(repo, copy, ignore=shutil.ignore_patterns("images", "results", "pics", ".git"))
    else:  # a bare clone: export its files
        copy.mkdir()
        files = subprocess.run(["git", "--git-dir", str(repo), "archive", "HEAD", "FG_CAM.py", "models"],
                               check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(copy)], input=files, check=True)
    sys.path.insert(0, str(copy))
    try:
        from FG_CAM import FG_CAM  # noqa: N811 - their names
        from models.vgg import vgg16_bn
    finally:
        sys.path.remove(str(copy))
    theirs = vgg16_bn(pretrained=False)
    theirs.load_state_dict(state)
    theirs = theirs.eval().to(device)
    return theirs, FG_CAM(theirs, "grad_cam")


def bench_authors(device: torch.device, repo: Path, batch: int, size: int, repeats: int) -> dict[str, Any]:
    """FG-Grad-CAM at the input: ours batched and one at a time, against the authors' per-image loop."""
    model = _vgg(device)
    with tempfile.TemporaryDirectory() as tmp:
        theirs, fg_theirs = _authors_fgcam(repo, Path(tmp), model.state_dict(), device)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, size, size, generator=g).to(device)
        with torch.no_grad():
            target = model(x).argmax(1)
        ours = FGCAM(model)

        def batched() -> torch.Tensor:
            return ours(x, target=target, layer="input")

        def one_by_one() -> list[torch.Tensor]:
            return [ours(x[i:i + 1], target=target[i:i + 1], layer="input") for i in range(batch)]

        def authors() -> list[torch.Tensor]:
            out = []
            for i in range(batch):
                xi = x[i:i + 1].clone().requires_grad_(True)
                out.append(fg_theirs(xi, False, -1, int(target[i]))[0].detach())
                theirs.zero_grad(set_to_none=True)
            return out

        t = _medians({"batched": batched, "one_by_one": one_by_one, "authors": authors}, repeats, device)
        a, b = torch.cat(authors()), batched()
        scale = float(a.abs().max())
        agree = float((a - b).abs().max()) / scale if scale > 0 else float("nan")
    return {"bench": "authors", "device": _device_name(device), "model": "vgg16_bn (random weights)",
            "size": size, "batch": batch, "seconds": t,
            "speedup_batched": t["authors"] / t["batched"], "speedup_batch1": t["authors"] / t["one_by_one"],
            "max_abs_diff_over_max": agree}


# ------------------------------------------------------------------------- precision
def bench_precision(device: torch.device, n: int, methods: list[str], precisions: list[str]) -> dict[str, Any]:
    """Mean and largest |metric(precision) - metric(fp32)| per metric on ``n`` benchmark test scenes."""
    from fgcam_lib.data.models import load_model
    from fgcam_lib.data.scenes import SyntheticScenes
    from fgcam_lib.evaluation.runner import run_evaluation

    model, pre = load_model("bundled", device=str(device))
    data = SyntheticScenes("test", n, size=pre.size, seed=int(model.card.get("scene_seed", 0)))
    frames = {}
    for p in ["fp32", *precisions]:
        t0 = time.perf_counter()
        df = run_evaluation(model, pre, data, methods, ["13", "input"], ["adai", "insdel"], n=n, progress=False,
                            data_name="benchmark:test", precision=p)
        frames[p] = (df.set_index(["image_id", "method", "layer", "metric"])["value"], time.perf_counter() - t0)
    ref = frames["fp32"][0]
    out: dict[str, Any] = {"bench": "precision", "device": _device_name(device), "images": n, "methods": methods,
                           "seconds": {p: s for p, (_, s) in frames.items()}, "diff": {}}
    for p in precisions:
        d = (frames[p][0] - ref).abs().groupby(level="metric")
        out["diff"][p] = {m: {"mean": float(v.mean()), "max": float(v.max())} for m, v in d}
    return out


# --------------------------------------------------------------------- (c) projection
#: the paper's protocol: (images, methods, layers) per faithfulness table, and the localization one
PROTOCOL = {"faith_images": 2000, "loc_images": 500, "cam_methods": 7, "cam_layers": 3, "input_methods": 7}
#: masked passes per image for the Score-CAM family on VGG16-BN: Score-CAM's channels at layers 33/23/13,
#: and the 512 channels of layer 43 for FG-Score-CAM with and without denoising (one call per image each)
SCORE_CAM_MASKS = (512 + 256 + 128) + 2 * 512


def bench_project(device: torch.device, batch: int, metric_batch: int, repeats: int, gpus: int) -> dict[str, Any]:
    """Projected hours for Tables 1-6 on VGG16-BN at 224 px from measured rates on ``device``.

    Per image: the explainers (one FG-Grad-CAM call at all layers as the cost of a CAM-family
    map, measured), and per map 1 forward pass for A.D./A.I. and 226 for insertion/deletion
    (2 x 113 steps). The Score-CAM family's masked passes (:data:`SCORE_CAM_MASKS` per image)
    are counted as forward passes. Localization needs the maps only.
    """
    model = _vgg(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, generator=g).to(device)
    xm = torch.randn(metric_batch, 3, 224, 224, generator=g).to(device)
    fg = FGCAM(model)

    def forward() -> None:
        with torch.inference_mode():
            model(xm)

    def explain() -> None:
        fg(x, layer=["input", 13, 23, 33])

    t = _medians({"forward": forward, "explain": explain}, repeats, device)
    per_pass, per_explain = t["forward"] / metric_batch, t["explain"] / batch
    p = PROTOCOL
    maps = p["faith_images"] * (p["cam_methods"] * p["cam_layers"] + p["input_methods"])
    passes = maps * (1 + 226) + p["faith_images"] * SCORE_CAM_MASKS
    explains = (p["faith_images"] + p["loc_images"]) * 10  # ten methods, each one call per image
    seconds = passes * per_pass + explains * per_explain
    return {"bench": "project", "device": _device_name(device), "forward_passes": passes,
            "explainer_calls": explains, "s_per_forward": per_pass, "s_per_explain": per_explain,
            "hours_1": seconds / 3600, f"hours_{gpus}": seconds / 3600 / gpus}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("insdel", "authors", "precision", "project", "all"))
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cpu, and cuda too when present)")
    ap.add_argument("--model", default="bundled", help="insdel: 'bundled' (96 px) or a torchvision model (224 px)")
    ap.add_argument("--images", type=int, default=4, help="insdel: images (maps) per call")
    ap.add_argument("--metric-batch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8, help="authors / project: images per explainer call")
    ap.add_argument("--size", type=int, default=224, help="authors: input size")
    ap.add_argument("--authors-repo", type=Path, default=None, help="a checkout (or bare clone) of dongmo-qcq/FG-CAM")
    ap.add_argument("--n", type=int, default=16, help="precision: benchmark scenes")
    ap.add_argument("--methods", default="grad_cam,fg_grad_cam,lrp", help="precision: methods")
    ap.add_argument("--precisions", default=None, help="precision: default bf16 (and fp16 on CUDA)")
    ap.add_argument("--gpus", type=int, default=8, help="project: the N of 'with N GPUs'")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="append the results to this JSON-lines file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device(args.device)] if args.device else \
        [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = []
    for dev in devices:
        todo = ("insdel", "authors", "precision", "project") if args.what == "all" else (args.what,)
        for what in todo:
            if what == "insdel":
                for p in ["fp32"] + (["bf16"] if dev.type == "cuda" else []):
                    results.append(bench_insdel(dev, args.model, args.images, args.metric_batch, args.repeats, p))
            elif what == "authors":
                if args.authors_repo is None:
                    print("authors: skipped (give --authors-repo, a checkout of dongmo-qcq/FG-CAM)", file=sys.stderr)
                    continue
                results.append(bench_authors(dev, args.authors_repo, args.batch, args.size, args.repeats))
            elif what == "precision":
                precs = args.precisions.split(",") if args.precisions else \
                    (["bf16", "fp16"] if dev.type == "cuda" else ["bf16"])
                results.append(bench_precision(dev, args.n, args.methods.split(","), precs))
            else:
                results.append(bench_project(dev, args.batch, args.metric_batch, args.repeats, args.gpus))
            print(json.dumps(results[-1], indent=1), flush=True)
            if args.json is not None:
                with open(args.json, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(results[-1]) + "\n")


if __name__ == "__main__":
    main()
