"""Tie seeds: maps without ties score the same under every seed, flat maps do not, and the spread
table is the max - min of the per-seed means."""
from __future__ import annotations

import pandas as pd
import pytest

from fgcam_lib.data.models import load_model
from fgcam_lib.data.scenes import SyntheticScenes
from fgcam_lib.evaluation.ties import tie_rows, tie_spread


def test_spread_is_max_minus_min_of_the_seed_means():
    rows = pd.DataFrame({
        "method": "m", "layer": "13", "metric": "average_drop",
        "image_id": ["a", "b", "a", "b", "a", "b"], "seed": [0, 0, 1, 1, 2, 2],
        "value": [10.0, 20.0, 12.0, 20.0, 10.0, 26.0]})
    s = tie_spread(rows).loc[("m", "13", "average_drop")]
    assert (s["mean_seed0"], s["mean_seed1"], s["mean_seed2"]) == (15.0, 16.0, 18.0)
    assert s["spread"] == 3.0 and s["max_image"] == 6.0 and s["n"] == 2


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    model, pre = load_model("bundled")
    data = SyntheticScenes("test", 4, size=96, seed=int(model.card.get("scene_seed", 0)))
    out = tmp_path_factory.mktemp("ties") / "t.parquet"
    first = tie_rows(model, pre, data, ["grad_cam", "lrp"], ["13", "input"], ["adai"], seeds=(0, 1), n=2,
                     out=out, batch_size=2, progress=False)
    assert first["image_id"].nunique() == 2
    return tie_rows(model, pre, data, ["grad_cam", "lrp"], ["13", "input"], ["adai"], seeds=(0, 1), n=4,
                    out=out, batch_size=2, progress=False)  # resumes: only two more images


def test_rows_resume_and_cover_every_seed(rows):
    assert rows["image_id"].nunique() == 4 and not rows.duplicated(["image_id", "method", "layer", "metric", "seed"]).any()
    assert set(rows["seed"]) == {0, 1}


def test_ties_move_coarse_cam_maps_and_not_continuous_ones(rows):
    s = tie_spread(rows)
    # LRP's input maps are continuous: no ties, the seed changes nothing
    assert s.loc[("lrp", "input", "average_drop"), "max_image"] == 0
    # Grad-CAM at layer 13 is ~40% exact zeros (ReLU): the 50% cut falls inside the tie
    assert s.loc[("grad_cam", "13", "average_drop"), "max_image"] > 0.1
