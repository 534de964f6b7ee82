"""Time FG-Grad-CAM on vision transformers against a forward+backward and against LXT.

    python benchmarks/bench_transformers.py                      # vit_b_16 and swin_t, batch 8, 224 px
    python benchmarks/bench_transformers.py --batch 2 --repeats 1 # a quick look

Rows per model (torchvision, random weights; the ViT's zero head made random): a forward
and backward of the target logits to the input with the weights' gradients as training
computes them; FG-Grad-CAM at the input (paper preset: CP-LRP with z+ in the attention);
on ``vit_b_16`` LXT 2.1's CP-LRP (its patches of GELU, LayerNorm and MultiheadAttention,
then gradient x input), the patches applied for that row only. Every row is warmed up once,
then the rows run round-robin ``--repeats`` times; each reports its median and its ratio to
the forward+backward's median in the same run.

Targets (the transformers issue): FG-Grad-CAM at the input <= 1.5x forward+backward on both
models, and no slower than LXT's LRP on ``vit_b_16``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torchvision

from fgcam_lib import FGCAM
from fgcam_lib.evaluation.lxt_oracle import lxt_cp_lrp


def _random_head(model: torch.nn.Module) -> torch.nn.Module:
    if hasattr(model, "heads"):
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model.eval()


def rows_for(name: str, x: torch.Tensor) -> dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    model = _random_head(getattr(torchvision.models, name)())
    target = torch.arange(x.shape[0]) % 10
    fg = FGCAM(model)

    def fwd_bwd() -> None:
        xr = x.clone().requires_grad_(True)
        model.zero_grad(set_to_none=True)
        model(xr).gather(1, target[:, None]).sum().backward()

    def fg_input() -> None:
        fg(x, target=target, layer="input")

    rows = {"forward+backward": fwd_bwd, "FG-Grad-CAM @ input": fg_input}
    if name.startswith("vit"):
        def lxt() -> None:
            with lxt_cp_lrp():
                xr = x.clone().requires_grad_(True)
                model.zero_grad(set_to_none=True)
                model(xr).gather(1, target[:, None]).sum().backward()
                (xr * xr.grad).sum(1)

        rows["LXT CP-LRP @ input"] = lxt
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vit_b_16,swin_t")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.size} px")
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    for name in args.models.split(","):
        rows = rows_for(name, x)
        times: dict[str, list[float]] = {k: [] for k in rows}
        for fn in rows.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for k, fn in rows.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        base = statistics.median(times["forward+backward"])
        print(f"\n{name}")
        for k, ts in times.items():
            med = statistics.median(ts)
            print(f"  {k:24s} {med:8.2f} s  {med / base:5.2f}x")


if __name__ == "__main__":
    main()
