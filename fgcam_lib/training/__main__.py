"""``python -m fgcam_lib.training``: train a bundled model (:func:`.train.main`); exit status 3
when ``--stop-after`` ends the run early (the way tests stand in for a killed run)."""
import sys

from .checkpoint import TrainingStopped, log
from .train import main

try:
    main()
except TrainingStopped as stop:
    log(str(stop))
    sys.exit(3)
