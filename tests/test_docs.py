"""docs/extending.md promises that its snippets run top to bottom in one session: they do."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fgcam_lib.catalogue import METHOD_LABELS, OTHER_LABELS
from fgcam_lib.engine.kinds import KINDS
from fgcam_lib.engine.presets import PRESETS
from fgcam_lib.engine.tracing import LEAVES
from fgcam_lib.methods.bases import CAM_BASES
from fgcam_lib.methods.registry import METHODS

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
#: the registries a snippet may add to; restored afterwards, so no other test sees the doc's entries
REGISTRIES = (PRESETS, CAM_BASES, KINDS, LEAVES, METHODS, METHOD_LABELS, OTHER_LABELS)


def test_extending_snippets_run_in_order():
    pytest.importorskip("torchvision")
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 8   # a rule, a preset, the three worked bases, a method, each with its test
    saved = [dict(r) for r in REGISTRIES]
    scope: dict = {"__name__": "extending_md"}
    try:
        for i, code in enumerate(blocks):
            try:
                exec(compile(code, f"{DOC.name} block {i}", "exec"), scope)
            except ModuleNotFoundError as err:   # the pytorch-grad-cam adapter's block needs that optional package
                if "pytorch_grad_cam" not in str(err):
                    raise
    finally:
        for registry, before in zip(REGISTRIES, saved):
            registry.clear()
            registry.update(before)
