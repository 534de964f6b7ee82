"""The workbench's interface: figures (:mod:`.viz`, :mod:`.plots`), the explorer (headless
:mod:`.explorer` on a :mod:`.session` and a settings :mod:`.state`, drawn by :mod:`.render`;
the ipywidgets app :mod:`.widgets`), the ``fgcam explain`` / ``fgcam scenes`` commands
(:mod:`.cli`) and the demo (:mod:`.demo`, ``python -m fgcam_lib.ui.demo``). Importing the
package loads none of them.
"""
