"""Evaluation: the metrics (:mod:`.metrics`), the runner and its result store and paper tables
(:mod:`.runner`, ``python -m fgcam_lib.evaluation``), the paper's published numbers
(:mod:`.published`), sanity checks (:mod:`.sanity`), ablations (:mod:`.ablation`) and
bootstrap statistics (:mod:`.stats`). Importing the package loads none of them.
"""
