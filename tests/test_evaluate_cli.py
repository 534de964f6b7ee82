"""The evaluation command line's defaults: rows saved under results/, a progress bar that moves
within a batch, a short summary (raw rows behind --rows), cheap metrics unless asked, times in --help.

Runs the bundled layout with random weights on 2 benchmark scenes.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fgcam_lib.evaluation.cli import DEFAULT_METRICS, build_parser, main
from fgcam_lib.evaluation.store import read_results

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ["--weights", "random", "--n", "2", "--methods", "grad_cam,lrp", "--layers", "33,input",
         "--batch-size", "2", "--no-progress"]


def _stored(root: Path) -> list[Path]:
    return sorted((root / "results").glob("bench_benchmark_test_*.parquet"))


def test_rows_go_to_results_by_default_and_the_summary_is_short(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(QUICK) == 0
    printed = capsys.readouterr()
    (out,) = _stored(tmp_path)
    assert f"rows go to {Path('results') / out.name}" in printed.err
    assert f"rows of benchmark:test: {Path('results') / out.name}" in printed.out
    df = read_results(out)
    # cheap metrics only unless asked: no insertion/deletion
    assert set(df["metric"]) == {"average_drop", "average_increase", "proportion", "proportion_mask",
                                 "pointing_game"}
    # one line per method and layer (grad_cam is not defined at the input), metrics as columns
    table = printed.out.split("A.D./A.I. in %\n", 1)[1].split("\nrows of", 1)[0].splitlines()
    assert "A.D." in table[0] and "Proportion" in table[0] and "Pointing game" in table[0]
    body = [line for line in table[2:] if line.strip()]
    assert len(body) == 3 and all(" ± " in line for line in body)
    assert "image_id" not in printed.out  # no raw rows
    # a rerun resumes from the same file
    assert main(QUICK) == 0 and _stored(tmp_path) == [out] and len(read_results(out)) == len(df)


def test_raw_rows_behind_a_flag_and_no_save(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(QUICK + ["--rows", "--no-save"]) == 0
    printed = capsys.readouterr().out
    assert "image_id" in printed and "average_drop" in printed
    assert not (tmp_path / "results").exists() and "rows of" not in printed


def test_progress_bar_moves_per_method_within_a_batch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [a for a in QUICK if a != "--no-progress"] + ["--no-save"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    frames = [f for f in re.split(r"[\r\n]", err) if f.startswith("evaluate benchmark:test")]
    # one batch of 2 images, 2 methods: the bar passes 1/2 before the batch is done, with an ETA
    assert any(" 1/2 [" in f for f in frames) and any(" 2/2 [" in f for f in frames)
    assert any(re.search(r"\[\d+:\d+<\d+:\d+", f) for f in frames)
    assert any("2/2 images" in f for f in frames)


def test_help_states_the_measured_times_and_the_cheap_default():
    text = build_parser().format_help()
    assert DEFAULT_METRICS == ("adai", "proportion")
    assert "measured on 2 CPU cores" in text and "--num-images 8" in text and "insdel" in text
    assert "TIME_" not in text  # every placeholder replaced by a measured time
    assert re.search(r"--num-images 8\s+(about )?\d+ (s|min)", text)
