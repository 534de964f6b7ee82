"""Per-channel propagation, the denoising split and the ReLU budget."""
from __future__ import annotations

import pytest
import torch

from fgcam_lib import FGCAM, denoise
from fgcam_lib.methods.components import TopComponents, channel_pieces, denoise_split, relu_budget

LAYERS = [33, 13, "input"]


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64)  # 2 x 2 at the component layer


@pytest.mark.parametrize("rules", ["paper", "canonical"])
def test_per_channel_pieces_sum_to_the_full_map(tiny_vgg, batch, rules):
    fg = FGCAM(tiny_vgg, rules=rules)
    top = TopComponents(fg, batch)
    full = top.propagate(layers=LAYERS)
    per = top.per_channel(range(top.channels), layers=LAYERS, chunk=20)
    expl = fg.explain(batch, layer=LAYERS)
    for layer in LAYERS:
        assert per[layer].shape[:2] == (2, top.channels)
        assert torch.allclose(full[layer], expl.components[layer], atol=1e-6)
        scale = full[layer].abs().max()
        assert torch.allclose(per[layer].sum(1), full[layer], atol=1e-5 * scale)


def test_single_channel_is_an_explicit_edit_of_I_L(tiny_vgg, batch):
    # per_channel([k]) equals propagating I_L with every other channel zeroed, image by image
    fg = FGCAM(tiny_vgg)
    top = TopComponents(fg, batch, target=[1, 4])
    k = int(top.components[0].abs().sum((1, 2)).argmax())
    only_k = torch.zeros_like(top.components)
    only_k[:, k] = top.components[:, k]
    ref = top.propagate(only_k, layers=[13])[13]
    got = top.per_channel([k], layers=[13])[13][:, 0]
    assert torch.allclose(got, ref, atol=1e-7)
    summed = top.per_channel([k, 0], layers=[13], sum_channels=True)[13]
    assert summed.shape == (2, 2) + ref.shape[-2:]
    assert torch.allclose(summed[:, 0], ref.sum(1), atol=1e-6)
    assert top.target.tolist() == [1, 4]


def test_relevance_of_one_channel_is_conserved(tiny_vgg, batch):
    # the paper preset conserves relevance, so each channel's piece keeps its own total
    top = TopComponents(FGCAM(tiny_vgg), batch)
    ch = top.components.abs().sum((2, 3)).argmax(1)[0].item()
    piece = top.per_channel([ch], layers=["input"])["input"][:, 0]
    assert torch.allclose(piece.sum((1, 2, 3)), top.components[:, ch].sum((1, 2)), rtol=1e-4, atol=1e-6)


def test_denoised_components_follow_the_explainer(tiny_vgg, batch):
    raw = TopComponents(FGCAM(tiny_vgg), batch)
    den = TopComponents(FGCAM(tiny_vgg, denoise=0.5), batch)
    assert torch.allclose(den.components, denoise(raw.components, 0.5), atol=1e-6)
    assert den.rank(0.1) == 1


def test_channel_pieces_and_errors():
    I = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    p = channel_pieces(I, [2, 0])
    assert p.shape == (2, 2, 3, 2, 2)
    assert torch.equal(p[:, 0, 2], I[:, 2]) and p[:, 0, :2].abs().sum() == 0
    assert torch.equal(channel_pieces(I, range(3)).sum(1), I)
    with pytest.raises(ValueError):
        channel_pieces(I, [3])
    with pytest.raises(ValueError):
        channel_pieces(I, [])


def test_layers_outside_the_trace_are_refused(tiny_vgg, batch):
    top = TopComponents(FGCAM(tiny_vgg), batch, lowest=13)
    with pytest.raises(ValueError, match="below"):
        top.propagate(layers=["input"])
    with pytest.raises(ValueError, match="above"):
        top.propagate(layers=["classifier.1"])
    with pytest.raises(ValueError, match="shape"):
        top.propagate(torch.zeros(1, 2, 3, 4), layers=[13])


def test_denoise_split_sums_back():
    torch.manual_seed(0)
    I = torch.randn(3, 16, 4, 4)
    parts = denoise_split(I, 0.25)
    assert torch.allclose(parts["mean"] + parts["kept"] + parts["dropped"], I, atol=1e-5)
    assert torch.allclose(parts["kept"], denoise(I, 0.25))
    # the dropped part is orthogonal to the kept one (different singular directions)
    inner = (parts["kept"] * parts["dropped"]).sum((1, 2, 3))
    assert torch.allclose(inner, torch.zeros(3), atol=1e-3)
    assert torch.allclose(parts["mean"].mean((2, 3)), I.mean((2, 3)), atol=1e-6)


def test_relu_budget_known_answer():
    m = torch.tensor([[[1.0, -1.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    b = relu_budget(m)
    assert b["positive"].tolist() == [3.0, 0.0]
    assert b["negative"].tolist() == [-1.0, 0.0]
    assert b["net"].tolist() == [2.0, 0.0]
    assert b["removed_share"].tolist() == [0.25, 0.0]
    assert b["pixels_removed"].tolist() == [0.25, 0.0]
