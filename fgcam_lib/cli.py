"""The ``fgcam`` command: explain image files, write benchmark scenes, or run the evaluation.

    fgcam explain cat.jpg photos/ "more/*.png" --method fg_grad_cam --out explanations   # the real ImageNet network
    fgcam scenes --split test --n 4 --out scenes          # benchmark scenes as tagged PNG files
    fgcam explain scenes/ --layer 13                      # benchmark scenes: the bundled model
    fgcam evaluate --model bundled --data benchmark:test --num-images 8   # the evaluation runner
    fgcam --help

Only the dispatch lives here: ``explain`` and ``scenes`` are :mod:`fgcam_lib.ui.cli`,
``evaluate`` is :mod:`fgcam_lib.evaluation.cli` (also ``python -m fgcam_lib.evaluation``).
In Python: ``from fgcam_lib.cli import main; main(["explain", "cat.jpg", "--out", "out"])``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``fgcam`` parser: ``explain`` and ``scenes`` with their options, ``evaluate`` by name only
    (the evaluation command line parses its own options)."""
    from .ui import cli as ui_cli

    p = argparse.ArgumentParser(
        prog="fgcam",
        description="FG-CAM workbench: fine-grained CAM explanations and LRP for CNNs.",
        epilog="`fgcam explain --help` and `fgcam evaluate --help` describe each command.",
    )
    sub = p.add_subparsers(dest="command", metavar="{explain,scenes,evaluate}")
    ui_cli.add_commands(sub)
    sub.add_parser("evaluate", add_help=False,
                   help="faithfulness and localization metrics over a data set (the evaluation runner; "
                        "`fgcam evaluate --help` lists its options)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fgcam`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "evaluate":
        from .evaluation import cli as evaluation_cli

        return evaluation_cli.main(argv[1:], prog="fgcam evaluate")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .ui import cli as ui_cli

    return ui_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
