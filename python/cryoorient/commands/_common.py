"""What several commands share: the closing run flags, the --device choice, the refusal to
overwrite, and the particle file with its --pixel-size."""

from __future__ import annotations

from pathlib import Path

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


def add_rounds_args(p) -> None:
    """--rounds and --all-rounds of the refinement (:func:`cryoorient.maps.refine.refine`)."""
    p.add_argument("--rounds", type=int, default=5,
                   help="most refinement rounds (default 5); they stop at the first round whose orientations give "
                   "half maps of worse FSC-0.143 resolution than those it started from, and that round's start is kept")
    p.add_argument("--all-rounds", action="store_true",
                   help="run all --rounds rounds and keep the last orientations, whatever the half maps' resolution")


def torch_device(name: str):
    """A --device argument as a torch.device ("auto": CUDA if a GPU is usable, else CPU)."""
    from ..distributed import device_option, local_device

    return local_device(device_option(name))


def refuse_existing(path: Path, force: bool, inputs=()) -> None:
    """Refuse before any work is done, rather than after, to overwrite a user's file: an existing output
    file ``path`` without --force, and even with it a directory or one of the command's ``inputs``."""
    if any(path.resolve() == Path(item).resolve() for item in inputs):
        raise ValueError(f"refusing to overwrite '{path}', even with --force: it is an input; give another output")
    if path.is_dir():
        raise IsADirectoryError(f"'{path}' is a directory; give the output a file name")
    if path.exists() and not force:
        raise FileExistsError(f"'{path}' exists; pass --force to overwrite it")


def add_particles_args(p, what: str = "particles") -> None:
    """The positional particle file and --pixel-size, as every command that reads images takes them."""
    p.add_argument("particles", help=f"{what}: RELION STAR (.star), cryoSPARC (.cs) or a bare .mrcs stack")
    p.add_argument("--pixel-size", type=float,
                   help="Å per pixel, where the file has none (a zero MRC cell, no rlnImagePixelSize) or to override it")


def read_particles(args):
    """The particles named by :func:`add_particles_args`' flags; refuses them without a pixel size."""
    from ..io import read_particles as read

    return read(args.particles, args.pixel_size, require_pixel_size=True)


def read_reference_map(path: str, pixel_size: float, flag: str):
    """The cubic map ``path`` (given by ``flag``) at the particles' ``pixel_size`` (Å).

    A zero header cell takes the particles' pixel size; a voxel size off by more than 1 % is
    refused, naming ``cryoorient map --pixel-size`` to resample it.
    """
    from ..io import read_map

    volume, voxel = read_map(path, pad_to_cube=True, fallback_voxel_size=pixel_size)
    if abs(voxel - pixel_size) > 0.01 * pixel_size:
        raise ValueError(f"{flag} '{path}' has voxel size {voxel:.4f} Å but the particles have {pixel_size:.4f} Å; "
                         f"resample it with 'cryoorient map {path} --pixel-size {pixel_size:g} --box N -o OUT.mrc'")
    return volume
