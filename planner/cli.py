"""The ``clusterplan`` command line: one verb per step, each a thin shell over a function.

Each verb lives in ``planner/commands/<verb>.py`` exposing ``register(subparsers)``; that module
imports its heavy dependencies inside its handler so ``clusterplan --help`` stays fast.
Bad input (:class:`planner.errors.InputError`) prints one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from planner.errors import InputError

VERBS = ("predict", "plan", "run", "calibrate", "compare", "fit", "validate", "export", "demo", "list", "emulate")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"clusterplan: error: {message}\n")


def version() -> str:
    """The installed distribution's version (pyproject.toml), without importing anything heavy."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("clusterplan")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="clusterplan", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"clusterplan {version()}")
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    for verb in VERBS:
        try:
            module = importlib.import_module(f"planner.commands.{verb}")
        except ModuleNotFoundError as err:
            if err.name != f"planner.commands.{verb}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"clusterplan {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clusterplan {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `clusterplan predict ... --json | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
