"""The browser tests run on request only: `make test-browser` (or `pytest -m browser`).

`make test` collects them too and skips them with one line, so the suite does not start
JupyterLab and Chromium twice in `.ci/run`.
"""
from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives JupyterLab in headless Chromium (make test-browser)")


def browser_requested(config: pytest.Config) -> bool:
    """True under `make test-browser`, `-m browser` or with FGCAM_BROWSER(_REQUIRED) set."""
    if os.environ.get("FGCAM_BROWSER") == "1" or os.environ.get("FGCAM_BROWSER_REQUIRED"):
        return True
    return "browser" in (config.getoption("-m", default="") or "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if browser_requested(config):
        return
    skip = pytest.mark.skip(reason="browser test: run it with `make test-browser`")
    for item in items:
        if item.get_closest_marker("browser"):
            item.add_marker(skip)
