"""Training the bundled benchmark models on the synthetic scenes: the loop (:mod:`.train`), the
typed config, named recipes and flags (:mod:`.recipes`) and the resumable checkpoint
(:mod:`.checkpoint`). Command line: ``python -m fgcam_lib.training --help`` (TRAINING.md).

    >>> from fgcam_lib.training.recipes import TINY, TrainConfig
    >>> from fgcam_lib.training.train import train
    >>> card = train(TrainConfig.from_dict({**TINY, "out": "/tmp/tiny.pt", "threads": 1}))

Importing the package loads none of them.
"""
