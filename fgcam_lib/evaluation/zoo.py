"""Does the engine run a model, and does it conserve relevance there? One row per model.

:func:`check_model` runs FG-Grad-CAM, Grad-CAM and LRP on a model at its component layer,
a middle stage and the input, and measures, per preset, how much of the summed components
reaches the input. :data:`TIMM_FAMILIES` names one small model per timm CNN family and
:func:`torchvision_cnns` lists torchvision's classification CNNs: the zoo the test suite and
``python -m fgcam_lib.evaluation.zoo`` (the README's supported-architectures table) run, with
BatchNorm statistics like a trained network's (:func:`trained_like_bn`).

    >>> row = check_model(model, torch.randn(2, 3, 96, 96))
    >>> row["lost_canonical"], row["lost_paper"], row["error"]
"""
from __future__ import annotations

import argparse
import time
import warnings
from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["TIMM_FAMILIES", "SIZES", "torchvision_cnns", "trained_like_bn", "check_model", "relevance_lost",
           "middle_layer", "stages_below", "build", "zoo_input", "markdown", "main", "TRANSFORMERS", "check_methods",
           "transformer_table"]

#: one small model per timm CNN family: family -> model name (timm 1.0)
TIMM_FAMILIES: dict[str, str] = {
    "ResNet": "resnet10t", "SE-ResNet": "seresnet18", "ECA-ResNet": "ecaresnet26t",
    "ResNet-AA (anti-aliased)": "resnetaa34d", "ResNet blur pool": "resnetblur18", "ResNet-RS": "resnetrs50",
    "ResNetV2 (pre-activation)": "resnetv2_18", "Res2Net / Res2NeXt": "res2next50", "ResNeSt": "resnest14d",
    "SKNet": "skresnet18", "SENet (legacy)": "legacy_seresnet18", "DLA": "dla46x_c", "DPN": "dpn48b",
    "DenseNet": "densenet121", "VoVNet": "ese_vovnet19b_dw", "CSPNet": "cspresnet50", "CS3-DarkNet": "cs3darknet_focus_s",
    "DarkNet": "darknet17", "RegNetX": "regnetx_002", "RegNetY": "regnety_002", "RegNetZ": "regnetz_005",
    "ReXNet": "rexnet_100", "EfficientNet": "efficientnet_b0", "EfficientNet-Lite": "efficientnet_lite0",
    "EfficientNetV2": "efficientnetv2_rw_t", "TF EfficientNet ('same' padding)": "tf_efficientnet_b0",
    "TF EfficientNetV2": "tf_efficientnetv2_b0", "MixNet": "mixnet_s", "TF MixNet": "tf_mixnet_s",
    "MnasNet": "mnasnet_050", "SPNASNet": "spnasnet_100", "FBNet": "fbnetc_100", "MobileNetV2": "mobilenetv2_035",
    "TinyNet": "tinynet_e", "LCNet": "lcnet_035", "MobileNetV3": "mobilenetv3_small_050",
    "TF MobileNetV3": "tf_mobilenetv3_small_075", "FBNetV3": "fbnetv3_b", "GhostNet": "ghostnet_050",
    "GhostNetV3": "ghostnetv3_050", "HardCoReNAS": "hardcorenas_a", "RepGhostNet": "repghostnet_050",
    "RepViT": "repvit_m1", "HGNetV2": "hgnetv2_b0", "HGNet": "hgnet_tiny", "HRNet": "hrnet_w18_small",
    "Inception-v3": "inception_v3", "Inception-v4": "inception_v4", "Inception-ResNet-v2": "inception_resnet_v2",
    "Xception (legacy)": "legacy_xception", "Xception (aligned)": "xception41p", "NF-ResNet": "nf_resnet26",
    "NF-RegNet": "nf_regnet_b0", "ECA-NFNet": "eca_nfnet_l0", "SelecSLS": "selecsls42b", "TResNet": "tresnet_m",
    "VGG (timm)": "vgg11", "ConvNeXt": "convnext_atto", "ConvNeXt-V2": "convnextv2_atto",
    "ConvMixer": "convmixer_768_32", "InceptionNeXt": "inception_next_atto", "FasterNet": "fasternet_t0",
    "StarNet": "starnet_s050", "MambaOut": "mambaout_femto", "PoolFormer": "poolformer_s12",
    "PoolFormerV2": "poolformerv2_s12", "ConvFormer": "convformer_s18", "GENet": "gernet_s", "RepVGG": "repvgg_a0",
    "MobileOne": "mobileone_s1", "ResNeXt (BYOB)": "resnext26ts", "GC-ResNeXt": "gcresnext26ts",
    "LCNetV2": "lcnetv2_small", "RDNet": "rdnet_tiny", "CSPNeXt": "cspnext_tiny", "CPUBone": "cpubone_nano",
    "MobileNet-EdgeTPU": "mobilenet_edgetpu_100", "EfficientNet-ES (EdgeTPU)": "efficientnet_es",
    "SE-MnasNet": "semnasnet_050", "CondConv EfficientNet": "efficientnet_cc_b0_4e",
}

