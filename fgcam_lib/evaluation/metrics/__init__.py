"""Faithfulness, localisation and sanity metrics for saliency maps.

Conventions shared by every function here:

* images ``x`` are ``B x C x H x W`` tensors, already normalised the way the model
  expects; ``model(x)`` returns logits ``B x K``. Put the model in ``eval()`` mode
  first (the metrics never change its mode; batch-norm in training mode would make
  the scores depend on the batch).
* maps are ``B x h x w`` tensors of any resolution (a 7 x 7 CAM or a full-resolution
  LRP map), possibly signed. They are upsampled to ``H x W`` by
  :func:`upsample_maps` (bilinear, ``align_corners=False`` by default).
* every metric returns per-image tensors (on the images' device); means are left to
  the caller, so that confidence intervals stay possible.
* perturbed images are built as tensors in chunks and pushed through the model in
  batches of ``batch_size`` under :func:`torch.inference_mode`.

The faithfulness metrics follow the FG-CAM paper: Average Drop / Increase keeping the
most important 50% of the pixels and blurring the rest (Gaussian blur, kernel 51,
sigma 50, after Group-CAM); insertion / deletion with 448 pixels per step at
224 x 224 and the RISE area under the curve; Proportion of the map's positive mass
inside the ground-truth box. ROAD (Rong et al., 2022) and the pointing game (TorchRay)
are provided for comparison, and the cascading randomisation check of Adebayo et al.
(2018) for sanity.

One module per family: :mod:`.maps` (upsampling, the blurred baseline, pixel ranks),
:mod:`.drop_increase`, :mod:`.insertion_deletion`, :mod:`.localization`, :mod:`.road`,
:mod:`.similarity` (similarity and cascading randomisation); this package exposes them all.

    >>> from fgcam_lib.evaluation import metrics as M
    >>> M.average_drop_increase(model, x, maps, signed=False).drop        # per image, percent

Choices where the paper is silent are documented on each function; the most
important one: ties in a map (CAM maps have many exact zeros) are broken by a random
permutation drawn from ``seed``, never by raster order.
"""

from __future__ import annotations

from .common import PAPER_AREA, PAPER_BLUR_KERNEL, PAPER_BLUR_SIGMA, PAPER_N_STEPS, PAPER_STEP
from .drop_increase import DropIncrease, average_drop_increase, keep_mask
from .insertion_deletion import InsertionDeletion, default_step, insertion_deletion
from .localization import boxes_to_masks, max_points, pointing_game, proportion, proportion_mask
from .maps import blur_baseline, gaussian_kernel1d, pixel_ranks, rank_pixels, upsample_maps
from .road import RoadResult, impute_linear, road
from .similarity import cascading_randomization, reset_parameters, similarity

__all__ = [
    "PAPER_STEP",
    "PAPER_AREA",
    "PAPER_N_STEPS",
    "PAPER_BLUR_KERNEL",
    "PAPER_BLUR_SIGMA",
    "DropIncrease",
    "InsertionDeletion",
    "RoadResult",
    "upsample_maps",
    "gaussian_kernel1d",
    "blur_baseline",
    "rank_pixels",
    "pixel_ranks",
    "keep_mask",
    "default_step",
    "average_drop_increase",
    "insertion_deletion",
    "boxes_to_masks",
    "proportion",
    "proportion_mask",
    "max_points",
    "pointing_game",
    "impute_linear",
    "road",
    "similarity",
    "cascading_randomization",
    "reset_parameters",
]
