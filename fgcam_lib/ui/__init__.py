"""The workbench's interface: figures (:mod:`.viz`), the explorer (:mod:`.widgets`) and the demo
(:mod:`.demo`, ``python -m fgcam_lib.ui.demo``). Importing the package loads none of them.
"""