#: input sizes for models that need more than the default
SIZES: dict[str, int] = {"inception_v3": 96, "inception_v4": 96, "inception_resnet_v2": 96, "googlenet": 96,
                         "legacy_xception": 96, "hrnet_w18_small": 96}

#: families that are not CNNs: left to the transformer work
_TRANSFORMERS = ("vit_", "swin_", "maxvit_")


def torchvision_cnns() -> list[str]:
    """torchvision's classification models, transformers (ViT, Swin, MaxViT) left out."""
    import torchvision

    return [n for n in torchvision.models.list_models(module=torchvision.models) if not n.startswith(_TRANSFORMERS)]


def trained_like_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics like a trained network's, in place: running means in [-0.2, 0.2],
    running variances in [0.5, 1.5], scales in [0.5, 1.5], shifts in [-0.1, 0.3]. Fresh
    initialisation makes every BN the identity, which hides what a shift does to relevance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.1)
    return model


def build(name: str, source: str = "timm", num_classes: int = 10) -> nn.Module:
    """A random-init model from timm or torchvision, trained-like BN statistics, eval mode."""
    torch.manual_seed(0)
    if source == "timm":
        import timm

        model = timm.create_model(name, num_classes=num_classes)
    else:
        import torchvision

        kwargs: dict[str, Any] = {"num_classes": num_classes}
        if name in ("googlenet", "inception_v3"):
            kwargs["aux_logits"] = False
            kwargs["init_weights"] = False
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    return trained_like_bn(model).eval()


def zoo_input(model: nn.Module, size: int) -> torch.Tensor:
    """Two random images (one for models over 50M parameters, to keep the zoo's time down)."""
    n = 1 if sum(p.numel() for p in model.parameters()) > 50_000_000 else 2
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def stages_below(explainer: Any, x: torch.Tensor) -> list[str]:
    """The model's stages below the component layer, deepest first (ResNet: ``layer3``,
    ``layer2``, ``layer1``, the stem), found with one forward of one image of ``x``."""
    from ..engine.walk import forward

    graph = explainer.graph
    shapes = forward(graph, x[:1]).shapes
    return [graph.name(p) for p in graph.stages(shapes) if p != explainer.component_position]


