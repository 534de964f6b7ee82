"""How far FG-Grad-CAM and LRP maps differ on each bundled model: cosine, Spearman and relative distance
of the signed maps at the finest CAM layer and the input (64 test scenes, 95% bootstrap intervals).

    python scripts/fg_vs_lrp.py
"""
import torch
from fgcam_lib.data.models import load_model
from fgcam_lib.data.scenes import SyntheticScenes
from fgcam_lib.evaluation.batch import load_batch
from fgcam_lib.evaluation import metrics as M
from fgcam_lib.evaluation.stats import mean_ci
from fgcam_lib.methods.registry import make_explainer
torch.set_num_threads(1)
for name, layers in [("bundled", ["13", "input"]), ("bundled_vgg16bn_fc", ["13", "input"]), ("bundled_resnet", ["layer1", "input"])]:
    model, pre = load_model(name)
    b = load_batch(SyntheticScenes("test", 64, size=96, seed=int(model.card.get("scene_seed", 0))), pre)
    with torch.no_grad():
        t = model(b.x).argmax(1)
    for layer in layers:
        fg = make_explainer("fg_grad_cam", model, preprocess=pre)(b.x, t, layer=layer, signed=True).flatten(1)
        lrp = make_explainer("lrp", model, preprocess=pre)(b.x, t, layer=layer, signed=True).flatten(1)
        cos = torch.nn.functional.cosine_similarity(fg, lrp, dim=1).double().numpy()
        sim = M.similarity(fg.view(len(t), 1, -1), lrp.view(len(t), 1, -1))
        sp = sim["spearman"].double().numpy()
        rel = ((fg - lrp).norm(dim=1) / lrp.norm(dim=1)).double().numpy()
        c, s, r = mean_ci(cos), mean_ci(sp), mean_ci(rel)
        print(f"{name:20s} {layer:6s} cosine {c[0]:.5f} [{c[1]:.5f}, {c[2]:.5f}]  spearman {s[0]:.4f} [{s[1]:.4f}, {s[2]:.4f}]  "
              f"|FG-LRP|/|LRP| {r[0]:.4f} [{r[1]:.4f}, {r[2]:.4f}] (n={c[3]})", flush=True)
