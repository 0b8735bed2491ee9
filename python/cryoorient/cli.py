"""The ``cryoorient`` command line."""

from __future__ import annotations

import argparse
import sys

from .commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryoorient", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.__name__.rpartition(".")[2], help=command.HELP, description=command.DESCRIPTION)
        command.add_args(p)
        p.set_defaults(func=command.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status: 0, 2 for an error (one line on stderr), 130 for Ctrl-C
    (one line; output directories and files being written are removed, as on any error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, IndexError, TypeError) as err:
        print(f"cryoorient {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cryoorient {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
