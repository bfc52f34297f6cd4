"""``python -m benchmarks <suite> [options]``: run one benchmark suite (see ``SUITES``)."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import SUITES

PROG = "python -m benchmarks"


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per registered suite, each with the suite's own arguments."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    sub = parser.add_subparsers(dest="suite", required=True, metavar="suite")
    for name, (help_text, module) in SUITES.items():
        suite = importlib.import_module(f".{module}", __package__)
        sp = sub.add_parser(name, help=help_text, description=help_text)
        suite.add_args(sp)
        sp.set_defaults(run=suite.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the selected suite; expected failures print one line and exit with status 1."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"{PROG} {args.suite}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
