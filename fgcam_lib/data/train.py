"""Train the bundled benchmark models on synthetic scenes, resumably.

    python -m fgcam_lib.data.train --help
    python -m fgcam_lib.data.train --recipe bundled_resnet              # a named recipe (TRAINING.md)
    python -m fgcam_lib.data.train --recipe bundled_resnet --resume     # continue from <out>.ckpt
    python -m fgcam_lib.data.train --tiny --out /tmp/tiny.pt            # seconds, for tests

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
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..evaluation.store import model_fingerprint
from .models import BUNDLED_CHECKPOINT, DATA_DIR, IMAGENET_MEAN, IMAGENET_STD, build_bundled, scaled_cfg
from .scenes import CLASSES, SyntheticScenes

__all__ = [
    "TrainConfig", "RECIPES", "TINY", "OneCycle", "TrainState", "TrainingStopped", "SceneData",
    "train", "main", "parse_config", "make_data", "make_model", "train_epoch", "evaluate", "write_card",
    "save_checkpoint", "load_checkpoint", "checkpoint_path", "normalise", "soft_targets", "predict",
    "top1_accuracy", "pairs_top2", "one_cycle", "scenes_tensors", "log",
]


# ------------------------------------------------------------------ config ------------
@dataclass
class TrainConfig:
    """One training run. Fields above ``threads`` decide the result; the rest only how it runs.

    >>> cfg = TrainConfig(arch="bundled_resnet", size=96)
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    arch: str = "bundled"  # bundled | bundled_vgg16bn_fc | bundled_resnet
    width_div: int = 8  # VGG archs: torchvision VGG16 widths divided by this
    widths: tuple[int, ...] = (16, 32, 64, 128)  # bundled_resnet: replaces resnet18's 64, 128, 256, 512
    pool: int = 3  # bundled_vgg16bn_fc: AdaptiveAvgPool2d output side
    hidden: int = 512  # bundled_vgg16bn_fc: width of the two hidden FC layers
    dropout: float = 0.2  # VGG archs (torchvision's ResNet has none)
    size: int = 128
    n_train: int = 20000
    n_train_pairs: int = 6000
    n_val: int = 300
    n_test: int = 1000
    n_pairs: int = 500
    epochs: int = 10
    minutes: float = 0.0
    batch: int = 64
    lr: float = 2e-3
    wd: float = 5e-4
    seed: int = 0
    init: Path | None = None
    # how the run goes (not part of the result)
    threads: int = 0
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    out: Path = BUNDLED_CHECKPOINT
    ckpt: Path | None = None
    ckpt_minutes: float = 5.0
    ckpt_steps: int = 0
    ckpt_dir: Path | None = None
    cache: Path | None = None
    log_steps: int = 50
    resume: bool = False
    stop_after: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings, tuples as lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        kw: dict[str, Any] = {}
        for name, v in d.items():
            kw[name] = _coerce(name, v)
        return cls(**kw)

    def result_fields(self) -> dict[str, Any]:
        """The fields that decide the trained weights (a resumed run takes these from its checkpoint)."""
        d = self.to_dict()
        return {k: d[k] for k in _RESULT_FIELDS}

    def arch_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of :func:`~fgcam_lib.data.models.build_bundled` for ``arch``."""
        if self.arch == "bundled_resnet":
            return {"widths": list(self.widths)}
        kw: dict[str, Any] = {"cfg": scaled_cfg(self.width_div), "dropout": self.dropout}
        if self.arch == "bundled_vgg16bn_fc":
            kw.update(pool=self.pool, hidden=self.hidden)
        return kw


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
_PATH_FIELDS = {n for n, t in _FIELD_TYPES.items() if "Path" in str(t)}
_FIELD_NAMES = [f.name for f in dataclasses.fields(TrainConfig)]
_RESULT_FIELDS = _FIELD_NAMES[:_FIELD_NAMES.index("threads")]  # the ones that decide the weights


def _coerce(name: str, v: Any) -> Any:
    if name not in _FIELD_TYPES:
        raise ValueError(f"unknown training config field {name!r}")
    if name in _PATH_FIELDS:  # "none" on the command line clears a recipe's path (e.g. --init none)
        return None if v is None or str(v).lower() in ("", "none") else Path(v)
    if name == "widths":
        return tuple(int(c) for c in v)
    return v


#: named recipes: field overrides of :class:`TrainConfig` (TRAINING.md explains each)
RECIPES: dict[str, dict[str, Any]] = {
    "bundled_resnet": dict(
        arch="bundled_resnet", widths=(16, 32, 64, 128), size=96, n_train=20000, n_train_pairs=20000,
        epochs=60, minutes=120.0, batch=32, lr=2e-3, wd=0.05, out=DATA_DIR / "bundled_resnet.pt"),
    "bundled_vgg16bn_fc": dict(
        arch="bundled_vgg16bn_fc", width_div=8, pool=3, hidden=512, dropout=0.5, size=96, n_train=20000,
        n_train_pairs=20000, epochs=20, minutes=60.0, batch=32, lr=1e-3, wd=0.05,
        init=DATA_DIR / "bundled_vgg16bn.pt", out=DATA_DIR / "bundled_vgg16bn_fc.pt"),
}
#: a run of seconds for tests
TINY: dict[str, Any] = dict(size=32, n_train=64, n_train_pairs=32, n_val=16, n_test=32, n_pairs=16, epochs=1,
                            batch=32, width_div=16, widths=(4, 8, 8, 16), hidden=32, pool=1)

_HELP: dict[str, str] = {
    "arch": "architecture: bundled, bundled_vgg16bn_fc or bundled_resnet",
    "width_div": "VGG archs: divide VGG16 channel widths by this",
    "widths": "bundled_resnet: the four stage widths",
    "pool": "bundled_vgg16bn_fc: pooled side before the classifier",
    "hidden": "bundled_vgg16bn_fc: hidden FC width",
    "size": "input side in pixels",
    "n_train": "single-object training scenes",
    "n_train_pairs": "two-object training scenes (soft targets)",
    "n_val": "held-out scenes evaluated every epoch",
    "n_test": "'test' scenes for the final accuracy",
    "n_pairs": "'pairs' scenes for the final top-2 metric",
    "minutes": "if > 0: train for this many minutes of wall time, with the one-cycle schedule driven by elapsed "
               "time instead of steps (--epochs is then an upper bound)",
    "lr": "peak AdamW learning rate (one-cycle)",
    "wd": "AdamW weight decay",
    "seed": "torch seed and scene seed",
    "init": "start from the weights of this checkpoint (fine-tuning, new schedule; tensors whose name and shape "
            "match are loaded)",
    "threads": "torch CPU threads (0: leave default)",
    "out": "output checkpoint (.pt); card = .json",
    "ckpt": "resumable training state (default: <out>.ckpt)",
    "ckpt_minutes": "write the training state at least this often (minutes of wall time)",
    "ckpt_steps": "also write it every this many steps (0: off)",
    "ckpt_dir": "also keep a copy of the weights after every epoch here",
    "cache": "folder to cache generated scenes in",
    "log_steps": "log progress every this many steps",
    "resume": "continue from the training state (its recipe wins over the command line's; a missing one starts "
              "afresh)",
    "stop_after": "stop (as if killed, no checkpoint) after this many steps in this process; for tests",
}


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Command line -> :class:`TrainConfig`: defaults, then ``--recipe`` / ``--tiny``, then explicit flags.

    >>> parse_config(["--recipe", "bundled_resnet", "--threads", "1"]).arch
    'bundled_resnet'
    """
    p = argparse.ArgumentParser(prog="python -m fgcam_lib.data.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--recipe", choices=sorted(RECIPES), help="start from a named recipe (TRAINING.md)")
    p.add_argument("--tiny", action="store_true", help="tiny run for tests: a few scenes, one epoch, 32 px")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        helptext = _HELP.get(f.name, "") + f" (default: {default})"
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=helptext)
        elif isinstance(default, tuple):
            p.add_argument(flag, type=int, nargs="+", help=helptext)
        elif f.name in _PATH_FIELDS:
            p.add_argument(flag, type=Path, help=helptext)
        else:
            p.add_argument(flag, type=type(default), help=helptext)
    given = vars(p.parse_args(argv))
    values: dict[str, Any] = {}
    if given.pop("tiny", False):
        values.update(TINY)
    recipe = given.pop("recipe", None)
    if recipe is not None:
        values.update(RECIPES[recipe])
    values.update(given)
    return TrainConfig.from_dict(values)


