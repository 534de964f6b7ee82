"""Train the bundled benchmark models on synthetic scenes, resumably.

    python -m fgcam_lib.training --help
    python -m fgcam_lib.training --recipe bundled_resnet              # a named recipe (TRAINING.md)
    python -m fgcam_lib.training --recipe bundled_resnet --resume     # continue from <out>.ckpt
    python -m fgcam_lib.training --tiny --out /tmp/tiny.pt            # seconds, for tests

A run is described by a :class:`TrainConfig` (the command line only fills one in).
Architectures: ``bundled`` (VGG16-BN layout, global pool + one linear layer),
``bundled_vgg16bn_fc`` (the same features, torchvision VGG's three-layer classifier) and
``bundled_resnet`` (torchvision ResNet/BasicBlock at reduced width); AdamW with a
one-cycle schedule, a mix of single-object scenes (one-hot targets) and two-object scenes
(0.5 / 0.5 soft targets), random flips. Scenes are generated once into a uint8 tensor.

Every few minutes (and at each epoch's end) the whole training state -- weights,
optimizer, schedule, RNG states, step / epoch, the scene seed and a checksum of the
generated data -- goes to ``<out>.ckpt``; ``--resume`` continues from it. Writes
``<out>`` (state dict + card) and ``<out>.json`` (the card: architecture, data, recipe,
cost, measured held-out accuracies, fingerprint) when the run finishes.

The config, recipes and flags live in :mod:`.recipes`, the checkpoint in :mod:`.checkpoint`.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.fingerprint import model_fingerprint
from ..data.models import build_bundled
from ..engine.presets import IMAGENET_MEAN, IMAGENET_STD
from ..data.scenes import CLASSES, SyntheticScenes
from .checkpoint import (TrainingStopped, TrainState, checkpoint_path, load_checkpoint, log, restore,
                         resumed_config, save_checkpoint)
from .recipes import TrainConfig, parse_config

__all__ = [
    "OneCycle", "SceneData", "train", "main", "make_data", "make_model", "train_epoch", "evaluate", "write_card",
    "normalise", "soft_targets", "predict", "top1_accuracy", "pairs_top2", "one_cycle", "scenes_tensors",
]


# ------------------------------------------------------------------ helpers -----------
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


class OneCycle:
    """The one-cycle schedule over steps or, with a time budget, over training seconds.

    Progress is ``max(step / total_steps, seconds / budget)``; the run ends at progress 1.

    >>> s = OneCycle(peak=1e-3, total_steps=100)
    >>> round(s.lr(10, 0.0), 6), s.done(100, 0.0)
    (0.001, True)
    """

    def __init__(self, peak: float, total_steps: int, budget_seconds: float = 0.0) -> None:
        self.peak, self.total_steps, self.budget_seconds = peak, max(int(total_steps), 1), budget_seconds

    def progress(self, step: int, seconds: float) -> float:
        p = step / self.total_steps
        return max(p, seconds / self.budget_seconds) if self.budget_seconds > 0 else p

    def lr(self, step: int, seconds: float) -> float:
        return one_cycle(self.progress(step, seconds), self.peak)

    def done(self, step: int, seconds: float) -> bool:
        return self.progress(step, seconds) >= 1.0

    def state_dict(self) -> dict[str, float]:
        return {"peak": self.peak, "total_steps": self.total_steps, "budget_seconds": self.budget_seconds}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.peak, self.total_steps = float(state["peak"]), int(state["total_steps"])
        self.budget_seconds = float(state["budget_seconds"])


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


# ------------------------------------------------------------------ data --------------
@dataclass
class SceneData:
    """Training images (uint8), soft targets, held-out val scenes and a checksum of the training images."""

    images: torch.Tensor
    targets: torch.Tensor
    val_images: torch.Tensor
    val_classes: torch.Tensor
    checksum: int


def make_data(cfg: TrainConfig) -> SceneData:
    """Generate (or read from the cache) the run's training and val scenes; a pure function of the config."""
    t0 = time.time()
    n_cls = len(CLASSES)
    log(f"generating {cfg.n_train} + {cfg.n_train_pairs} training scenes at {cfg.size}px (scene seed {cfg.seed})")
    x1, c1 = scenes_tensors("train", cfg.n_train, cfg.seed, cfg.size, cfg.cache)
    x2, c2 = scenes_tensors("train_pairs", cfg.n_train_pairs, cfg.seed, cfg.size, cfg.cache)
    images = torch.cat([x1, x2])
    targets = torch.cat([soft_targets(c1, n_cls), soft_targets(c2, n_cls)])
    del x1, x2
    val_x, val_c = scenes_tensors("val", cfg.n_val, cfg.seed, cfg.size, cfg.cache)
    # position-weighted sum: a cheap check that a resumed run regenerated the same scenes
    flat = images.view(len(images), -1)[:, ::97].long()
    checksum = int((flat.sum(1) * torch.arange(1, len(images) + 1)).sum())
    log(f"scenes ready in {time.time() - t0:.0f}s: {tuple(images.shape)}, checksum {checksum}")
    return SceneData(images, targets, val_x, val_c, checksum)


