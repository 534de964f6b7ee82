"""Time the explainers against a plain forward+backward on torchvision models.

    python benchmarks/bench_explain.py                                   # all four models, batch 1 and 16
    python benchmarks/bench_explain.py --models resnet50 --batches 16 --repeats 3 --memory
    python benchmarks/bench_explain.py --size 64 --batches 1,2 --repeats 1 # quick check

Models: VGG16-BN, ResNet-50, DenseNet-121, EfficientNet-B0 (torchvision, random weights:
timing does not depend on them). Rows per model and batch: forward+backward, our
Grad-CAM (at the explainer's default component layer), pytorch-grad-cam's GradCAM,
FG-Grad-CAM at the input, FG-Grad-CAM at four layers in one call, our LRP at the input,
and on ResNet-50 zennit's LRP (EpsilonPlus + ResNetCanonizer via
``zennit.attribution.Gradient``, the canonizer context included in the time).

Timing: every row is warmed up once, then the rows run round-robin ``--repeats`` times
(so a slow spell on a shared machine hits all rows alike); each row reports its median
and the ratio of that median to forward+backward's median in the same run, on the same
model and batch. Two more ratios help on a machine shared with other work: of the fastest
runs (contention only ever adds time), and on CPU of process CPU times (all threads; with
``--threads 1`` they ignore time spent descheduled, with more threads spin-waits inflate them).
On a loaded machine ``--threads 1`` gives the steadiest ratios: with several threads one
descheduled thread stalls the others at every barrier.

``--channels-last`` converts the model and the input to channels-last for every row,
forward+backward included, so the ratios compare like with like.

``--memory`` adds each row's peak memory: one call in a fresh subprocess (model and
explainer built first); on CPU the peak RSS during the call minus the RSS before it
(``VmHWM`` from ``/proc/self/status``, reset before the call), on CUDA
``torch.cuda.max_memory_allocated`` minus the memory allocated before the call.

``--models efficientnet_lite0 --batches 1 --rows fg_input`` times the real ImageNet network the
explorer and ``fgcam explain`` use (target: FG-Grad-CAM at the input <= 1.0x its forward+backward
at batch 1). ``--models timm`` times three timm models of different families (random weights, BatchNorm
statistics like a trained network's): ``python benchmarks/bench_explain.py --models timm --batches 8
--rows fg_4 --threads 2``.

Targets: FG-Grad-CAM at four layers in one call <= 1.5x forward+backward at batch 16 on
ResNet-50 and DenseNet-121, and at batch 8 on the timm models; our LRP faster than zennit's on ResNet-50; VGG16-BN's
four-layer ratio no worse than the README's 1.01 at batch 16. With ``--score-cam-batches``
(VGG16-BN only; 512 masked forward passes per image): FG-Score-CAM <= 1.1x its Score-CAM
weights.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torchvision

from fgcam_lib import FGCAM, LRP, GradCAM
from fgcam_lib.methods.cam import score_cam_weights
from fgcam_lib.engine.walk import forward

#: the four layers FG-Grad-CAM explains in one call, per model
FOUR_LAYERS: dict[str, list] = {
    "vgg16_bn": [-1, 13, 23, 33],
    "resnet50": ["input", "layer1", "layer2", "layer3"],
    "densenet121": ["input", "features.denseblock1", "features.denseblock2", "features.denseblock3"],
    "efficientnet_b0": ["input", "features.2", "features.4", "features.6"],
}
MODELS = list(FOUR_LAYERS)

#: pytorch-grad-cam's target layer: the module whose output is our component layer (DenseNet's
#: component layer is the functional ReLU after ``features``; its nearest module is ``features``)
PGC_LAYER: dict[str, Callable[[torch.nn.Module], torch.nn.Module]] = {
    "vgg16_bn": lambda m: m.features[43],
    "resnet50": lambda m: m.layer4,
    "densenet121": lambda m: m.features,
    "efficientnet_b0": lambda m: m.features,
}

#: the VGG16-BN numbers in the README (batch 16, 224 x 224) this benchmark must not fall behind
README_VGG16_B16 = {"gradcam": 0.30, "pgc": 0.78, "fg_input": 0.92, "fg_4": 1.01}

LABELS = {
    "fwd_bwd": "forward+backward",
    "gradcam": "Grad-CAM (ours, {layer})",
    "pgc": "Grad-CAM (pytorch-grad-cam)",
    "fg_input": "FG-Grad-CAM, input",
    "fg_4": "FG-Grad-CAM, 4 layers in one call",
    "lrp": "LRP (ours, input)",
    "zennit": "LRP (zennit EpsilonPlus + ResNetCanonizer)",
    "score_w": "Score-CAM weights (paper variant)",
    "fg_score": "FG-Score-CAM, input",
}
#: rows that run once after a warm-up, outside the round-robin (Score-CAM: minutes each)
SINGLE_SHOT = {"score_w", "fg_score"}


@dataclass
class Result:
    model: str
    batch: int
    device: str
    key: str
    label: str
    seconds: float
    ratio: float
    times: list[float] = field(default_factory=list)
    cpu_ratio: float | None = None
    min_ratio: float | None = None
    peak_mib: float | None = None
    peak_note: str = ""


#: timm models of three families the issue on real networks names (``--models timm``): fused
#: BatchNormAct2d (functional batch_norm), squeeze-excitation, cross-stage partial stages
TIMM_MODELS = ["timm:efficientnet_b0", "timm:regnety_008", "timm:cspresnet50"]


def four_layers(name: str, fg: FGCAM, x: torch.Tensor) -> list:
    """The four layers FG-Grad-CAM explains in one call: the table above, else (timm) the input
    and the three stages below the component layer at the deepest resolutions."""
    if name in FOUR_LAYERS:
        return FOUR_LAYERS[name]
    from fgcam_lib.evaluation.zoo import stages_below

    return ["input"] + stages_below(fg, x)[:3]


def build_model(name: str, device: torch.device, channels_last: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    from fgcam_lib.data.imagenet_models import IMAGENET_MODELS

    if name in IMAGENET_MODELS:  # a real ImageNet network whose weights install offline
        from fgcam_lib import load_model

        model = load_model(name)[0].to(device)
    elif name.startswith("timm:"):
        import timm

        from fgcam_lib.evaluation.zoo import trained_like_bn

        model = trained_like_bn(timm.create_model(name[5:])).eval().to(device)
    else:
        model = getattr(torchvision.models, name)().eval().to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def make_input(batch: int, size: int, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    x = torch.randn(batch, 3, size, size, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_rows(name: str, model: torch.nn.Module, x: torch.Tensor, device: torch.device,
               score_cam: bool, only: set[str] | None = None) -> dict[str, tuple[str, Callable[[], object]]]:
    """``{row key: (label, zero-argument callable)}`` in table order. Explainers are built
    here, once, as a user would; per-call costs (binding rules, planning) stay in the time."""
    rows: dict[str, tuple[str, Callable[[], object]]] = {}

    def want(key: str) -> bool:
        return only is None or key in only or key == "fwd_bwd"

    def fwd_bwd():
        xg = x.clone().requires_grad_(True)
        out = model(xg)
        out.max(1).values.sum().backward()
        model.zero_grad(set_to_none=True)

    rows["fwd_bwd"] = (LABELS["fwd_bwd"], fwd_bwd)
    fg = FGCAM(model)
    if want("gradcam"):
        gradcam = GradCAM(model)
        rows["gradcam"] = (LABELS["gradcam"].format(layer=fg.component_layer), lambda: gradcam(x))
    if want("pgc") and name in PGC_LAYER:
        try:
            from pytorch_grad_cam import GradCAM as PGCGradCAM

            target_layer = PGC_LAYER[name](model)

            def pgc():
                # hooks registered and released per call: left on, they would slow every other row
                with PGCGradCAM(model=model, target_layers=[target_layer]) as cam:
                    return cam(input_tensor=x, targets=None)

            rows["pgc"] = (LABELS["pgc"], pgc)
        except ImportError:
            print("pytorch-grad-cam not installed: its row is skipped", file=sys.stderr)
    if want("fg_input"):
        rows["fg_input"] = (LABELS["fg_input"], lambda: fg(x, layer="input"))
    if want("fg_4"):
        layers = four_layers(name, fg, x)
        rows["fg_4"] = (LABELS["fg_4"], lambda: fg(x, layer=layers))
    if want("lrp"):
        lrp = LRP(model)
        rows["lrp"] = (LABELS["lrp"], lambda: lrp(x, layer="input"))
    if name == "resnet50" and want("zennit"):
        try:
            from zennit.attribution import Gradient
            from zennit.composites import EpsilonPlus
            from zennit.torchvision import ResNetCanonizer

            def target_logit(out: torch.Tensor) -> torch.Tensor:  # R = y_t at the top class, as ours
                return out * torch.nn.functional.one_hot(out.argmax(1), out.shape[1]).to(out)

            def zennit_lrp():
                composite = EpsilonPlus(canonizers=[ResNetCanonizer()])
                with Gradient(model=model, composite=composite) as attributor:
                    _, relevance = attributor(x, target_logit)
                return relevance.sum(1)

            rows["zennit"] = (LABELS["zennit"], zennit_lrp)
        except ImportError:
            print("zennit not installed: its row is skipped", file=sys.stderr)
    if score_cam and name == "vgg16_bn" and (want("score_w") or want("fg_score")):
        fgs = FGCAM(model, base="score_cam", batch_size=32)
        target = torch.zeros(x.shape[0], dtype=torch.long, device=device)

        def weights():
            with torch.no_grad():
                A = forward(fg.graph, x, keep=[fg.component_position]).acts[fg.component_position]
                return score_cam_weights(lambda z: model(z), x, A, target, "paper", 32)

        rows["score_w"] = (LABELS["score_w"], weights)
        rows["fg_score"] = (LABELS["fg_score"], lambda: fgs(x, target=0, layer="input"))
    return rows


def time_rows(rows: dict[str, tuple[str, Callable[[], object]]], repeats: int,
              device: torch.device) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """One warm-up per row, then ``repeats`` round-robin passes over the rows (single-shot rows:
    one timed run each, after the round-robin). Returns wall-clock and process CPU times."""

    def run(fn: Callable[[], object]) -> tuple[float, float]:
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        return time.perf_counter() - t0, time.process_time() - c0

    wall: dict[str, list[float]] = {k: [] for k in rows}
    cpu: dict[str, list[float]] = {k: [] for k in rows}

    def record(k: str) -> None:
        w, c = run(rows[k][1])
        wall[k].append(w)
        cpu[k].append(c)

    many = [k for k in rows if k not in SINGLE_SHOT]
    for k in many:
        run(rows[k][1])
    for _ in range(repeats):
        for k in many:
            record(k)
    for k in rows:
        if k in SINGLE_SHOT:
            run(rows[k][1])
            record(k)
    return wall, cpu


# -- peak memory: one call in a fresh process ----------------------------------------------------

def _vm(field_name: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field_name)


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(spec: str, size: int, device: torch.device, score_cam: bool, channels_last: bool = False) -> None:
    name, batch, key = spec.split(":")
    model = build_model(name, device, channels_last)
    x = make_input(int(batch), size, device, channels_last)
    rows = build_rows(name, model, x, device, score_cam, only={key})
    fn = rows[key][1]
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        print(json.dumps({"peak": torch.cuda.max_memory_allocated(device) - base, "note": ""}))
        return
    # Not ru_maxrss: Linux carries the parent's RSS at fork into the child's ru_maxrss across
    # exec. VmHWM is the peak of this process's own memory map, and can be reset.
    exact = _reset_peak_rss()
    hwm_before, rss_before = _vm("VmHWM"), _vm("VmRSS")
    fn()
    hwm_after = _vm("VmHWM")
    if exact or hwm_after > hwm_before:
        print(json.dumps({"peak": hwm_after - rss_before, "note": ""}))
    else:  # the call stayed under an earlier high-water mark
        print(json.dumps({"peak": hwm_before - rss_before, "note": "<="}))


def measure_memory(name: str, batch: int, key: str, args, device: torch.device) -> tuple[float | None, str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", f"{name}:{batch}:{key}",
           "--size", str(args.size), "--device", device.type]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.channels_last:
        cmd += ["--channels-last"]
    if args.score_cam_batches:
        cmd += ["--score-cam-batches", *map(str, args.score_cam_batches)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"memory run {name}:{batch}:{key} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None, "failed"
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return got["peak"] / 2**20, got["note"]


# -- report --------------------------------------------------------------------------------------

def bench(name: str, batch: int, args, device: torch.device) -> list[Result]:
    model = build_model(name, device, args.channels_last)
    x = make_input(batch, args.size, device, args.channels_last)
    score_cam = batch in args.score_cam_batches
    only = set(args.rows) if args.rows else None
    rows = build_rows(name, model, x, device, score_cam, only)
    times, cpu = time_rows(rows, args.repeats, device)
    base, cpu_base = statistics.median(times["fwd_bwd"]), statistics.median(cpu["fwd_bwd"])
    out = []
    for k, (label, _) in rows.items():
        med = statistics.median(times[k])
        cpu_ratio = statistics.median(cpu[k]) / cpu_base if device.type == "cpu" and cpu_base > 0 else None
        out.append(Result(name, batch, device.type, k, label, med, med / base, times[k], cpu_ratio,
                          min(times[k]) / min(times["fwd_bwd"])))
    del rows, model, x
    gc.collect()
    if args.memory:
        for r in out:
            r.peak_mib, r.peak_note = measure_memory(name, batch, r.key, args, device)
    return out


def table(results: list[Result], memory: bool) -> str:
    head = ("| model | batch | device | row | median s | x fwd+bwd | x fwd+bwd (fastest) | x fwd+bwd (CPU time) |"
            + (" peak MiB |" if memory else ""))
    sep = "|---|---|---|---|---|---|---|---|" + ("---|" if memory else "")
    lines = [head, sep]
    for r in results:
        cpu = "-" if r.cpu_ratio is None else f"{r.cpu_ratio:.2f}"
        line = (f"| {r.model} | {r.batch} | {r.device} | {r.label} | {r.seconds:.3f} | {r.ratio:.2f} | "
                f"{r.min_ratio:.2f} | {cpu} |")
        if memory:
            peak = "-" if r.peak_mib is None else f"{r.peak_note}{r.peak_mib:.0f}"
            line += f" {peak} |"
        lines.append(line)
    return "\n".join(lines)


def targets(results: list[Result]) -> list[str]:
    by = {(r.model, r.batch, r.device, r.key): r for r in results}
    devices = sorted({r.device for r in results})
    lines = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for dev in devices:
        for name in ("resnet50", "densenet121"):
            r = by.get((name, 16, dev, "fg_4"))
            if r is None:
                lines.append(f"- [{dev}] FG-Grad-CAM 4 layers <= 1.5x fwd+bwd, {name} batch 16: not measured")
            else:
                lines.append(f"- [{dev}] FG-Grad-CAM 4 layers <= 1.5x fwd+bwd, {name} batch 16: "
                             f"{verdict(r.ratio <= 1.5)} ({r.ratio:.2f}x; fastest runs {r.min_ratio:.2f}x)")
        zb = sorted(b for (m, b, d, k) in by if m == "resnet50" and d == dev and k == "zennit")
        if not zb:
            lines.append(f"- [{dev}] LRP faster than zennit's, resnet50: not measured")
        for b in zb:
            ours, theirs = by.get(("resnet50", b, dev, "lrp")), by[("resnet50", b, dev, "zennit")]
            if ours is None:
                continue
            lines.append(f"- [{dev}] LRP faster than zennit's, resnet50 batch {b}: {verdict(ours.seconds < theirs.seconds)} "
                         f"(ours {ours.ratio:.2f}x, zennit {theirs.ratio:.2f}x fwd+bwd; "
                         f"{ours.seconds:.3f} s vs {theirs.seconds:.3f} s)")
        r = by.get(("efficientnet_lite0", 1, dev, "fg_input"))
        if r is not None:
            lines.append(f"- [{dev}] FG-Grad-CAM at the input <= 1.0x fwd+bwd, efficientnet_lite0 batch 1: "
                         f"{verdict(r.ratio <= 1.0)} ({r.ratio:.2f}x; fastest runs {r.min_ratio:.2f}x)")
        for (m, b, d, k), r in by.items():
            if m.startswith("timm:") and k == "fg_4" and d == dev:
                lines.append(f"- [{dev}] FG-Grad-CAM 4 layers <= 1.5x fwd+bwd, {m} batch {b}: "
                             f"{verdict(r.ratio <= 1.5)} ({r.ratio:.2f}x; fastest runs {r.min_ratio:.2f}x)")
        r = by.get(("vgg16_bn", 16, dev, "fg_4"))
        if r is None:
            lines.append(f"- [{dev}] VGG16-BN no worse than README (4 layers 1.01x at batch 16): not measured")
        else:
            others = ", ".join(
                f"{LABELS[k].split(' (')[0] if k != 'pgc' else 'pytorch-grad-cam'} {by[('vgg16_bn', 16, dev, k)].ratio:.2f} (README {v:.2f})"
                for k, v in README_VGG16_B16.items() if k != "fg_4" and ("vgg16_bn", 16, dev, k) in by)
            lines.append(f"- [{dev}] VGG16-BN 4 layers <= 1.01x fwd+bwd at batch 16: {verdict(r.ratio <= 1.01)} "
                         f"({r.ratio:.2f}x, fastest runs {r.min_ratio:.2f}x; {others})")
        for (m, b, d, k), r in by.items():
            if k == "fg_score" and d == dev and (m, b, d, "score_w") in by:
                ratio = r.seconds / by[(m, b, d, "score_w")].seconds
                lines.append(f"- [{dev}] FG-Score-CAM <= 1.1x Score-CAM weights, {m} batch {b}: "
                             f"{verdict(ratio <= 1.1)} ({ratio:.3f}x)")
    return lines


def _list(kind):
    def parse(s: str):
        return [kind(v) for v in s.split(",") if v]
    return parse


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=_list(str), default=MODELS,
                    help="comma-separated, from " + ",".join(MODELS) + ", timm:NAME, or timm (" + ",".join(TIMM_MODELS) + ")")
    ap.add_argument("--batches", type=_list(int), nargs="+", default=[[1, 16]], help="e.g. 1,16 (or 1 16)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None,
                    help="default: cpu, and cuda too when present")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--channels-last", action="store_true",
                    help="model and input in channels-last memory format, for every row")
    ap.add_argument("--memory", action="store_true", help="peak memory per row (one fresh subprocess per row)")
    ap.add_argument("--rows", type=_list(str), default=None,
                    help="only these rows (forward+backward always runs): " + ",".join(LABELS))
    ap.add_argument("--score-cam-batches", type=_list(int), nargs="*", default=[],
                    help="batch sizes at which to time Score-CAM on VGG16-BN (512 masked forwards per image)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.batches = [b for group in args.batches for b in group]
    args.score_cam_batches = [b for group in args.score_cam_batches for b in (group if isinstance(group, list) else [group])]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._child:
        _child(args._child, args.size, torch.device(args.device or "cpu"), bool(args.score_cam_batches),
               args.channels_last)
        return
    args.models = [m for group in args.models for m in (TIMM_MODELS if group == "timm" else [group])]
    unknown = [m for m in args.models if m not in FOUR_LAYERS and not m.startswith("timm:") and m != "efficientnet_lite0"]
    if unknown:
        ap.error(f"unknown models {unknown}; use {','.join(MODELS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{os.cpu_count()} CPUs; {args.size}x{args.size}, {args.repeats} repeats"
          + (", channels-last" if args.channels_last else ""), flush=True)
    results: list[Result] = []
    for dev in devices:
        device = torch.device(dev)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        for name in args.models:
            for b in args.batches:
                t0 = time.perf_counter()
                got = bench(name, b, args, device)
                results += got
                print(f"\n{name}, batch {b}, {where} ({time.perf_counter() - t0:.0f} s)", flush=True)
                for r in got:
                    times = " ".join(f"{t:.3f}" for t in r.times)
                    mem = "" if r.peak_mib is None else f"  peak {r.peak_note}{r.peak_mib:.0f} MiB"
                    cpu = "" if r.cpu_ratio is None else f" (CPU time {r.cpu_ratio:.2f}x)"
                    print(f"  {r.label:44s} {r.seconds:9.3f} s {r.ratio:6.2f}x{cpu}  [{times}]{mem}", flush=True)
    print()
    print(table(results, args.memory))
    print()
    print("Targets:")
    for line in targets(results):
        print(line)


if __name__ == "__main__":
    main()
