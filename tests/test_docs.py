"""docs/extending.md promises that its snippets run top to bottom in one session: they do."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def test_extending_snippets_run_in_order():
    pytest.importorskip("torchvision")
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 8   # a rule, a preset, the three worked bases, a method, each with its test
    scope: dict = {"__name__": "extending_md"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{DOC.name} block {i}", "exec"), scope)
        except ModuleNotFoundError as err:   # the pytorch-grad-cam adapter's block needs that optional package
            if "pytorch_grad_cam" not in str(err):
                raise
