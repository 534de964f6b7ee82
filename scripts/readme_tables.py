"""Print the evaluation results as Markdown tables (Tables 1-6 layouts, mean ± 95% CI).

    python scripts/readme_tables.py results/bench_benchmark_test_<fp>.parquet results/bench_benchmark_loc_<fp>.parquet
    python scripts/readme_tables.py --layers layer3,layer2,layer1 results/bench_*_240040638d.parquet   # the bundled ResNet
    python scripts/readme_tables.py --ties results/ties_benchmark_test_<fp>.parquet                   # tie-seed spreads

``--layers``: the model's three CAM layers (deepest first), shown in the paper's Layer33 /
Layer23 / Layer13 columns.
"""
from __future__ import annotations

import sys

import pandas as pd

from fgcam_lib.catalogue import METHOD_LABELS
from fgcam_lib.evaluation.published import to_paper_layers
from fgcam_lib.evaluation.store import read_results
from fgcam_lib.evaluation.tables import format_table, summarize
from fgcam_lib.evaluation.ties import tie_spread
from fgcam_lib.methods.registry import PAPER_CAM_METHODS, PAPER_INPUT_METHODS


def markdown(df: pd.DataFrame) -> str:
    df = df.copy()
    df.columns = [" ".join(str(c) for c in col if str(c)) if isinstance(col, tuple) else str(col) for col in df.columns]
    head = "| " + " | ".join([df.index.name or ""] + list(df.columns)) + " |"
    rule = "|" + "---|" * (len(df.columns) + 1)
    name = lambda i: " ".join(str(v) for v in i) if isinstance(i, tuple) else str(i)  # noqa: E731
    rows = ["| " + " | ".join([name(i)] + [str(v) for v in r]) + " |" for i, r in zip(df.index, df.values)]
    return "\n".join([head, rule] + rows)


def ties(paths: list[str]) -> None:
    """Per method and layer: the spread (max - min) of the A.D. / A.I. means over the tie seeds."""
    rows = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    in_tables = [(m in PAPER_CAM_METHODS and l != "input") or (m in PAPER_INPUT_METHODS and l == "input")
                 for m, l in zip(rows["method"], rows["layer"])]
    s = tie_spread(rows[in_tables])["spread"].unstack("metric")
    seeds = ", ".join(str(int(v)) for v in sorted(rows["seed"].unique()))
    cells = {(m, l): f"{r['average_drop']:.2f} / {r['average_increase']:.0f}" for (m, l), r in s.iterrows()}
    layers = list(dict.fromkeys(l for _, l in cells))
    layers = sorted(layers, key=lambda l: (l == "input", -int("".join(c for c in l if c.isdigit()) or 0)))
    methods = list(dict.fromkeys([*PAPER_CAM_METHODS, *PAPER_INPUT_METHODS]))
    table = pd.DataFrame({l: [cells.get((m, l), "") for m in methods] for l in layers},
                         index=[METHOD_LABELS.get(m, m) for m in methods])
    table.index.name = f"A.D. / A.I. spread, tie seeds {seeds}, {int(rows['image_id'].nunique())} images"
    print(markdown(table))


def main(paths: list[str], layers: list[str] | None = None) -> None:
    df = pd.concat([read_results(p) for p in paths], ignore_index=True)
    if layers:
        df = to_paper_layers(df, layers)
    n = df.groupby(["data", "metric"])["image_id"].nunique()
    print("images per metric: " + "; ".join(f"{d} {m} {c}" for (d, m), c in n.items()))
    for k in range(1, 7):
        t = summarize(df, table=k)
        if t.empty:
            continue
        print(f"\nTable {k}\n")
        print(markdown(format_table(t)))


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        sys.exit(__doc__)
    if args[0] == "--ties":
        ties(args[1:])
    elif args[0] == "--layers":
        main(args[2:], args[1].split(","))
    else:
        main(args)
