"""Checkpoints of a training run: where a run is, saving and loading it, resuming from it.

A checkpoint (``<out>.ckpt``) is a plain dict saved by ``torch.save``: ``config``
(:meth:`TrainConfig.to_dict`), ``state`` (:class:`TrainState` as a dict), ``model``,
``opt``, ``sched``, ``gen``, ``torch_rng``, ``cuda_rng``, ``scene_seed`` and
``data_checksum``. Runs in progress depend on these keys: keep them.

    >>> blob = load_checkpoint(checkpoint_path(cfg))                 # doctest: +SKIP
    >>> TrainState(**blob["state"]).step                             # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from .recipes import TrainConfig



class Stateful(Protocol):
    """What a checkpoint keeps of a schedule: its state (the loop's ``OneCycle``)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

__all__ = ["TrainState", "TrainingStopped", "checkpoint_path", "save_checkpoint", "load_checkpoint",
           "resumed_config", "restore", "log"]


def log(msg: str) -> None:
    """Print with a UTC date-time stamp (flushed, for log files); the loop logs with it too.

    >>> log("checkpoint at step 100")                                 # doctest: +SKIP
    [2026-01-01 12:00:00Z] checkpoint at step 100
    """
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())}Z] {msg}", flush=True)


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
                    opt: torch.optim.Optimizer, sched: Stateful, gen: torch.Generator, checksum: int) -> None:
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


def resumed_config(cfg: TrainConfig, blob: dict[str, Any]) -> TrainConfig:
    """The checkpoint's result fields with this command line's run fields; logs what differed."""
    saved = TrainConfig.from_dict(blob["config"])
    ours, theirs = cfg.result_fields(), saved.result_fields()
    diff = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    if diff:
        log("resuming with the checkpoint's recipe; ignored on the command line: "
            + ", ".join(f"{k}={a} (checkpoint {b})" for k, (a, b) in diff.items()))
    return dataclasses.replace(cfg, **{k: getattr(saved, k) for k in theirs})


def restore(blob: dict[str, Any], checksum: int, model: nn.Module, opt: torch.optim.Optimizer,
            sched: Stateful) -> TrainState:
    """Put the checkpoint's weights, optimizer, schedule and RNG states back; returns its TrainState.

    ``checksum``: that of the regenerated training scenes, which must equal the checkpoint's."""
    if blob["data_checksum"] != checksum:
        raise RuntimeError(f"regenerated scenes differ from the checkpoint's (checksum {checksum} vs "
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

