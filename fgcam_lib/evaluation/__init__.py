"""Evaluation: the metrics by family (:mod:`.metrics`), the batch type and its regions
(:mod:`.batch`), the one metric dispatch (:mod:`.scoring`), the runner and its result
store (:mod:`.runner`, :mod:`.store`; command line :mod:`.cli`, ``python -m fgcam_lib.evaluation``),
the one summary, the paper's table layouts and text cells (:mod:`.tables`), the paper's
published numbers (:mod:`.published`), sanity checks (:mod:`.sanity`), ablation sweeps
(:mod:`.ablation`) and bootstrap statistics (:mod:`.stats`). Names and labels of metrics
and layers live in :mod:`fgcam_lib.catalogue`. Importing the package loads none of them.
"""