#: channels-last training on CPU halves the step cost (TRAINING.md), but torch 2.14.1's CPU backward
#: of a strided 1x1 conv in channels-last corrupts the heap on some processors (seen on AMD EPYC:
#: "double free or corruption"), so it is off unless FGCAM_CHANNELS_LAST=1
CHANNELS_LAST_ON_CPU = os.environ.get("FGCAM_CHANNELS_LAST") == "1"


def _channels_last(cfg: TrainConfig) -> bool:
    return cfg.device == "cpu" and CHANNELS_LAST_ON_CPU


def make_model(cfg: TrainConfig) -> nn.Module:
    """The config's architecture, freshly initialised from the torch seed, on ``cfg.device``."""
    torch.manual_seed(cfg.seed)
    model = build_bundled(cfg.arch, n_classes=len(CLASSES), **cfg.arch_kwargs()).to(cfg.device)
    if _channels_last(cfg):
        model = model.to(memory_format=torch.channels_last)
    return model


def _init_from(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load the tensors of checkpoint ``path`` whose name and shape match; returns the prior card's summary."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    match = {k: v for k, v in blob["state_dict"].items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(match, strict=False)
    log(f"initialised {len(match)} of {len(own)} tensors from {path}")
    card = blob.get("card", {})
    keys = ("arch", "n_train", "n_train_pairs", "epochs", "steps", "optimizer", "history", "test_accuracy",
            "pairs_top2", "wall_seconds")
    return {"path": str(path), "tensors_loaded": len(match), **{k: card.get(k) for k in keys if k in card}}


# ------------------------------------------------------------------ loop --------------
def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, sched: OneCycle, data: SceneData, cfg: TrainConfig,
                state: TrainState, gen: torch.Generator, after_step: Callable[[], None],
                gen_state: torch.Tensor | None = None) -> bool:
    """Run the rest of epoch ``state.epoch`` from step ``state.k``; True when the schedule ended in it.

    The epoch's order comes from ``gen`` seeded by (seed, epoch); the flips are then drawn
    from it step by step, so a run resumed mid-epoch passes the saved ``gen_state``.
    """
    model.train()
    channels_last = _channels_last(cfg)
    steps_per_epoch = math.ceil(len(data.images) / cfg.batch)
    gen.manual_seed(cfg.seed * 1000 + state.epoch)
    order = torch.randperm(len(data.images), generator=gen)
    if gen_state is not None:
        gen.set_state(gen_state)
    t_log, step_log, loss_log = time.time(), state.step, 0.0
    while state.k < steps_per_epoch:
        t_begin = time.time()
        if sched.done(state.step, state.train_seconds):
            return True
        lr = sched.lr(state.step, state.train_seconds)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = order[state.k * cfg.batch:(state.k + 1) * cfg.batch]
        x = data.images[idx]
        flip = torch.rand(len(idx), generator=gen)
        x = torch.where((flip < 0.5).view(-1, 1, 1, 1), x.flip(3), x)
        x = torch.where(((flip * 4) % 2 < 1).view(-1, 1, 1, 1), x.flip(2), x)
        x = normalise(x.to(cfg.device))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = data.targets[idx].to(cfg.device)
        t0 = time.time()
        loss = F.cross_entropy(model(x), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        now = time.time()
        state.step_seconds += now - t0
        state.step_images += len(idx)
        state.k += 1
        state.step += 1
        state.run_loss += loss.item()
        loss_log += loss.item()
        state.train_seconds += now - t_begin
        state.epoch_seconds += now - t_begin
        if cfg.log_steps and state.step % cfg.log_steps == 0:
            _log_progress(cfg, state, sched, steps_per_epoch, lr, (state.step - step_log) / max(now - t_log, 1e-9),
                          loss_log / max(state.step - step_log, 1))
            t_log, step_log, loss_log = now, state.step, 0.0
        after_step()
    return False


def _log_progress(cfg: TrainConfig, state: TrainState, sched: OneCycle, steps_per_epoch: int, lr: float,
                  rate: float, loss: float) -> None:
    p = sched.progress(state.step, state.train_seconds)
    eta = (sched.total_steps - state.step) / max(rate, 1e-9)
    if sched.budget_seconds > 0:  # whichever ends the schedule first
        eta = min(eta, sched.budget_seconds - state.train_seconds)
    log(f"epoch {state.epoch + 1} step {state.k}/{steps_per_epoch} (total {state.step}) loss {loss:.4f} "
        f"lr {lr:.2e} {rate:.2f} steps/s {1000 * state.step_seconds / max(state.step_images, 1):.1f} ms/img "
        f"progress {p:.3f} ETA {eta / 60:.1f} min")


@torch.no_grad()
def evaluate(model: nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """Test top-1 on ``n_test`` 'test' scenes (and on the first 200), pairs top-2 on ``n_pairs`` 'pairs' scenes."""
    test_x, test_c = SyntheticScenes("test", cfg.n_test, cfg.seed, cfg.size).to_tensors()
    test_logits = predict(model, test_x, device=cfg.device)
    pair_x, pair_c = SyntheticScenes("pairs", cfg.n_pairs, cfg.seed, cfg.size).to_tensors()
    pair_logits = predict(model, pair_x, device=cfg.device)
    n200 = min(200, cfg.n_test)
    return {"test_accuracy": top1_accuracy(test_logits, test_c), "test_n": cfg.n_test,
            "test_accuracy_first200": top1_accuracy(test_logits[:n200], test_c[:n200]),
            "pairs_top2": pairs_top2(pair_logits, pair_c), "pairs_n": cfg.n_pairs}


_ARCH_TEXT = {
    "bundled": "BundledVGG: torchvision vgg16_bn features layout (indices 0-43, max-pools at 6/13/23/33/43), "
               "narrower channels; global average pool; Dropout + Linear",
    "bundled_vgg16bn_fc": "BundledVGGFC: torchvision vgg16_bn features layout (indices 0-43), narrower channels; "
                          "AdaptiveAvgPool2d, flatten, classifier Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear "
                          "as torchvision VGG",
    "bundled_resnet": "BundledResNet: torchvision ResNet with BasicBlock [2, 2, 2, 2] (resnet18 module paths), "
                      "narrower stages",
    "bundled_vit": "BundledViT: torchvision VisionTransformer, 8 px patches at 96 px (12 x 12 tokens + class token), "
                   "4 blocks of width 64 with 4 heads (vit_b_16 module paths)",
    "bundled_swin": "BundledSwin: torchvision SwinTransformer, 4 px patches at 96 px, stages of 2/2/2 blocks at "
                    "24/12/6 tokens, widths 32/64/128, 6 x 6 windows (swin_t module paths)",
}


def write_card(model: nn.Module, cfg: TrainConfig, state: TrainState, metrics: dict[str, Any],
               wall_seconds: float, command: str = "") -> dict[str, Any]:
    """Write ``<out>`` (weights + card) and ``<out>.json``; returns the card."""
    model = model.to(memory_format=torch.contiguous_format).cpu()
    arch_kwargs = cfg.arch_kwargs()
    card: dict[str, Any] = {
        "arch": cfg.arch,
        "architecture": _ARCH_TEXT[cfg.arch],
        "arch_kwargs": arch_kwargs,
        **({"cfg": arch_kwargs["cfg"], "width_divisor": cfg.width_div} if "cfg" in arch_kwargs else {}),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "input_size": cfg.size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "classes": list(CLASSES),
        **({"dropout": cfg.dropout} if "dropout" in arch_kwargs else {}),
        "seed": cfg.seed,
        "scene_seed": cfg.seed,
        "n_train": cfg.n_train,
        "n_train_pairs": cfg.n_train_pairs,
        "epochs": len(state.history),
        "steps": state.step,
        "time_budget_minutes": cfg.minutes,
        "batch": cfg.batch,
        "optimizer": f"AdamW(peak lr={cfg.lr}, weight_decay={cfg.wd}); one-cycle: linear warmup over 10%, "
                     f"cosine decay to peak/1000" + (f"; schedule driven by a {cfg.minutes} min time budget"
                                                     if cfg.minutes > 0 else ""),
        "loss": "cross-entropy with soft targets (0.5/0.5 on two-object scenes), random h/v flips",
        **metrics,
        "history": state.history,
        "device": cfg.device,
        "threads": cfg.threads or torch.get_num_threads(),
        "ms_per_image_step": 1000 * state.step_seconds / max(state.step_images, 1),
        "steps_per_second": state.step / max(state.train_seconds, 1e-9),
        "train_seconds": state.train_seconds,
        "wall_seconds": wall_seconds,
        "resumes": state.resumes,
        "torch": str(torch.__version__),
        "fingerprint": model_fingerprint(model),
        "train_config": cfg.result_fields(),
        "command": command,
        "fine_tuned_from": state.prior or None,
    }
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "card": card}, cfg.out)
    with open(cfg.out.with_suffix(".json"), "w") as f:
        json.dump(card, f, indent=1)
    log(f"test top-1 {card['test_accuracy']:.3f} (n={cfg.n_test}), pairs top-2 {card['pairs_top2']:.3f} "
        f"(n={cfg.n_pairs}); wrote {cfg.out} (fingerprint {card['fingerprint']})")
    return card


