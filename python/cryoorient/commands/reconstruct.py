"""``cryoorient reconstruct``: takes a RELION STAR file (angles in degrees, origins in Å, CTF) and
its stacks; writes the map by direct Fourier inversion (.mrc, voxel = particle pixel size in Å).
With --reference it prints the FSC 0.5 and 0.143 resolutions (Å) and writes OUTPUT_fsc.png."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ._common import add_run_flags, refuse_existing, torch_device

HELP = "reconstruct a map from particles with orientations (direct Fourier inversion)"
DESCRIPTION = (
    "Reconstruct a 3D map from a RELION STAR file (angles, origins in Å, CTF) and its stacks. "
    "With --reference, report the FSC (0.5 and 0.143, in Å) after aligning the map to the reference "
    "(orientations recovered ab initio are only defined up to a global rotation and reflection)."
)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("particles", help="RELION STAR file with rlnAngleRot/Tilt/Psi (degrees)")
    p.add_argument("-o", "--output", required=True, help="output map (.mrc)")
    p.add_argument("--reference", help="ground-truth map (.mrc) for the FSC")
    p.add_argument("--align", action=argparse.BooleanOptionalAction, default=True,
                   help="align the map (rotation and hand) to the reference before the FSC (default yes)")
    p.add_argument("--no-ctf", action="store_true", help="ignore CTF parameters in the STAR file")
    p.add_argument("--pad", type=int, default=2, help="Fourier padding factor (default 2)")
    p.add_argument("--batch-size", type=int, default=512, help="images per batch (default 512)")
    add_run_flags(p, "overwrite the output map")


def main(args: argparse.Namespace) -> int:
    from ..io import read_map, read_star, write_map
    from ..maps.fsc import fsc, plot_fsc
    from ..maps.reconstruct import reconstruct_particles
    from ..maps.transforms import align_map

    out = Path(args.output)
    refuse_existing(out, args.force)
    particles = read_star(args.particles)
    reference = None
    if args.reference:
        reference, ref_voxel = read_map(args.reference, pad_to_cube=True)
    volume = reconstruct_particles(particles, pad=args.pad, batch_size=args.batch_size,
                                   device=torch_device(args.device), with_ctf=not args.no_ctf,
                                   progress=not args.quiet).cpu()
    voxel = float(np.asarray(particles.pixel_size).flat[0])
    if reference is not None:
        if reference.shape != tuple(volume.shape):
            raise ValueError(f"reference map {reference.shape} and reconstruction {tuple(volume.shape)} differ in size")
        if args.align:
            alignment = align_map(volume, reference)
            volume = alignment.aligned
            print(f"aligned to the reference: correlation {alignment.correlation:.3f}, "
                  f"hand {'flipped' if alignment.mirrored else 'kept'}")
        result = fsc(volume, reference, voxel)
        plot = plot_fsc(result, out.with_name(out.stem + "_fsc.png"), title=f"{out.name} vs {Path(args.reference).name}")
        print(f"FSC 0.5: {result.resolution(0.5):.2f} Å   FSC 0.143: {result.resolution(0.143):.2f} Å   "
              f"(Nyquist {2 * voxel:.2f} Å; plot {plot})")
    write_map(out, volume.numpy(), voxel, overwrite=args.force)
    print(out)
    return 0
