"""Train the bundled benchmark model on synthetic scenes.

    python -m fgcam_lib.data.train --help
    python -m fgcam_lib.data.train --tiny --out /tmp/tiny.pt         # seconds, for tests

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


def one_cycle(progress: float, peak: float, warmup: float = 0.1, start_div: float = 20.0,
              final_div: float = 1000.0) -> float:
    """Learning rate at ``progress`` in [0, 1]: linear warmup to ``peak``, then cosine decay."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return peak / start_div + (peak - peak / start_div) * progress / warmup
    q = (progress - warmup) / (1 - warmup)
    low = peak / final_div
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * q))


def scenes_tensors(split: str, n: int, seed: int, size: int, cache: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``SyntheticScenes(split, n, seed, size).to_tensors()``, cached under ``cache`` if given.

    A cached file of the same split, seed and size with more scenes is sliced; one with
    fewer is extended (scene i does not depend on n).
    """
    if cache is None:
        return SyntheticScenes(split, n, seed, size).to_tensors()
    path = cache / f"{split}_{n}_{seed}_{size}.pt"
    found = sorted(cache.glob(f"{split}_*_{seed}_{size}.pt"), key=lambda q: -int(q.name.split("_")[-3]))
    found = [q for q in found if q.name.split("_")[-3].isdigit() and q.name.startswith(split + "_")
             and q.name[len(split) + 1:].split("_")[0].isdigit()]
    images, classes = torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    if found:
        blob = torch.load(found[0], weights_only=True)
        images, classes = blob["images"][:n], blob["classes"][:n]
    if len(images) < n:
        more_x, more_c = SyntheticScenes(split, n, seed, size).to_tensors(start=len(images))
        images, classes = torch.cat([images, more_x]), torch.cat([classes, more_c])
        cache.mkdir(parents=True, exist_ok=True)
        torch.save({"images": images, "classes": classes}, path)
    return images, classes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fgcam_lib.data.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--width-div", type=int, default=8, help="divide VGG16 channel widths by this")
    p.add_argument("--size", type=int, default=128, help="input side in pixels")
    p.add_argument("--n-train", type=int, default=20000, help="single-object training scenes")
    p.add_argument("--n-train-pairs", type=int, default=6000, help="two-object training scenes (soft targets)")
    p.add_argument("--n-val", type=int, default=300, help="held-out scenes evaluated every epoch")
    p.add_argument("--n-test", type=int, default=1000, help="'test' scenes for the final accuracy")
    p.add_argument("--n-pairs", type=int, default=500, help="'pairs' scenes for the final top-2 metric")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--minutes", type=float, default=0.0,
                   help="if > 0: train for this many minutes of wall time, with the one-cycle schedule "
                        "driven by elapsed time instead of steps (--epochs is then an upper bound)")
    p.add_argument("--cache", type=Path, default=None, help="folder to cache generated training scenes in")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (one-cycle)")
    p.add_argument("--wd", type=float, default=5e-4, help="AdamW weight decay")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0, help="torch seed and scene seed")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=BUNDLED_CHECKPOINT, help="checkpoint path (.pt); card = .json")
    p.add_argument("--ckpt-dir", type=Path, default=None, help="per-epoch checkpoints (default: <out>.epochs/)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from the weights of this bundled checkpoint (fine-tuning; new schedule)")
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
    x1, c1 = scenes_tensors("train", args.n_train, args.seed, args.size, args.cache)
    x2, c2 = scenes_tensors("train_pairs", args.n_train_pairs, args.seed, args.size, args.cache)
    images = torch.cat([x1, x2])
    targets = torch.cat([soft_targets(c1, n_cls), soft_targets(c2, n_cls)])
    del x1, x2
    val_x, val_c = scenes_tensors("val", args.n_val, args.seed, args.size, args.cache)
    log(f"scenes ready in {time.time() - t_start:.0f}s: {tuple(images.shape)}")

    cfg = scaled_cfg(args.width_div)
    model = BundledVGG(cfg, n_classes=n_cls, dropout=args.dropout).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
    steps_per_epoch = math.ceil(len(images) / args.batch)
    total_steps = args.epochs * steps_per_epoch
    budget = 60.0 * args.minutes
    t_train = time.time()

    def progress(step: int) -> float:
        if budget > 0:
            return max((time.time() - t_train) / budget, step / total_steps)
        return step / total_steps

    for group in opt.param_groups:
        group["lr"] = one_cycle(0.0, args.lr)
    ckpt_dir = args.ckpt_dir or Path(str(args.out) + ".epochs")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
    first_epoch = 0
    if args.resume is not None:
        state = torch.load(args.resume, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        history = state["history"]
        first_epoch = state["epoch"] + 1
        t_train -= state.get("train_seconds", 0.0)
        log(f"resumed from {args.resume} at epoch {first_epoch}")

    prior: dict[str, Any] = {}
    if args.init is not None:
        blob = torch.load(args.init, map_location=device, weights_only=True)
        model.load_state_dict(blob["state_dict"])
        prior = {k: blob["card"].get(k) for k in ("n_train", "n_train_pairs", "epochs", "steps", "optimizer",
                                                   "history", "test_accuracy", "pairs_top2", "wall_seconds")}
        log(f"initialised from {args.init}")
    gen = torch.Generator().manual_seed(args.seed)
    step_time, step_imgs, global_step, done = 0.0, 0, first_epoch * steps_per_epoch, False
    epochs_done = first_epoch
    for epoch in range(first_epoch, args.epochs):
        model.train()
        gen.manual_seed(args.seed * 1000 + epoch)
        order = torch.randperm(len(images), generator=gen)
        t_epoch, run_loss = time.time(), 0.0
        for k in range(steps_per_epoch):
            p_now = progress(global_step)
            if p_now >= 1.0:
                done = True
                break
            lr = one_cycle(p_now, args.lr)
            for group in opt.param_groups:
                group["lr"] = lr
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
            global_step += 1
            step_time += time.time() - t0
            step_imgs += len(idx)
            run_loss += loss.item()
            if (k + 1) % 50 == 0:
                log(f"epoch {epoch + 1} step {k + 1}/{steps_per_epoch} loss {run_loss / (k + 1):.4f} "
                    f"lr {lr:.2e} progress {p_now:.3f} {1000 * step_time / step_imgs:.1f} ms/img")
        val_acc = top1_accuracy(predict(model, val_x, device=device, channels_last=channels_last), val_c)
        n_steps = max(k + (0 if done else 1), 1)
        history.append({"epoch": epoch + 1, "steps": n_steps, "loss": run_loss / n_steps, "val_top1": val_acc,
                        "seconds": time.time() - t_epoch})
        log(f"epoch {epoch + 1}/{args.epochs} ({n_steps} steps) loss {run_loss / n_steps:.4f} "
            f"val top-1 {val_acc:.3f} ({time.time() - t_epoch:.0f}s)")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "history": history, "epoch": epoch,
                    "train_seconds": time.time() - t_train, "args": {k: str(v) for k, v in vars(args).items()}},
                   ckpt_dir / f"epoch_{epoch + 1:02d}.pt")
        epochs_done = epoch + 1
        if done:
            break

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
        "epochs": epochs_done,
        "steps": global_step,
        "time_budget_minutes": args.minutes,
        "batch": args.batch,
        "optimizer": f"AdamW(peak lr={args.lr}, weight_decay={args.wd}); one-cycle: linear warmup over 10%, "
                     f"cosine decay to peak/1000" + (f"; schedule driven by a {args.minutes} min time budget"
                                                     if args.minutes > 0 else ""),
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
        "fine_tuned_from": prior or None,
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
