"""LXT's CP-LRP on torchvision's ViT, as an independent reference (LXT is optional).

LXT 2.1 computes CP-LRP as gradient x input of the network with its own forwards patched in:
GELU by the identity rule, LayerNorm with its std detached, ``nn.MultiheadAttention`` with
the query and key detached. :func:`lxt_cp_lrp` applies those patches to torchvision's classes
for the duration of a ``with`` block and undoes them after. LXT's package init imports its
Hugging Face model patches (which need transformers < 5); the ViT patches need none of them,
so the two modules are loaded without that init.

    >>> with lxt_cp_lrp():
    ...     x.requires_grad_(True); model(x)[0, c].backward(); R = x * x.grad
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import types
from typing import Iterator

__all__ = ["lxt_cp_lrp"]


@contextlib.contextmanager
def lxt_cp_lrp() -> Iterator[None]:
    """LXT 2.1's CP-LRP patches of torchvision's ViT classes inside the block (ImportError without LXT)."""
    import lxt

    root = os.path.join(os.path.dirname(lxt.__file__), "efficient")
    for name, path in (("lxt.efficient", root), ("lxt.efficient.models", os.path.join(root, "models"))):
        if name not in sys.modules or not hasattr(sys.modules[name], "__path__"):
            pkg = types.ModuleType(name)
            pkg.__path__ = [path]
            sys.modules[name] = pkg
    patches = importlib.import_module("lxt.efficient.models.vit_torch").cp_LRP
    saved = {cls: cls.forward for cls in patches}
    try:
        for cls, patch in patches.items():
            patch(cls)
        yield
    finally:
        for cls, forward in saved.items():
            cls.forward = forward
            if hasattr(cls, "original_forward"):
                del cls.original_forward