def middle_layer(explainer: Any, x: torch.Tensor) -> str:
    """A stage between the input and the component layer, by module path: the middle one of
    the model's resolutions (ResNet: ``layer2``)."""
    stages = stages_below(explainer, x)
    return stages[len(stages) // 2] if stages else explainer.component_layer


def relevance_lost(model: nn.Module, x: torch.Tensor, rules: str) -> float:
    """FG-Grad-CAM from the component layer to the input: the largest, over the images, of
    (summed components - summed input relevance) / summed |components|."""
    from ..methods.fgcam import FGCAM

    fg = FGCAM(model, rules=rules)
    return _lost(fg.explain(x, layer=["input", fg.component_layer]), fg.component_layer)


def _lost(e: Any, top_layer: str) -> float:
    top = e.components[top_layer].double()
    lost = top.sum((1, 2, 3)) - e.components["input"].double().sum((1, 2, 3))
    return float((lost / top.abs().sum((1, 2, 3)).clamp_min(1e-30)).abs().max())


def _line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def check_model(model: nn.Module, x: torch.Tensor, paper: bool = True) -> dict[str, Any]:
    """Run FG-Grad-CAM (canonical), Grad-CAM and LRP at the component layer, a middle stage
    and the input; measure relevance lost with the canonical preset (and the paper preset unless
    ``paper=False``). Errors are caught and reported: ``error`` for FG-CAM and the CAMs,
    ``lrp_error`` for LRP from the logits."""
    from ..methods.cam import GradCAM
    from ..methods.fgcam import FGCAM, LRP

    row: dict[str, Any] = {"component_layer": "", "middle_layer": "", "lost_canonical": float("nan"),
                           "lost_paper": float("nan"), "error": "", "lrp_error": ""}
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fg = FGCAM(model, rules="canonical")
            row["component_layer"] = fg.component_layer
            mid = row["middle_layer"] = middle_layer(fg, x)
            e = fg.explain(x, layer=["input", mid, fg.component_layer])
            assert all(bool(torch.isfinite(e.map(k)).all()) for k in ("input", mid))
            row["lost_canonical"] = _lost(e, fg.component_layer)
            GradCAM(model)(x, layer=[fg.component_layer, mid])
            if paper:
                row["lost_paper"] = relevance_lost(model, x, "paper")
    except Exception as exc:  # the row says what stopped it
        row["error"] = _line(exc)
    if not row["error"]:
        try:  # LRP starts at the logits: the head above the component layer needs rules too
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                LRP(model, rules="canonical")(x, layer=["input", row["middle_layer"]])
        except Exception as exc:
            row["lrp_error"] = _line(exc)
    row["seconds"] = time.perf_counter() - start
    return row


#: torchvision's vision transformers and the size each runs at
TRANSFORMERS: dict[str, int] = {"vit_b_16": 224, "vit_b_32": 224, "swin_t": 224, "swin_v2_t": 256, "maxvit_t": 224}


def check_methods(model: nn.Module, x: torch.Tensor, skip: Sequence[str] = ()) -> dict[str, str]:
    """Every registered method but ``skip`` on ``model`` (CAMs at the component layer, FG-CAM and
    LRP at the input): ``{method: "runs" or the error's first line}``."""
    from ..methods.registry import METHODS, make_explainer

    out: dict[str, str] = {}
    for name, spec in METHODS.items():
        if name in skip:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ex = make_explainer(name, model)
                layer = getattr(ex, "default_layer", None) if spec.family == "cam" else "input"
                m = ex(x, layer=layer)
                if not bool(torch.isfinite(m).all()):
                    raise ValueError("non-finite map")
            out[name] = "runs"
        except Exception as exc:  # the table says what stopped it
            out[name] = _line(exc)
    return out


def transformer_table(names: Sequence[str] = tuple(TRANSFORMERS), seconds: bool = True,
                      skip: Sequence[str] = ()) -> Any:
    """One row per torchvision transformer (random weights, one random image): the component
    layer, relevance lost with the canonical preset and whether each registered method but
    ``skip`` runs."""
    import pandas as pd
    import torchvision

    rows = []
    for name in names:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
        if hasattr(model, "heads"):  # a zero-initialised head gives all-zero logits
            nn.init.normal_(model.heads.head.weight, std=0.02)
        x = torch.randn(1, 3, TRANSFORMERS.get(name, 224), TRANSFORMERS.get(name, 224),
                        generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        runs = check_methods(model, x, skip)
        row = {"model": name, "size": x.shape[-1], "component_layer": "",
               "lost_canonical": float("nan"), "methods_run": sum(v == "runs" for v in runs.values()),
               "methods": len(runs), "failures": "; ".join(f"{k}: {v}" for k, v in runs.items() if v != "runs")}
        try:
            from ..methods.fgcam import FGCAM

            row["component_layer"] = FGCAM(model).component_layer
            row["lost_canonical"] = relevance_lost(model, x, "canonical")
        except Exception as exc:
            row["failures"] += f"; conservation: {_line(exc)}"
        if seconds:
            row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> None:
    """Check the zoo and write a CSV (one row per model) and the README's Markdown table."""
    import pandas as pd
    from tqdm.auto import tqdm

    p = argparse.ArgumentParser(prog="python -m fgcam_lib.evaluation.zoo", description=main.__doc__)
    p.add_argument("--out", default="results/zoo.csv")
    p.add_argument("--size", type=int, default=64, help="input side in pixels (SIZES overrides per model)")
    p.add_argument("--only", nargs="*", help="model names to check (default: the whole zoo)")
    p.add_argument("--markdown", default="docs/zoo.md", help="where the Markdown table goes ('' for nowhere)")
    p.add_argument("--skip", nargs="*", default=[], help="with --transformers: methods not to run")
    p.add_argument("--transformers", action="store_true",
                   help="instead: torchvision's vision transformers, every registered method (results/zoo_transformers.csv)")
    args = p.parse_args(argv)
    if args.transformers:
        # Score-CAM's masked forward passes (768 on a ViT-B) are left to the bundled models' tests
        table = transformer_table(args.only or tuple(TRANSFORMERS), skip=args.skip)
        table.to_csv("results/zoo_transformers.csv", index=False)
        print(table.to_string())
        return
    jobs = [("timm", fam, name) for fam, name in TIMM_FAMILIES.items()]
    jobs += [("torchvision", name, name) for name in torchvision_cnns()]
    if args.only:
        jobs = [j for j in jobs if j[2] in args.only]
    rows = []
    for source, family, name in tqdm(jobs, desc="zoo"):
        size = SIZES.get(name, args.size)
        try:
            model = build(name, source)
        except Exception as exc:
            rows.append({"source": source, "family": family, "model": name, "size": size,
                         "error": f"does not build: {type(exc).__name__}"})
            continue
        x = zoo_input(model, size)
        rows.append({"source": source, "family": family, "model": name, "size": size, **check_model(model, x)})
        del model
    table = pd.DataFrame(rows)
    table.to_csv(args.out, index=False)
    text = HEADER + markdown(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    print(text)


HEADER = """# The zoo: what runs, and how much relevance each preset loses

Written by `python -m fgcam_lib.evaluation.zoo` (the same checks run in `tests/test_zoo.py`). One
small model per timm CNN family and every torchvision classification CNN, **random weights with
BatchNorm statistics like a trained network's** (`trained_like_bn`: running means in [-0.2, 0.2],
variances in [0.5, 1.5], scales in [0.5, 1.5], shifts in [-0.1, 0.3]); random images of `px` x `px`
(two, one for models over 50M parameters). *FG-CAM, CAMs*: FG-Grad-CAM (canonical preset) at the
input and a middle stage, Grad-CAM at the component layer and that stage. *LRP*: from the logits to
the input and the middle stage. *lost*: FG-Grad-CAM's relevance lost from the component layer to
the input, (summed components - summed input relevance) / summed |components|, the worst image.
The canonical preset's bar is 1e-4; the paper preset is the authors' z+, which drops the relevance
of outputs no input contributes to.

"""


def markdown(table: Any) -> str:
    """The per-model table as Markdown: what runs, the component layer, relevance lost per preset."""
    def cell(v: float) -> str:
        return "-" if v != v else ("< 1e-7" if v < 1e-7 else f"{v:.1e}")

    lines = ["| source | family | model | px | component layer | FG-CAM, CAMs | LRP | lost, canonical | lost, paper |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        error, lrp = (getattr(r, "error", "") or ""), (getattr(r, "lrp_error", "") or "")
        error, lrp = ("" if error != error else error), ("" if lrp != lrp else lrp)
        runs = "runs" if not error else f"no: {error.replace('|', '/')}"
        lrp_text = "-" if error else ("runs" if not lrp else f"no: {lrp.replace('|', '/')}")
        layer = f"`{r.component_layer}`" if isinstance(r.component_layer, str) and r.component_layer else "-"
        lines.append(f"| {r.source} | {r.family} | `{r.model}` | {r.size} | {layer} | {runs} | {lrp_text} | "
                     f"{cell(r.lost_canonical)} | {cell(r.lost_paper)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