def _val_epoch_end(model: nn.Module, data: SceneData, cfg: TrainConfig, state: TrainState) -> None:
    """Held-out val accuracy, appended to the history with the epoch's loss, steps and time."""
    val = top1_accuracy(predict(model, data.val_images, device=cfg.device, channels_last=_channels_last(cfg)),
                        data.val_classes)
    n = max(state.k, 1)
    state.history.append({"epoch": state.epoch + 1, "steps": state.k, "loss": state.run_loss / n, "val_top1": val,
                          "seconds": state.epoch_seconds})
    log(f"epoch {state.epoch + 1}/{cfg.epochs} ({state.k} steps) loss {state.run_loss / n:.4f} val top-1 "
        f"{val:.3f} ({state.epoch_seconds:.0f}s)")


def train(cfg: TrainConfig, command: str = "") -> dict[str, Any]:
    """Run (or continue) the training job ``cfg``; returns the card (also written to disk).

    Raises :class:`TrainingStopped` after ``cfg.stop_after`` steps (tests of resumption).

    >>> card = train(TrainConfig.from_dict({**TINY, "out": "/tmp/tiny.pt", "threads": 1}))  # doctest: +SKIP
    """
    t_start = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = checkpoint_path(cfg)
    blob = load_checkpoint(ckpt, cfg.device) if cfg.resume and ckpt.is_file() else None
    if cfg.resume and blob is None:
        log(f"no training state at {ckpt}: starting afresh")
    if blob is not None:
        cfg = resumed_config(cfg, blob)
    log(f"{'resuming' if blob else 'training'} {cfg.arch} -> {cfg.out} (state: {ckpt}); threads "
        f"{torch.get_num_threads()}; config {json.dumps(cfg.result_fields())}")
    data = make_data(cfg)
    model = make_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.wd)
    steps_per_epoch = math.ceil(len(data.images) / cfg.batch)
    sched = OneCycle(cfg.lr, cfg.epochs * steps_per_epoch, 60.0 * cfg.minutes)
    gen = torch.Generator().manual_seed(cfg.seed)
    state, gen_state = TrainState(), None
    if blob is not None:
        state = restore(blob, data.checksum, model, opt, sched)
        gen_state = blob["gen"] if state.k > 0 else None  # mid-epoch: continue the epoch's flip stream
    elif cfg.init is not None:
        state.prior = _init_from(model, cfg.init)
    steps_here, last_save = 0, time.time()

    def after_step() -> None:
        nonlocal steps_here, last_save
        steps_here += 1
        if cfg.stop_after and steps_here >= cfg.stop_after:
            raise TrainingStopped(f"stopped after {steps_here} steps (step {state.step})")
        due = time.time() - last_save >= 60.0 * cfg.ckpt_minutes
        if due or (cfg.ckpt_steps and state.step % cfg.ckpt_steps == 0):
            save_checkpoint(ckpt, cfg, state, model, opt, sched, gen, data.checksum)
            last_save = time.time()
            log(f"checkpoint at step {state.step} -> {ckpt}")

    while state.epoch < cfg.epochs:
        ended = train_epoch(model, opt, sched, data, cfg, state, gen, after_step, gen_state)
        gen_state = None
        _val_epoch_end(model, data, cfg, state)
        if cfg.ckpt_dir is not None:
            cfg.ckpt_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "history": state.history},
                       cfg.ckpt_dir / f"epoch_{state.epoch + 1:02d}.pt")
        state.epoch, state.k, state.run_loss, state.epoch_seconds = state.epoch + 1, 0, 0.0, 0.0
        if ended:
            state.epoch = cfg.epochs  # schedule over: a resume goes straight to the evaluation
        save_checkpoint(ckpt, cfg, state, model, opt, sched, gen, data.checksum)
        last_save = time.time()
        if ended:
            break
    metrics = evaluate(model, cfg)
    return write_card(model, cfg, state, metrics, time.time() - t_start, command)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry: parse into a :class:`TrainConfig` and train."""
    args = list(sys.argv[1:] if argv is None else argv)
    return train(parse_config(args), command="python -m fgcam_lib.training " + " ".join(args))
