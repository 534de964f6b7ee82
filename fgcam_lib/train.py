"""Train the bundled benchmark model on synthetic scenes.

    python -m fgcam_lib.train --help
    python -m fgcam_lib.train --tiny --out /tmp/tiny.pt         # seconds, for tests

Recipe (see TRAINING.md): VGG16-BN layout at 1/8 width, 128 x 128 inputs, AdamW with a
one-cycle schedule, a mix of single-object scenes (one-hot targets) and two-object scenes
(0.5 / 0.5 soft targets), random flips. Scenes are generated once into a uint8 tensor.
Writes ``<out>`` (state dict + card) and ``<out>.json`` (the card: architecture, data,
recipe, measured held-out accuracies).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import BUNDLED_CHECKPOINT, IMAGENET_MEAN, IMAGENET_STD, BundledVGG, scaled_cfg
from .scenes import CLASSES, SyntheticScenes


def log(msg: str) -> None:
    """Print with a wall-clock stamp (flushed, for log files)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def normalise(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
              ) -> torch.Tensor:
    """B x 3 x H x W uint8 -> float, scaled to [0, 1] and normalised per channel."""
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - m) / s


def soft_targets(classes: torch.Tensor, n_classes: int) -> torch.Tensor:
    """B x N class indices -> B x n_classes targets with mass 1/N on each present class."""
    t = torch.zeros(classes.shape[0], n_classes)
    t.scatter_add_(1, classes, torch.full(classes.shape, 1.0 / classes.shape[1]))
    return t


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch: int = 200, device: str = "cpu",
            channels_last: bool = False) -> torch.Tensor:
    """Logits for B x 3 x H x W uint8 images -> B x n_classes (model put in eval mode)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = normalise(images[i:i + batch].to(device))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model(x).float().cpu())
    return torch.cat(out)


def top1_accuracy(logits: torch.Tensor, classes: torch.Tensor) -> float:
    """Share of scenes whose top-1 class is the first object's class (classes: B x N)."""
    return float((logits.argmax(1) == classes[:, 0]).float().mean())


