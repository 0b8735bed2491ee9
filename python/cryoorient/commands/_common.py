"""What several commands share: the closing run flags, the --device choice, the refusal to
overwrite, and reading particles from a RELION STAR file or a bare .mrcs stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..distributed import DEVICE_HELP


def add_run_flags(p, force: str, *, seed: bool = False, device: bool = True,
                  quiet: str | None = "no progress bar") -> None:
    """Add the flags that close a command's arguments, in this order: --seed (default 0), --device,
    --force (``force``: what it overwrites) and -q/--quiet (``quiet``: its help; None: no such flag)."""
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    if device:
        p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--force", action="store_true", help=force)
    if quiet is not None:
        p.add_argument("-q", "--quiet", action="store_true", help=quiet)


def torch_device(name: str):
    """A --device argument as a torch.device ("auto": CUDA if a GPU is usable, else CPU)."""
    from ..distributed import device_option, local_device

    return local_device(device_option(name))


def refuse_existing(path: Path, force: bool) -> None:
    """Refuse before any work is done, rather than after, to overwrite a user's file."""
    if path.exists() and not force:
        raise FileExistsError(f"'{path}' exists; pass --force to overwrite it")


def read_particles(path: str):
    """A RELION STAR file, or a bare .mrcs stack (pixel size from its header, no angles)."""
    from ..io import Particles, read_stack, read_star

    p = Path(path)
    if p.suffix in (".mrcs", ".mrc"):
        images, pixel = read_stack(p)
        return Particles.create([p.resolve()] * len(images), np.arange(len(images)), pixel_size=pixel,
                                image_size=images.shape[-1], root=p.resolve().parent)
    return read_star(p)

