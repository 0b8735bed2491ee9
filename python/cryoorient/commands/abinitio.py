"""``cryoorient abinitio``: takes centred particles without CTF (RELION STAR file or a bare .mrcs
stack) and no network or reference; writes a RELION 3.1 STAR with rlnAngleRot/Tilt/Psi (degrees)
and origins 0 Å, estimated by the common-lines eigenvector method (cryoorient.orientations.abinitio)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_run_flags, read_particles, refuse_existing, torch_device

HELP = "estimate particle orientations from the images alone (no network, no reference)"
DESCRIPTION = (
    "Compare every image and mirror image with every other under in-plane rotation, keep the "
    "nearest neighbours and solve for the orientations that explain their in-plane angles (the eigenvector "
    "method of Singer et al. 2011; cryoorient.abinitio). For proteins the network never saw. Needs centred "
    "particles without CTF (phase-flip first) and white noise; the particle must lie inside the inscribed "
    "circle. Writes a RELION 3.1 STAR with rlnAngleRot/Tilt/Psi (degrees) and origins set to 0, ready for "
    "`cryoorient reconstruct` or `cryoorient refine`."
)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("particles", help="RELION STAR file or a bare .mrcs stack")
    p.add_argument("-o", "--output", required=True, help="output STAR file")
    p.add_argument("--neighbors", type=int, default=10, help="neighbours kept per image and mirror image (default 10)")
    p.add_argument("--landmarks", type=int, default=5000,
                   help="build the neighbour graph on this many random images, place the others from their "
                   "neighbours among them (default 5000; 0: on all images, dense in the number of images)")
    add_run_flags(p, "overwrite the output", seed=True)


def main(args: argparse.Namespace) -> int:
    from ..io import read_particle_images, write_recovered_star
    from ..orientations.abinitio import estimate_orientations

    out = Path(args.output)
    refuse_existing(out, args.force)
    particles = read_particles(args.particles)
    images = read_particle_images(particles)
    result = estimate_orientations(images, neighbors=args.neighbors, landmarks=args.landmarks or None, seed=args.seed,
                                   device=torch_device(args.device), progress=not args.quiet)
    write_recovered_star(particles, result.quaternions, out, overwrite=args.force)
    ev = ", ".join(f"{v:.4f}" for v in result.eigenvalues.tolist())
    print(f"estimated {len(particles)} orientations in {result.seconds:.1f} s; the global rotation and the "
          f"handedness of the map are arbitrary. Largest eigenvalues: {ev} (three close to 1 above a gap: "
          f"well determined)")
    print(out)
    return 0
