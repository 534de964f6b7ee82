"""Tests of the training script: the config, checkpoints and resumption."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from fgcam_lib.training.checkpoint import TrainingStopped, checkpoint_path, load_checkpoint
from fgcam_lib.training.recipes import RECIPES, TINY, TrainConfig, parse_config
from fgcam_lib.training.train import OneCycle, main, train

ARCHS = ("bundled", "bundled_vgg16bn_fc", "bundled_resnet")


def _tiny(tmp_path: Path, name: str, **over: object) -> TrainConfig:
    # two epochs of three steps, so a resume crosses an epoch boundary
    base = {**TINY, "epochs": 2, "out": tmp_path / name / "m.pt", "threads": 1, "log_steps": 0, **over}
    return TrainConfig.from_dict(base)


def test_config_round_trips_through_dict_and_json(tmp_path: Path) -> None:
    for over in ({}, RECIPES["bundled_resnet"], RECIPES["bundled_vgg16bn_fc"], TINY):
        cfg = TrainConfig.from_dict({**over, "cache": tmp_path, "ckpt": tmp_path / "x.ckpt"})
        assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="nope"):
        TrainConfig.from_dict({"nope": 1})


def test_command_line_parses_into_config() -> None:
    cfg = parse_config(["--recipe", "bundled_resnet", "--threads", "1", "--widths", "8", "16", "32", "64"])
    assert cfg.arch == "bundled_resnet" and cfg.size == 96 and cfg.minutes == RECIPES["bundled_resnet"]["minutes"]
    assert cfg.threads == 1 and cfg.widths == (8, 16, 32, 64)  # explicit flags win over the recipe
    assert parse_config(["--tiny"]).size == TINY["size"]
    assert parse_config([]) == TrainConfig()
    assert parse_config(["--resume"]).resume is True
    assert parse_config(["--recipe", "bundled_vgg16bn_fc"]).init is not None
    assert parse_config(["--recipe", "bundled_vgg16bn_fc", "--init", "none"]).init is None


def test_the_bundled_recipe_defaults_stay() -> None:
    # the committed bundled_vgg16bn card was made with these (TRAINING.md passes the rest)
    cfg = TrainConfig()
    assert (cfg.arch, cfg.width_div, cfg.dropout, cfg.wd, cfg.lr, cfg.n_val) == ("bundled", 8, 0.2, 5e-4, 2e-3, 300)
    assert cfg.arch_kwargs()["cfg"][-2] == 64


def test_one_cycle_by_steps_and_by_time() -> None:
    s = OneCycle(1e-3, total_steps=100)
    assert s.lr(0, 0.0) == pytest.approx(5e-5) and s.lr(10, 0.0) == pytest.approx(1e-3)
    assert s.done(100, 0.0) and not s.done(99, 0.0)
    t = OneCycle(1e-3, total_steps=10 ** 6, budget_seconds=60.0)
    assert t.done(1, 60.0) and t.progress(0, 30.0) == 0.5
    u = OneCycle(0.0, 1)
    u.load_state_dict(t.state_dict())
    assert u.state_dict() == t.state_dict()


@pytest.mark.parametrize("arch", ["bundled_resnet", "bundled"])
def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path: Path, arch: str) -> None:
    ref_cfg = _tiny(tmp_path, "ref", arch=arch)
    ref = train(ref_cfg)
    # killed after 5 steps, checkpoints at steps 2, 3 (epoch end) and 4: step 5 is redone mid-epoch
    cut = _tiny(tmp_path, "cut", arch=arch, ckpt_steps=2, stop_after=5)
    with pytest.raises(TrainingStopped):
        train(cut)
    state = load_checkpoint(checkpoint_path(cut))
    assert state["state"]["step"] == 4 and state["state"]["epoch"] == 1 and state["state"]["k"] == 1
    assert state["scene_seed"] == cut.seed and set(state) >= {"model", "opt", "sched", "gen", "torch_rng"}
    resumed = train(TrainConfig.from_dict({**cut.to_dict(), "stop_after": 0, "resume": True}))
    a = torch.load(ref_cfg.out, weights_only=True)["state_dict"]
    b = torch.load(cut.out, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["fingerprint"] == ref["fingerprint"] and resumed["resumes"] == 1
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in ref["history"]])


def test_resume_of_a_finished_run_only_rewrites_the_card(tmp_path: Path) -> None:
    cfg = _tiny(tmp_path, "done", epochs=1)
    first = train(cfg)
    again = train(TrainConfig.from_dict({**cfg.to_dict(), "resume": True, "epochs": 5}))  # recipe: checkpoint's
    assert again["steps"] == first["steps"] and again["fingerprint"] == first["fingerprint"]


def test_command_line_run_writes_card_and_state(tmp_path: Path) -> None:
    out = tmp_path / "cli" / "m.pt"
    card = main(["--tiny", "--arch", "bundled_vgg16bn_fc", "--out", str(out), "--threads", "1", "--log-steps", "0"])
    on_disk = json.loads(out.with_suffix(".json").read_text())
    assert on_disk["fingerprint"] == card["fingerprint"] and on_disk["arch"] == "bundled_vgg16bn_fc"
    assert on_disk["command"].startswith("python -m fgcam_lib.training --tiny")
    assert Path(str(out) + ".ckpt").is_file()
    assert on_disk["train_config"]["hidden"] == TINY["hidden"]


def test_init_loads_the_matching_tensors_only(tmp_path: Path) -> None:
    base = train(_tiny(tmp_path, "base", epochs=1))
    fc = train(_tiny(tmp_path, "fc", epochs=1, arch="bundled_vgg16bn_fc", init=tmp_path / "base" / "m.pt"))
    prior = fc["fine_tuned_from"]
    n_features = sum(1 for k in torch.load(tmp_path / "base" / "m.pt", weights_only=True)["state_dict"]
                     if k.startswith("features."))
    assert prior["tensors_loaded"] == n_features and prior["arch"] == base["arch"] == "bundled"


@pytest.mark.skipif(os.environ.get("FGCAM_QUICK") == "1", reason="a subprocess, ~10-20 s: runs in make test-lib")
def test_killed_process_resumes_to_the_same_weights(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    ref = train(_tiny(tmp_path, "ref", epochs=3))
    cut = _tiny(tmp_path, "killed", epochs=3, ckpt_steps=1)
    args = ["--tiny", "--epochs", "3", "--ckpt-steps", "1", "--threads", "1", "--log-steps", "0", "--out", str(cut.out)]
    proc = subprocess.Popen([sys.executable, "-m", "fgcam_lib.training", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not checkpoint_path(cut).is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # wherever it is: the state file is either the old or the new one
    proc.wait()
    resumed = train(TrainConfig.from_dict({**cut.to_dict(), "resume": True}))
    assert resumed["fingerprint"] == ref["fingerprint"] and resumed["steps"] == ref["steps"]
    assert resumed["resumes"] == 1


def test_training_modules_list_what_they_define() -> None:
    # one home per name: the loop, the config and the checkpoint each list only their own names
    from fgcam_lib.training import checkpoint, recipes, train as T

    for mod in (T, recipes, checkpoint):
        for name in mod.__all__:
            assert getattr(getattr(mod, name), "__module__", mod.__name__) == mod.__name__, (mod, name)
    assert not hasattr(T, "_resumed_config") and not hasattr(T, "_coerce")


def test_training_is_its_own_package() -> None:
    import importlib.util

    for old in ("fgcam_lib.data.train", "fgcam_lib.data.recipes", "fgcam_lib.data.checkpoint"):
        assert importlib.util.find_spec(old) is None, old


def test_checkpoint_keys_stay(tmp_path: Path) -> None:
    # runs in progress are resumed from these keys; renaming one breaks them
    cfg = _tiny(tmp_path, "keys", epochs=1, ckpt_steps=1, stop_after=2)
    with pytest.raises(TrainingStopped):
        train(cfg)
    blob = load_checkpoint(checkpoint_path(cfg))
    assert set(blob) == {"config", "state", "model", "opt", "sched", "gen", "torch_rng", "scene_seed",
                         "data_checksum", "cuda_rng"}
    assert list(blob["config"]) == [f.name for f in dataclasses.fields(TrainConfig)]
