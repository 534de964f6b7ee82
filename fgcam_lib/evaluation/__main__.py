"""``python -m fgcam_lib.evaluation``: the evaluation runner's command line."""
import sys

from .runner import main

sys.exit(main())
