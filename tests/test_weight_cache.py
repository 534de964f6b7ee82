"""The rules' cache of weight parts never serves a stale part: every way a weight changes gives
the map a fresh explainer on the changed model gives."""
from __future__ import annotations

import copy
import gc

import pytest
import torch
from torch import nn

from fgcam_lib import FGCAM
from fgcam_lib.engine import weighted  # the weight-part cache lives with the weighted layers


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


X = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _fresh_map(model: nn.Module) -> torch.Tensor:
    weighted.clear_weight_cache()
    return FGCAM(copy.deepcopy(model))(X, target=torch.tensor([0, 1]), layer="input", signed=True)


def _edits():
    def in_place(m):
        with torch.no_grad():
            m[2].weight.mul_(-1.5)

    def optimizer_step(m):
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        m(X).sum().backward()
        opt.step()

    def load_state(m):
        other = _net()
        with torch.no_grad():
            for p in other.parameters():
                p.add_(torch.randn_like(p))
        m.load_state_dict(other.state_dict())

    def assign_data(m):
        m[2].weight.data = -m[2].weight.detach().clone()

    return [in_place, optimizer_step, load_state, assign_data]


@pytest.mark.parametrize("edit", _edits(), ids=lambda f: f.__name__)
def test_a_changed_weight_gives_fresh_parts(edit):
    model = _net()
    explainer = FGCAM(model)
    before = explainer(X, target=torch.tensor([0, 1]), layer="input", signed=True)
    edit(model)
    after = explainer(X, target=torch.tensor([0, 1]), layer="input", signed=True)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, _fresh_map(model))


def test_writes_through_data_need_clear_weight_cache():
    model = _net()
    explainer = FGCAM(model)
    explainer(X, target=torch.tensor([0, 1]), layer="input")
    model[2].weight.data.mul_(-1.0)  # bypasses the version counter: documented limit
    weighted.clear_weight_cache()
    torch.testing.assert_close(explainer(X, target=torch.tensor([0, 1]), layer="input", signed=True),
                               _fresh_map(model))


def test_the_cache_does_not_keep_a_model_alive():
    model = _net()
    FGCAM(model)(X, layer="input")
    n = len(weighted._PARTS._entries)
    assert n > 0
    del model
    gc.collect()
    assert len(weighted._PARTS._entries) < n
