"""Figures written like every other output: laid out, saved atomically, closed."""

from __future__ import annotations

import os
from pathlib import Path

from ._atomic import PathLike, atomic_path

__all__ = ["save_figure"]


def save_figure(fig, path: PathLike, dpi: int = 120, overwrite: bool = True) -> Path:
    """Lay out the matplotlib figure ``fig``, write it to ``path`` atomically and close it.

    The format follows the suffix of ``path`` (``.png``, ``.pdf``, ``.svg``); ``overwrite``
    as in :func:`cryoorient.io.write_map` (commands check their outputs up front).
    """
    import matplotlib.pyplot as plt

    dest = Path(os.fspath(path))
    fig.tight_layout()
    try:
        with atomic_path(dest, overwrite=overwrite) as tmp:
            fig.savefig(tmp, dpi=dpi, format=dest.suffix.lstrip(".").lower() or "png")
    finally:
        plt.close(fig)
    return dest
