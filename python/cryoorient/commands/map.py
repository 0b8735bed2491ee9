"""``cryoorient map``: takes a map (.mrc/.map, Å per voxel from its header) or an atomic model
(.cif/.pdb, rendered as Gaussian density at --resolution Å on a grid of --pixel-size Å); writes one
cubic map (.mrc with its voxel size in Å), in this order resampled to --pixel-size (a map only),
padded or cropped to --box voxels about the centre, low-pass filtered at --lowpass Å and mirrored
along z (--flip-hand)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..io.structure import is_model_path
from ._common import add_run_flags, refuse_existing, torch_device

HELP = "make or edit a map: atomic model to density, box, pixel size, low-pass, hand"
DESCRIPTION = (
    "Turn an atomic model (.cif/.pdb) into a density map, or edit a map (.mrc): resample it to --pixel-size "
    "(Fourier cropping or padding over the same physical extent), pad or crop it to --box (centred), low-pass "
    "filter it (--lowpass) and mirror it (--flip-hand: V(x, y, -z), the other hand). Writes an MRC map."
)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="map (.mrc/.map) or atomic model (.cif/.pdb)")
    p.add_argument("-o", "--output", required=True, help="output map (.mrc)")
    p.add_argument("--box", type=int, help="edge of the output box in voxels: pad or crop about the centre "
                   "(default: the map's; for a model, its extent plus 2 × resolution on each side)")
    p.add_argument("--pixel-size", type=float,
                   help="Å per voxel of the output: a map is resampled to it (the nearest voxel that keeps the box's "
                   "physical extent); required for a model (its grid)")
    p.add_argument("--resolution", type=float, help="Å, resolution of a model's density (default 2 × pixel size)")
    p.add_argument("--lowpass", type=float, metavar="Å", help="low-pass filter at this resolution (Å)")
    p.add_argument("--flip-hand", action="store_true", help="mirror the map along z: V(x, y, -z), the other hand")
    add_run_flags(p, "overwrite the output map", quiet="print nothing but errors")


def _check_args(args: argparse.Namespace, model: bool) -> None:
    """Refuse bad values before any work."""
    if args.box is not None and args.box < 1:
        raise ValueError(f"--box must be a positive number of voxels; got {args.box}")
    for flag, value in (("--pixel-size", args.pixel_size), ("--resolution", args.resolution),
                        ("--lowpass", args.lowpass)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag} must be a positive number of Å; got {value}")
    if model and args.pixel_size is None:
        raise ValueError(f"'{args.source}' is an atomic model: give --pixel-size (Å per voxel of its map)")
    if not model and args.resolution is not None:
        raise ValueError("--resolution sets a model's density; filter a map with --lowpass")


def _model_map(args: argparse.Namespace):
    """(density, voxel Å) of the model: --box, or its extent about its centre of mass plus 2 × resolution."""
    import numpy as np

    from ..io import density_from_atoms, model_atoms

    pixel = args.pixel_size
    resolution = 2 * pixel if args.resolution is None else args.resolution
    xyz, weight = model_atoms(args.source)
    box = args.box
    if box is None:
        if not weight.sum() > 0:
            raise ValueError(f"'{args.source}' has no atoms with a known element and non-zero occupancy")
        centre = (weight[:, None] * xyz).sum(0) / weight.sum()
        box = 2 * math.ceil((float(np.linalg.norm(xyz - centre, axis=1).max()) + 2 * resolution) / pixel)
    return density_from_atoms(xyz, weight, box, pixel, resolution), pixel


def main(args: argparse.Namespace) -> int:
    import torch

    from ..io import read_map, write_map
    from ..maps.transforms import lowpass, mirror, resample_map, resize_map

    source, out = Path(args.source), Path(args.output)
    model = is_model_path(source)
    _check_args(args, model)
    refuse_existing(out, args.force, inputs=(source,))
    device = torch_device(args.device)
    volume, voxel = _model_map(args) if model else read_map(source, pad_to_cube=True)
    v = torch.from_numpy(volume).to(device)
    if args.pixel_size is not None and not model:
        v, voxel = resample_map(v, voxel, args.pixel_size)
    if args.box is not None:
        v = resize_map(v, args.box)
    if args.lowpass is not None:
        v = lowpass(v, voxel, args.lowpass)
    if args.flip_hand:
        v = mirror(v)
    write_map(out, v.cpu().numpy(), voxel, overwrite=args.force)
    if not args.quiet:
        print(f"{out}: box {v.shape[0]}, voxel {voxel:.4f} Å" + (
            f" (the nearest to {args.pixel_size} Å over the same extent)"
            if args.pixel_size is not None and abs(voxel - args.pixel_size) > 1e-6 * args.pixel_size else ""))
    return 0
