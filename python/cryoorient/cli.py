"""The ``cryoorient`` command line."""

from __future__ import annotations

import argparse
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import build_info, format_info

    print(format_info(build_info()))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train_from_args

    train_from_args(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryoorient", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="version, compiled CUDA kernels and GPU availability")
    p.set_defaults(func=_cmd_info)
    from .train import add_train_arguments

    p = sub.add_parser("train", help="train the Siamese distance estimator (paper §2.2)")
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, IndexError, TypeError) as err:
        print(f"cryoorient {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
