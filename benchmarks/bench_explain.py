"""Time the explainers against a plain forward+backward on torchvision VGG16-BN.

    python benchmarks/bench_explain.py                      # batch 1 and 16, CPU (+ CUDA if present)
    python benchmarks/bench_explain.py --batches 1 --size 224 --repeats 3

Random weights (timing does not depend on them). Each row is the median of
``--repeats`` runs after one warm-up, and its ratio to forward+backward measured in the
same run. Targets: FG-Grad-CAM for four layers <= 3x forward+backward at batch 16;
FG-Score-CAM <= 1.1x its Score-CAM weights.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torchvision

from fgcam_lib import FGCAM, GradCAM
from fgcam_lib.methods.cam import score_cam_weights
from fgcam_lib.engine.walk import forward

PAPER_LAYERS = [-1, 13, 23, 33]


def timeit(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run()  # warm-up
    return statistics.median(run() for _ in range(repeats))


def bench(batch: int, size: int, repeats: int, device: torch.device, score_cam: bool) -> list[tuple[str, float, float]]:
    torch.manual_seed(0)
    model = torchvision.models.vgg16_bn().eval().to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    rows: list[tuple[str, float]] = []

    def fwd_bwd():
        xg = x.clone().requires_grad_(True)
        out = model(xg)
        out.max(1).values.sum().backward()
        model.zero_grad(set_to_none=True)

    rows.append(("forward+backward", timeit(fwd_bwd, repeats, device)))
    rows.append(("Grad-CAM (ours, features.43)", timeit(lambda: GradCAM(model)(x), repeats, device)))
    try:
        from pytorch_grad_cam import GradCAM as PGCGradCAM

        pgc = PGCGradCAM(model=model, target_layers=[model.features[43]])
        rows.append(("Grad-CAM (pytorch-grad-cam)", timeit(lambda: pgc(input_tensor=x, targets=None), repeats, device)))
        pgc.activations_and_grads.release()
    except ImportError:
        pass
    fg = FGCAM(model)
    rows.append(("FG-Grad-CAM, input", timeit(lambda: fg(x, layer="input"), repeats, device)))
    rows.append(("FG-Grad-CAM, 4 layers in one call", timeit(lambda: fg(x, layer=PAPER_LAYERS), repeats, device)))
    if score_cam:
        fgs = FGCAM(model, base="score_cam", batch_size=32)
        with torch.no_grad():
            A = forward(fg.graph, x, keep=[fg.component_position]).acts[fg.component_position]
        logits_fn = lambda z: model(z)  # noqa: E731
        target = torch.zeros(batch, dtype=torch.long, device=device)
        with torch.no_grad():
            t_w = timeit(lambda: score_cam_weights(logits_fn, x, A, target, "paper", 32), 1, device)
        rows.append(("Score-CAM weights (paper variant)", t_w))
        rows.append(("FG-Score-CAM, input", timeit(lambda: fgs(x, target=0, layer="input"), 1, device)))
    base = rows[0][1]
    return [(name, t, t / base) for name, t in rows]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--score-cam-batches", type=int, nargs="*", default=[1],
                    help="batch sizes at which to time Score-CAM (512 masked forwards per image)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: both when CUDA is present)")
    args = ap.parse_args(argv)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for dev in devices:
        device = torch.device(dev)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        for b in args.batches:
            print(f"\nvgg16_bn, {args.size}x{args.size}, batch {b}, {name}")
            print(f"{'':38s} {'seconds':>9s} {'x fwd+bwd':>10s}")
            for row, t, r in bench(b, args.size, args.repeats, device, b in args.score_cam_batches):
                print(f"{row:38s} {t:9.3f} {r:10.2f}")


if __name__ == "__main__":
    main()