# ------------------------------------------------------------------ helpers -----------
def log(msg: str) -> None:
    """Print with a UTC date-time stamp (flushed, for log files)."""
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())}Z] {msg}", flush=True)


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


def make_model(cfg: TrainConfig) -> nn.Module:
    """The config's architecture, freshly initialised from the torch seed, on ``cfg.device``."""
    torch.manual_seed(cfg.seed)
    model = build_bundled(cfg.arch, n_classes=len(CLASSES), **cfg.arch_kwargs()).to(cfg.device)
    if cfg.device == "cpu":  # channels_last halves the step cost on CPU (TRAINING.md)
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


# ------------------------------------------------------------------ state -------------
@dataclass
class TrainState:
    """Where a run is: epoch and step within it, totals, history, timing; saved in the checkpoint."""

    epoch: int = 0
    k: int = 0  # steps done in the current epoch
    step: int = 0
    run_loss: float = 0.0  # summed loss of the current epoch's steps
    epoch_seconds: float = 0.0
    train_seconds: float = 0.0  # wall time spent training (drives a time-budget schedule)
    step_seconds: float = 0.0  # forward + backward + update time only
    step_images: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    prior: dict[str, Any] = field(default_factory=dict)
    resumes: int = 0


class TrainingStopped(RuntimeError):
    """Raised when ``stop_after`` steps are done: the process ends as if killed (for tests)."""


