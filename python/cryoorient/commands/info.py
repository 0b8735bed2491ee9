"""``cryoorient info``: takes nothing; prints the version, the compiled CUDA kernels and their
architectures, and whether a GPU is usable. Writes no file."""

from __future__ import annotations

import argparse

HELP = "version, compiled CUDA kernels and GPU availability"
DESCRIPTION = None


def add_args(p: argparse.ArgumentParser) -> None:
    """``info`` takes no arguments."""


def main(args: argparse.Namespace) -> int:
    from ..info import build_info, format_info

    print(format_info(build_info()))
    return 0
