"""Shared fixtures: small random-init CNNs with non-trivial BatchNorm statistics; the
``browser`` marker (tests/browser), run on request only: `make test-browser` (or
`pytest -m browser`). `make test` collects those tests too and skips them with one line,
so the suite does not start JupyterLab and Chromium twice in `.ci/run`.

(One conftest for the whole tree: a second one in tests/browser would be imported under the
same module name and hide this one from the test modules that import its helpers.)
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

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


# VGG16-BN's features layout with narrow widths: max-pools at 6, 13, 23, 33, 43.
VGG16_CFG = [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"]


class TinyVGG(nn.Module):
    """torchvision-VGG-style: features -> avgpool -> flatten -> classifier."""

    def __init__(self, width: int = 4, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                c = v * width
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(c_in, num_classes))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def randomize_bn(model: nn.Module, seed: int = 0, positive_scale: bool = True) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            lo = 0.5 if positive_scale else -0.5
            m.weight.data.copy_(torch.rand(n, generator=g) * (1.5 - lo) + lo)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.1)
    return model


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: small models on a loaded 2-core machine run faster so."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_vgg() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(TinyVGG()).eval()


@pytest.fixture(scope="session")
def vgg16_bn() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return randomize_bn(torchvision.models.vgg16_bn(num_classes=10)).eval()


@pytest.fixture()
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 64, 64, generator=g)