def pairs_top2(logits: torch.Tensor, classes: torch.Tensor) -> float:
    """Share of two-object scenes whose both classes are the model's top-2 (classes: B x 2)."""
    top2 = logits.topk(2, dim=1).indices
    hit = (top2.unsqueeze(2) == classes.unsqueeze(1)).any(1).all(1)
    return float(hit.float().mean())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fgcam_lib.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--width-div", type=int, default=8, help="divide VGG16 channel widths by this")
    p.add_argument("--size", type=int, default=128, help="input side in pixels")
    p.add_argument("--n-train", type=int, default=20000, help="single-object training scenes")
    p.add_argument("--n-train-pairs", type=int, default=6000, help="two-object training scenes (soft targets)")
    p.add_argument("--n-val", type=int, default=300, help="held-out scenes evaluated every epoch")
    p.add_argument("--n-test", type=int, default=1000, help="'test' scenes for the final accuracy")
    p.add_argument("--n-pairs", type=int, default=500, help="'pairs' scenes for the final top-2 metric")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (one-cycle)")
    p.add_argument("--wd", type=float, default=5e-4, help="AdamW weight decay")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0, help="torch seed and scene seed")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=BUNDLED_CHECKPOINT, help="checkpoint path (.pt); card = .json")
    p.add_argument("--ckpt-dir", type=Path, default=None, help="per-epoch checkpoints (default: <out>.epochs/)")
    p.add_argument("--resume", type=Path, default=None, help="per-epoch checkpoint to continue from")
    p.add_argument("--tiny", action="store_true", help="tiny run for tests: a few scenes, one epoch, 32 px")
    args = p.parse_args(argv)
    if args.tiny:
        args.size, args.n_train, args.n_train_pairs, args.n_val = 32, 64, 32, 16
        args.n_test, args.n_pairs, args.epochs, args.batch, args.width_div = 32, 16, 1, 32, 16
    return args


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run one training job as described by ``args``; returns the card (also written to disk)."""
    t_start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = args.device
    channels_last = device == "cpu"
    n_cls = len(CLASSES)

    log(f"generating {args.n_train} + {args.n_train_pairs} training scenes at {args.size}px")
    x1, c1 = SyntheticScenes("train", args.n_train, args.seed, args.size).to_tensors()
    x2, c2 = SyntheticScenes("train_pairs", args.n_train_pairs, args.seed, args.size).to_tensors()
    images = torch.cat([x1, x2])
    targets = torch.cat([soft_targets(c1, n_cls), soft_targets(c2, n_cls)])
    del x1, x2
    val_x, val_c = SyntheticScenes("val", args.n_val, args.seed, args.size).to_tensors()
    log(f"scenes ready in {time.time() - t_start:.0f}s: {tuple(images.shape)}")

    cfg = scaled_cfg(args.width_div)
    model = BundledVGG(cfg, n_classes=n_cls, dropout=args.dropout).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
    steps_per_epoch = math.ceil(len(images) / args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=0.15, div_factor=20, final_div_factor=200)
    ckpt_dir = args.ckpt_dir or Path(str(args.out) + ".epochs")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
    first_epoch = 0
    if args.resume is not None:
        state = torch.load(args.resume, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        history = state["history"]
        first_epoch = state["epoch"] + 1
        log(f"resumed from {args.resume} at epoch {first_epoch}")

    gen = torch.Generator().manual_seed(args.seed)
    step_time, step_imgs = 0.0, 0
    for epoch in range(first_epoch, args.epochs):
        model.train()
        gen.manual_seed(args.seed * 1000 + epoch)
        order = torch.randperm(len(images), generator=gen)
        t_epoch, run_loss = time.time(), 0.0
        for k in range(steps_per_epoch):
            idx = order[k * args.batch:(k + 1) * args.batch]
            x = images[idx]
            flip = torch.rand(len(idx), generator=gen)
            x = torch.where((flip < 0.5).view(-1, 1, 1, 1), x.flip(3), x)
            x = torch.where(((flip * 4) % 2 < 1).view(-1, 1, 1, 1), x.flip(2), x)
            x = normalise(x.to(device))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            t = targets[idx].to(device)
            t0 = time.time()
            loss = F.cross_entropy(model(x), t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step_time += time.time() - t0
            step_imgs += len(idx)
            run_loss += loss.item()
            if (k + 1) % 50 == 0:
                log(f"epoch {epoch + 1} step {k + 1}/{steps_per_epoch} loss {run_loss / (k + 1):.4f} "
                    f"lr {sched.get_last_lr()[0]:.2e} {1000 * step_time / step_imgs:.1f} ms/img")
        val_acc = top1_accuracy(predict(model, val_x, device=device, channels_last=channels_last), val_c)
        history.append({"epoch": epoch + 1, "loss": run_loss / steps_per_epoch, "val_top1": val_acc,
                        "seconds": time.time() - t_epoch})
        log(f"epoch {epoch + 1}/{args.epochs} loss {run_loss / steps_per_epoch:.4f} val top-1 {val_acc:.3f} "
            f"({time.time() - t_epoch:.0f}s)")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "history": history, "epoch": epoch, "args": vars(args)}, ckpt_dir / f"epoch_{epoch + 1:02d}.pt")

    model = model.to(memory_format=torch.contiguous_format)
    test_x, test_c = SyntheticScenes("test", args.n_test, args.seed, args.size).to_tensors()
    test_logits = predict(model, test_x, device=device)
    pair_x, pair_c = SyntheticScenes("pairs", args.n_pairs, args.seed, args.size).to_tensors()
    pair_logits = predict(model, pair_x, device=device)
    n200 = min(200, args.n_test)
    card: dict[str, Any] = {
        "architecture": "BundledVGG: torchvision vgg16_bn features layout (indices 0-43, max-pools at "
                        "6/13/23/33/43), narrower channels; global average pool; Dropout + Linear",
        "cfg": cfg,
        "width_divisor": args.width_div,
        "input_size": args.size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "classes": list(CLASSES),
        "dropout": args.dropout,
        "seed": args.seed,
        "scene_seed": args.seed,
        "n_train": args.n_train,
        "n_train_pairs": args.n_train_pairs,
        "epochs": args.epochs,
        "batch": args.batch,
        "optimizer": f"AdamW(lr={args.lr}, weight_decay={args.wd}), OneCycleLR(pct_start=0.15)",
        "loss": "cross-entropy with soft targets (0.5/0.5 on two-object scenes), random h/v flips",
        "test_accuracy": top1_accuracy(test_logits, test_c),
        "test_n": args.n_test,
        "test_accuracy_first200": top1_accuracy(test_logits[:n200], test_c[:n200]),
        "pairs_top2": pairs_top2(pair_logits, pair_c),
        "pairs_n": args.n_pairs,
        "history": history,
        "device": device,
        "ms_per_image_step": 1000 * step_time / max(step_imgs, 1),
        "wall_seconds": time.time() - t_start,
        "torch": str(torch.__version__),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.cpu().state_dict(), "card": card}, args.out)
    with open(args.out.with_suffix(".json"), "w") as f:
        json.dump(card, f, indent=1)
    log(f"test top-1 {card['test_accuracy']:.3f} (n={args.n_test}), pairs top-2 {card['pairs_top2']:.3f} "
        f"(n={args.n_pairs}); wrote {args.out}")
    return card


def main(argv: Sequence[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
