"""``cryoorient reconstruct``: takes particles with orientations (RELION STAR or cryoSPARC .cs; angles in
degrees, origins in Å, CTF) and their stacks; writes the map (.mrc, voxel = particle pixel size in Å)
by direct Fourier inversion or by ASTRA's CGLS/SIRT. With --reference it reports the map's hand
against the reference, prints the FSC 0.5 and 0.143 resolutions (Å) and writes OUTPUT_fsc.png."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ._common import (add_particles_args, add_run_flags, read_particles, read_reference_map, refuse_existing,
                      torch_device)

HELP = "reconstruct a map from particles with orientations (direct Fourier inversion, or ASTRA CGLS/SIRT)"
DESCRIPTION = (
    "Reconstruct a 3D map from particles (RELION STAR or cryoSPARC .cs: angles, origins in Å, CTF) and their "
    "stacks. With --reference, align the map to the reference (orientations recovered ab initio define the map "
    "only up to a global rotation and its hand), report which hand fits, and report the FSC (0.5 and 0.143, in Å)."
)

#: --method -> the algorithm of imaging.astra.reconstruct_astra (None: direct Fourier inversion)
METHODS = {"fourier": None, "astra-cgls": "cgls", "astra-sirt": "sirt"}
NEAR_TIE = 0.02  # hands whose correlations differ by less are reported as nearly tied


def add_args(p: argparse.ArgumentParser) -> None:
    add_particles_args(p, "particles with orientations")
    p.add_argument("-o", "--output", required=True, help="output map (.mrc)")
    p.add_argument("--reference", help="ground-truth map (.mrc, same box) for the hand and the FSC")
    p.add_argument("--align", action=argparse.BooleanOptionalAction, default=True,
                   help="align the map (rotation and hand) to the reference before the FSC (default yes)")
    p.add_argument("--method", choices=list(METHODS), default="fourier",
                   help="direct Fourier inversion (default; CTF-weighted), or ASTRA's iterative least squares on "
                   "centred, phase-flipped images (needs astra-toolbox and a GPU)")
    p.add_argument("--iterations", type=int, default=30, help="ASTRA iterations (default 30)")
    p.add_argument("--no-ctf", action="store_true", help="ignore CTF parameters in the particle file")
    p.add_argument("--pad", type=int, default=2, help="Fourier padding factor (default 2)")
    p.add_argument("--batch-size", type=int, default=512, help="images per batch (default 512)")
    add_run_flags(p, "overwrite the output map")


def _reconstruct_astra(particles, algorithm: str, iterations: int, batch_size: int, with_ctf: bool, device):
    """ASTRA's reconstruction from the centred images, phase-flipped where they have a CTF."""
    import torch

    from ..imaging.astra import reconstruct_astra
    from ..imaging.ctf import phase_flip
    from ..maps.reconstruct import particle_batches

    images, matrices = [], []
    for _, img, A, ctf in particle_batches(particles, batch_size=batch_size, pad=1, device=device, with_ctf=with_ctf):
        images.append(img if ctf is None else phase_flip(img, ctf))
        matrices.append(A)
    return reconstruct_astra(torch.cat(images), torch.cat(matrices), algorithm=algorithm, iterations=iterations)


def _align(volume, reference, voxel: float):
    """``volume`` turned (and mirrored if that fits better) onto ``reference``; prints the hand."""
    from ..maps.transforms import align_map

    a = align_map(volume, reference, voxel_size=voxel)
    hand = "mirror hand (the mirror image of the reference)" if a.mirrored else "same hand as the reference"
    print(f"map: {hand}; correlation after alignment {a.correlation_same:.3f} in the same hand, "
          f"{a.correlation_mirror:.3f} in the mirror hand")
    if abs(a.correlation_same - a.correlation_mirror) < NEAR_TIE:
        print("the two hands are nearly tied: the map does not tell its hand at this resolution")
    return a.aligned


def main(args: argparse.Namespace) -> int:
    from ..io import write_map
    from ..maps.fsc import fsc, plot_fsc
    from ..maps.reconstruct import reconstruct_particles

    out = Path(args.output)
    refuse_existing(out, args.force, inputs=[args.particles] + ([args.reference] if args.reference else []))
    algorithm = METHODS[args.method]
    if args.iterations < 1:
        raise ValueError(f"--iterations must be a positive integer; got {args.iterations}")
    if algorithm is not None:
        from ..imaging.astra import unavailable

        if (reason := unavailable()) is not None:
            raise ValueError(f"--method {args.method}: {reason}")
    device = torch_device(args.device)
    particles = read_particles(args)
    voxel = float(np.asarray(particles.pixel_size).flat[0])
    reference = None if not args.reference else read_reference_map(args.reference, voxel, "--reference")
    if algorithm is None:
        volume = reconstruct_particles(particles, pad=args.pad, batch_size=args.batch_size, device=device,
                                       with_ctf=not args.no_ctf, progress=not args.quiet)
    else:
        volume = _reconstruct_astra(particles, algorithm, args.iterations, args.batch_size, not args.no_ctf, device)
    volume = volume.cpu()
    if reference is not None:
        if reference.shape != tuple(volume.shape):
            raise ValueError(f"reference map {reference.shape} and reconstruction {tuple(volume.shape)} differ in size")
        if args.align:
            volume = _align(volume, reference, voxel)
        result = fsc(volume, reference, voxel)
        plot = plot_fsc(result, out.with_name(out.stem + "_fsc.png"), title=f"{out.name} vs {Path(args.reference).name}")
        print(f"FSC 0.5: {result.resolution(0.5):.2f} Å   FSC 0.143: {result.resolution(0.143):.2f} Å   "
              f"(Nyquist {2 * voxel:.2f} Å; plot {plot})")
    write_map(out, volume.numpy(), voxel, overwrite=args.force)
    print(out)
    return 0
