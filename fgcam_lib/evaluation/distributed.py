"""The evaluation runner over several processes: ``torchrun`` starts them, ``torch.distributed`` links them.

    torchrun --nproc-per-node=4 -m fgcam_lib.evaluation --device cuda --num-images 2000 ...
    torchrun --nnodes=2 --node-rank=0 --rdzv-endpoint=host:29500 --nproc-per-node=8 -m fgcam_lib.evaluation ...

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in each process; :func:`from_env`
reads them and joins the process group (NCCL when the device is CUDA, else gloo), and
pins each rank to GPU ``LOCAL_RANK``. Without torchrun it returns :data:`SINGLE` and
nothing changes.

How the work is split (:func:`fgcam_lib.evaluation.runner.run_evaluation`): the images
are cut into the same windows of ``batch_size`` positions as in one process, and window
``k`` belongs to rank ``k % world``, so every batch is the batch a single process would
compute and the rows are the same. Each rank appends its own part files to the result
store; every rank reads the whole store first, so a resumed run (with any number of
ranks) skips what any rank finished. At the end rank 0 gathers all ranks' rows and prints
the tables.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Ranks", "SINGLE", "from_env", "rank_device", "close"]


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of one run: ``rank`` of ``world``, on GPU ``local_rank``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that prints and merges."""
        return self.rank == 0

    def owns(self, window: int) -> bool:
        """Whether window number ``window`` (of ``batch_size`` images) is this rank's to compute."""
        return window % self.world == self.rank

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (``[obj]`` in one process)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


#: the one process of a run without torchrun
SINGLE = Ranks()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def from_env(device: str = "cpu") -> Ranks:
    """The ranks torchrun set up (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), joined into a process group.

    One process (no ``WORLD_SIZE`` or 1): :data:`SINGLE`, and no process group. Several:
    the group is initialised once (NCCL for a CUDA ``device``, gloo otherwise) and on CUDA
    the process is pinned to GPU ``LOCAL_RANK``.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return SINGLE
    ranks = Ranks(rank=_env_int("RANK", 0), world=world, local_rank=_env_int("LOCAL_RANK", 0))
    cuda = str(device).startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} asked for, but CUDA is not available")
        if ranks.local_rank >= torch.cuda.device_count():
            raise ValueError(f"rank {ranks.rank} wants GPU {ranks.local_rank}, but only "
                             f"{torch.cuda.device_count()} are visible; start fewer processes per node")
        torch.cuda.set_device(ranks.local_rank)
    if not dist.is_initialized():
        kw: dict[str, Any] = {"device_id": torch.device("cuda", ranks.local_rank)} if cuda else {}
        dist.init_process_group(backend="nccl" if cuda else "gloo", **kw)
    return ranks


def rank_device(device: str, ranks: Ranks) -> str:
    """``device`` for this rank: plain ``cuda`` becomes ``cuda:<local rank>`` under torchrun."""
    if ranks.distributed and str(device) == "cuda":
        return f"cuda:{ranks.local_rank}"
    return str(device)


def close(ranks: Ranks) -> None:
    """Leave the process group (after a last barrier, so no rank exits while others still talk)."""
    if ranks.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
