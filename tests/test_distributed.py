"""The runner under torchrun: 2 CPU ranks (gloo) give a single process's rows, and a run whose rank
is killed resumes to the same rows with no duplicates or gaps."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fgcam_lib.data.models import load_model
from fgcam_lib.data.scenes import SyntheticScenes
from fgcam_lib.evaluation.distributed import SINGLE, Ranks, from_env, rank_device
from fgcam_lib.evaluation.runner import _Plan, run_evaluation

KEY = ["image_id", "method", "layer", "metric"]


class _Offline(Ranks):
    """A rank without a process group: enough to ask which windows it owns."""

    def barrier(self) -> None:
        pass


def test_windows_are_split_between_ranks_exactly_once():
    model, _ = load_model("bundled")
    data = SyntheticScenes("test", 23, size=96)
    args = (model, data, ["grad_cam"], ["13"], ["adai"], 23, None, "d", {})
    single = _Plan(*args).batches(4)
    for world in (2, 3, 7):
        parts = [_Plan(*args, ranks=_Offline(rank=r, world=world)).batches(4) for r in range(world)]
        windows = sorted(w for p in parts for w in p)
        assert windows == sorted(single)  # every window once, and the same windows as one process
        assert all(w[0] // 4 % world == r for r, p in enumerate(parts) for w in p)


def test_without_torchrun_nothing_changes(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_env("cpu") is SINGLE and not SINGLE.distributed and SINGLE.gather(5) == [5]
    assert rank_device("cuda", SINGLE) == "cuda"
    assert rank_device("cuda", Ranks(rank=3, world=4, local_rank=1)) == "cuda:1"
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        from_env("cpu")


def _torchrun(out: Path, n: int, metrics: str, batch: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "fgcam_lib.evaluation", "--model", "bundled", "--data", "benchmark:test",
           "--num-images", str(n), "--methods", "grad_cam,fg_grad_cam", "--layers", "13",
           "--metrics", metrics, "--batch-size", str(batch), "--threads", "1", "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "agg"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def _reference(n: int, metrics: list[str], batch: int) -> pd.DataFrame:
    model, pre = load_model("bundled")
    df = run_evaluation(model, pre, SyntheticScenes("test", n, size=96, seed=int(model.card.get("scene_seed", 0))),
                        ["grad_cam", "fg_grad_cam"], ["13"], metrics, n=n, batch_size=batch, progress=False,
                        data_name="benchmark:test")
    return df.sort_values(KEY).reset_index(drop=True)


def _rows(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values(KEY).reset_index(drop=True)


def test_two_gloo_ranks_give_the_single_process_rows(tmp_path):
    out = tmp_path / "rows.parquet"
    proc = _torchrun(out, 8, "adai", 2)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert sum("rank0" in p for p in parts) == 2 and sum("rank1" in p for p in parts) == 2  # 4 windows, 2 each
    assert "fg_grad_cam" in log and "A.D." in log  # rank 0 printed the merged summary
    got, ref = _rows(out), _reference(8, ["adai"], 2)
    pd.testing.assert_frame_equal(got, ref[got.columns])


def _descendants(root: int) -> list[int]:
    """Process ids below ``root`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _rank_pid(root: int, rank: int) -> int | None:
    for pid in _descendants(root):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
            return pid
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_killed_rank_resumes_without_duplicates_or_gaps(tmp_path):
    out, n = tmp_path / "rows.parquet", 12
    proc = _torchrun(out, n, "adai", 1)  # 12 windows of one image, 6 per rank
    deadline = time.time() + 300
    while not list(out.glob("part-*-rank1-*.parquet")):
        assert proc.poll() is None and time.time() < deadline, "rank 1 never wrote a part"
        time.sleep(0.02)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, "the run finished before rank 1 was killed"
    first = list(out.glob("part-*.parquet"))
    assert 0 < len(first) < n  # stopped part-way

    proc = _torchrun(out, n, "adai", 1)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    got = _rows(out)
    assert not got.duplicated(KEY).any()
    assert len(list(out.glob("part-*.parquet"))) == n  # each window written once, over both runs
    ref = _reference(n, ["adai"], 1)
    pd.testing.assert_frame_equal(got, ref[got.columns])