def checkpoint_path(cfg: TrainConfig) -> Path:
    """``cfg.ckpt`` or ``<out>.ckpt``."""
    return cfg.ckpt if cfg.ckpt is not None else Path(str(cfg.out) + ".ckpt")


def save_checkpoint(path: Path, cfg: TrainConfig, state: TrainState, model: nn.Module,
                    opt: torch.optim.Optimizer, sched: OneCycle, gen: torch.Generator, checksum: int) -> None:
    """Write the whole training state to ``path`` atomically (a kill mid-write keeps the old file)."""
    blob = {
        "config": cfg.to_dict(), "state": dataclasses.asdict(state), "model": model.state_dict(),
        "opt": opt.state_dict(), "sched": sched.state_dict(), "gen": gen.get_state(),
        "torch_rng": torch.get_rng_state(), "scene_seed": cfg.seed, "data_checksum": checksum,
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: str = "cpu") -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint` (plain dict)."""
    return torch.load(path, map_location=device, weights_only=False)


def _resumed_config(cfg: TrainConfig, blob: dict[str, Any]) -> TrainConfig:
    """The checkpoint's result fields with this command line's run fields; logs what differed."""
    saved = TrainConfig.from_dict(blob["config"])
    ours, theirs = cfg.result_fields(), saved.result_fields()
    diff = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    if diff:
        log("resuming with the checkpoint's recipe; ignored on the command line: "
            + ", ".join(f"{k}={a} (checkpoint {b})" for k, (a, b) in diff.items()))
    return dataclasses.replace(cfg, **{k: getattr(saved, k) for k in theirs})


# ------------------------------------------------------------------ loop --------------
def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, sched: OneCycle, data: SceneData, cfg: TrainConfig,
                state: TrainState, gen: torch.Generator, after_step: Callable[[], None],
                gen_state: torch.Tensor | None = None) -> bool:
    """Run the rest of epoch ``state.epoch`` from step ``state.k``; True when the schedule ended in it.

    The epoch's order comes from ``gen`` seeded by (seed, epoch); the flips are then drawn
    from it step by step, so a run resumed mid-epoch passes the saved ``gen_state``.
    """
    model.train()
    channels_last = cfg.device == "cpu"
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
    val = top1_accuracy(predict(model, data.val_images, device=cfg.device, channels_last=cfg.device == "cpu"),
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
        cfg = _resumed_config(cfg, blob)
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
        state = _restore(blob, data, model, opt, sched)
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


def _restore(blob: dict[str, Any], data: SceneData, model: nn.Module, opt: torch.optim.Optimizer,
             sched: OneCycle) -> TrainState:
    """Put the checkpoint's weights, optimizer, schedule and RNG states back; returns its TrainState."""
    if blob["data_checksum"] != data.checksum:
        raise RuntimeError(f"regenerated scenes differ from the checkpoint's (checksum {data.checksum} vs "
                           f"{blob['data_checksum']}); was the scene code changed?")
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["opt"])
    sched.load_state_dict(blob["sched"])
    torch.set_rng_state(blob["torch_rng"])
    if blob.get("cuda_rng"):
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    state = TrainState(**blob["state"])
    state.resumes += 1
    log(f"resumed at epoch {state.epoch + 1}, step {state.k} of it (total {state.step}), "
        f"{state.train_seconds / 60:.1f} min trained")
    return state


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry: parse into a :class:`TrainConfig` and train."""
    args = list(sys.argv[1:] if argv is None else argv)
    return train(parse_config(args), command="python -m fgcam_lib.data.train " + " ".join(args))


if __name__ == "__main__":
    try:
        main()
    except TrainingStopped as stop:
        log(str(stop))
        sys.exit(3)
