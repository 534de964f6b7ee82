"""``python -m fgcam_lib.evaluation``: the evaluation runner's command line (:mod:`.cli`)."""
import sys

from .cli import main

sys.exit(main())
