"""The throughput paths: Score-CAM's mask stream across images, metric precision, channels-last,
and on a machine with CUDA, every explainer's maps on the GPU against the CPU's."""
from __future__ import annotations

import pytest
import torch

from fgcam_lib.data.models import load_model
from fgcam_lib.data.scenes import SyntheticScenes
from fgcam_lib.evaluation.batch import load_batch
from fgcam_lib.evaluation.scoring import AtPrecision, at_precision
from fgcam_lib.methods.cam import score_cam_weights
from fgcam_lib.methods.registry import METHODS, make_explainer, supports

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def bundled():
    model, pre = load_model("bundled")
    batch = load_batch(SyntheticScenes("test", 3, size=96, seed=int(model.card.get("scene_seed", 0))), pre, 3)
    return model, pre, batch


@pytest.mark.parametrize("variant", ["paper", "common"])
def test_score_cam_weights_stream_across_images_as_image_by_image(bundled, variant):
    model, _, batch = bundled
    x = batch.x
    A = torch.relu(torch.randn(3, 10, 6, 6, generator=torch.Generator().manual_seed(0)))
    t = torch.tensor([1, 4, 6])
    # 7 masks per forward pass: batches straddle the images' 10 channels
    together = score_cam_weights(model, x, A, t, variant, batch_size=7)
    alone = torch.cat([score_cam_weights(model, x[i:i + 1], A[i:i + 1], t[i:i + 1], variant, batch_size=3)
                       for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    if variant == "paper":  # known answer for one pair: softmax of the masked image's logits
        m = torch.nn.functional.interpolate(A[1:2, 2:3], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        m = (m - m.min()) / (m.max() - m.min())
        with torch.no_grad():
            p = model(x[1:2] * m).softmax(1)[0, 4]
        torch.testing.assert_close(together[1, 2], p, rtol=1e-5, atol=1e-6)


def test_metric_precision_wrapper(bundled):
    model, _, batch = bundled
    assert at_precision(model, "fp32") is model
    fast = at_precision(model, "bf16")
    assert isinstance(fast, AtPrecision)
    with torch.no_grad():
        ref, got = model(batch.x), fast(batch.x)
    assert got.dtype == torch.float32
    assert not torch.equal(ref, got)  # it did run in bfloat16
    torch.testing.assert_close(got.softmax(1), ref.softmax(1), atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        at_precision(model, "fp8")


def test_channels_last_metrics_give_the_same_rows(bundled):
    """The metrics' forward passes on a channels-last copy: same rows, the model itself untouched."""
    from fgcam_lib.evaluation.runner import run_evaluation
    from fgcam_lib.evaluation.scoring import ChannelsLast

    model, pre, _ = bundled
    fast = at_precision(model, "fp32", channels_last=True)
    assert isinstance(fast, ChannelsLast) and fast.model is not model
    assert next(model.parameters()).is_contiguous()   # the explainers' model stays as it was
    scenes = SyntheticScenes("test", 2, size=96, seed=int(model.card.get("scene_seed", 0)))
    kw = dict(methods=["grad_cam", "fg_grad_cam"], layers=[13, "input"], metrics=["adai", "insdel"], progress=False,
              metric_kwargs={"insdel": {"step": 256}})
    ref = run_evaluation(model, pre, scenes, **kw)
    got = run_evaluation(model, pre, scenes, metric_channels_last=True, **kw)
    assert len(ref) == len(got) > 0
    torch.testing.assert_close(torch.tensor(got["value"].to_numpy()), torch.tensor(ref["value"].to_numpy()),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["bundled", "bundled_resnet"])
def test_channels_last_models_give_the_same_maps(name):
    model, pre = load_model(name)
    x = load_batch(SyntheticScenes("test", 2, size=96, seed=int(model.card.get("scene_seed", 0))), pre, 2).x
    ref = {m: make_explainer(m, model, preprocess=pre)(x, layer="input") for m in ("fg_grad_cam", "lrp")}
    cl = load_model(name)[0].to(memory_format=torch.channels_last)
    for m, r in ref.items():
        got = make_explainer(m, cl, preprocess=pre)(x.contiguous(memory_format=torch.channels_last), layer="input")
        torch.testing.assert_close(got, r, rtol=1e-4, atol=1e-5 * float(r.abs().max()))


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("method", list(METHODS))
def test_cuda_maps_equal_cpu_maps(bundled, method):
    model, pre, batch = bundled
    layer = "input" if supports(method, "input", model) else "13"
    cpu = make_explainer(method, model, preprocess=pre)(batch.x, layer=layer)
    gpu_model = load_model("bundled", device="cuda")[0]
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # float32 proper
    gpu = make_explainer(method, gpu_model, preprocess=pre)(batch.x.cuda(), layer=layer).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-4 * float(cpu.abs().max()))


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_runner_rows_equal_cpu_rows(bundled):
    from fgcam_lib.evaluation.runner import run_evaluation

    data = SyntheticScenes("test", 4, size=96)
    rows = {}
    for dev in ("cpu", "cuda"):
        model, pre = load_model("bundled", device=dev)
        rows[dev] = run_evaluation(model, pre, data, ["grad_cam", "fg_grad_cam"], ["13"], ["adai", "insdel"], n=4,
                                   progress=False).sort_values(["image_id", "method", "layer", "metric"])
    diff = (rows["cpu"]["value"].to_numpy() - rows["cuda"]["value"].to_numpy())
    assert abs(diff).max() < 1e-2  # A.D. in percent; curves' areas in [0, 1]
