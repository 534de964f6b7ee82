"""The paper's orderings (the claims notebook 06 checks) on each bundled model, from the rows under results/,
as one Markdown table: verdict, mean per-image advantage in the paper's direction, images.

    python scripts/orderings.py
"""
from __future__ import annotations

from pathlib import Path

from fgcam_lib.evaluation.claims import check_orderings, orderings_table
from fgcam_lib.evaluation.store import read_results

#: bundled model -> (checkpoint fingerprint, its CAM layers at 1/16, 1/8, 1/4 of the input)
MODELS = {"bundled": ("caf0404054", None), "bundled_vgg16bn_fc": ("4bb5dfdc7a", None),
          "bundled_resnet": ("240040638d", ["layer3", "layer2", "layer1"]),
          "bundled_vit": ("3b0456c634", [f"encoder.layers.encoder_layer_{k}.ln_1" for k in (2, 1, 0)]),
          "bundled_swin": ("5c82cc183e", ["features", "features.3", "features.1"])}


def main(root: str = "results") -> None:
    checked = {}
    for name, (fp, layers) in MODELS.items():
        rows = {s: read_results(p) if (p := Path(root) / f"bench_benchmark_{s}_{fp}.parquet").exists() else None
                for s in ("test", "loc")}
        checked[name] = check_orderings(rows["test"], rows["loc"], layers)
    table = orderings_table(checked)
    print("| table | claim | " + " | ".join(checked) + " |")
    print("|---|---|" + "---|" * len(checked))
    for claim, r in table.iterrows():
        print(f"| {r['table']} | {claim} | " + " | ".join(str(r[m]) for m in checked) + " |")
    for name, c in checked.items():
        ok = c[c["verdict"] != "not evaluated"]
        print(f"\n{name}: {int((ok['verdict'] == 'holds').sum())} of {len(ok)} evaluated claims hold "
              f"({int(((ok['verdict'] == 'holds') & ok['clear']).sum())} clearly), "
              f"{int((ok['verdict'] == 'reversed').sum())} reversed")


if __name__ == "__main__":
    main()
