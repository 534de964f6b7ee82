"""Authoring helpers for the notebooks: build an .ipynb from cell sources and run it.

    python scripts/nbtools.py run notebooks/01_deriving_the_rules.ipynb          # full mode, outputs saved
    FGCAM_QUICK=1 python scripts/nbtools.py run notebooks/01_deriving_the_rules.ipynb --no-save

``build(path, cells)``: cells are strings; a cell starting with ``"# %% [markdown]\n"`` is
markdown, any other is code.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

MARKDOWN = "# %% [markdown]\n"


def build(path: str | Path, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for src in cells:
        src = src.strip("\n")
        if src.startswith(MARKDOWN):
            nb.cells.append(nbformat.v4.new_markdown_cell(src[len(MARKDOWN):]))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(src))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def run(path: str | Path, save: bool = True, timeout: int = 1800) -> float:
    """Execute in a fresh kernel with the notebook's folder as working directory."""
    path = Path(path)
    nb = nbformat.read(str(path), as_version=4)
    if save:
        os.environ.pop("MPLBACKEND", None)  # saved notebooks show their figures inline
    t0 = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    if save:
        nbformat.write(nb, str(path))
    return time.time() - t0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["run"])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()
    for p in a.paths:
        print(f"{p}: {run(p, save=not a.no_save):.1f} s", file=sys.stderr)
