"""A model's fingerprint: a short hash of its weights that names result files and model cards.

    >>> model_fingerprint(model)
    '384e52305c'

Training writes it into a model's card, the result store into the names of its files, so
rows of different checkpoints never mix. Stays light: torch is imported when it is called.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["model_fingerprint"]


def model_fingerprint(model: "nn.Module", length: int = 10) -> str:
    """Short SHA-256 of a model's state dict (names, shapes, dtypes and values).

    Two models with the same parameters and buffers get the same fingerprint; any changed
    weight changes it. Used to keep results of different checkpoints apart.
    """
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:length]
