"""Print the evaluation results as Markdown tables (Tables 1-6 layouts, mean ± 95% CI).

    python scripts/readme_tables.py results/bench_benchmark_test_<fp>.parquet results/bench_benchmark_loc_<fp>.parquet
"""
from __future__ import annotations

import sys

import pandas as pd

from fgcam_lib.evaluation.runner import format_table, read_results, summarize


def markdown(df: pd.DataFrame) -> str:
    df = df.copy()
    df.columns = [" ".join(str(c) for c in col if str(c)) if isinstance(col, tuple) else str(col) for col in df.columns]
    head = "| " + " | ".join([df.index.name or ""] + list(df.columns)) + " |"
    rule = "|" + "---|" * (len(df.columns) + 1)
    name = lambda i: " ".join(str(v) for v in i) if isinstance(i, tuple) else str(i)  # noqa: E731
    rows = ["| " + " | ".join([name(i)] + [str(v) for v in r]) + " |" for i, r in zip(df.index, df.values)]
    return "\n".join([head, rule] + rows)


def main(paths: list[str]) -> None:
    df = pd.concat([read_results(p) for p in paths], ignore_index=True)
    n = df.groupby(["data", "metric"])["image_id"].nunique()
    print("images per metric: " + "; ".join(f"{d} {m} {c}" for (d, m), c in n.items()))
    for k in range(1, 7):
        t = summarize(df, table=k)
        if t.empty:
            continue
        print(f"\nTable {k}\n")
        print(markdown(format_table(t)))


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    main(sys.argv[1:])
