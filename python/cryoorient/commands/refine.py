"""``cryoorient refine``: takes particles with starting orientations (degrees) and origins (Å), as
RELION STAR or cryoSPARC .cs, and a reference map (.mrc, same box, taken at the particles' pixel size
in Å, any frame); writes the refined particles (RELION 3.1 STAR with rlnRandomSubset 1/2 for the
gold-standard halves, the input's where it has them, as RELION keeps them; or .cs by the suffix) and,
with --output-map, the refined map low-pass filtered at its FSC 0.143 resolution (Å). Prints the
refined map's hand against the reference."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ._common import (add_particles_args, add_rounds_args, add_run_flags, read_particles, read_reference_map,
                      refuse_existing, torch_device)

HELP = "refine particle orientations and shifts by gold-standard projection matching"
DESCRIPTION = (
    "Refine the orientations (rlnAngleRot/Tilt/Psi) and origins of particles by alternating "
    "half-set reconstruction and local projection matching. The maps are reconstructed from the particles; "
    "--map (same box, any frame) is the reference the refined map's hand is reported against."
)


def add_args(p: argparse.ArgumentParser) -> None:
    add_particles_args(p, "particles with starting orientations")
    p.add_argument("--map", required=True, help="reference map (MRC, same box) for the hand")
    p.add_argument("-o", "--output", required=True,
                   help="refined particles: RELION 3.1 STAR (.star) or cryoSPARC (.cs)")
    p.add_argument("--output-map", help="also write the refined map, low-pass filtered at its resolution (MRC)")
    add_rounds_args(p)
    p.add_argument("--same-frame", action="store_true",
                   help="--map is in the orientations' frame (skip the rotational alignment of the hand check)")
    p.add_argument("--hard", action="store_true",
                   help="final half maps from the best matches only (default: soft assignment over each particle's "
                   "most probable local orientations and shifts, as RELION's marginalisation)")
    add_run_flags(p, "overwrite existing output files")


def main(args: argparse.Namespace) -> int:
    import torch

    from ..geometry import euler_to_quat, quat_to_euler
    from ..io import read_particle_images, write_map, write_particles
    from ..maps.reconstruct import ParticleCTF
    from ..maps.refine import refine

    for path in (args.output, args.output_map):
        if path:
            refuse_existing(Path(path), args.force, inputs=(args.particles, args.map))
    particles = read_particles(args)
    if len(particles) == 0:
        raise ValueError(f"'{args.particles}' holds no particles")
    angles = particles.angles
    if angles is None:
        raise ValueError(f"'{args.particles}' has no rlnAngleRot/Tilt/Psi: refinement starts from given orientations")
    pixel = particles.pixel_size
    if pixel is None or not np.allclose(pixel, pixel[0], rtol=1e-4):
        raise ValueError("particles need one pixel size (rlnImagePixelSize) for all optics groups")
    pixel = float(pixel[0])
    volume = read_reference_map(args.map, pixel, "--map")
    images = read_particle_images(particles)
    if volume.shape[0] != images.shape[-1]:
        raise ValueError(f"map box {volume.shape[0]} differs from the particle box {images.shape[-1]}")
    q0 = euler_to_quat(*torch.from_numpy(angles).T)
    origins = [np.zeros(len(particles)) if o is None else o for o in (particles.origin_x_angst, particles.origin_y_angst)]
    shifts = -torch.from_numpy(np.stack(origins, 1)) / pixel
    ctf = None if particles.defocus_u is None else ParticleCTF(particles, torch_device(args.device))
    half = None
    if "rlnRandomSubset" in particles.data:  # kept: half maps refined apart before stay apart
        half = particles.data["rlnRandomSubset"].to_numpy() - 1
        if set(half.tolist()) != {0, 1}:
            raise ValueError(f"rlnRandomSubset must be 1 or 2 for every particle, both present; got "
                             f"{sorted(set((half + 1).tolist()))[:5]}")
        print("half sets: the input's rlnRandomSubset")
    result = refine(images, q0, shifts=shifts, ctf=ctf, rounds=args.rounds, keep_best=not args.all_rounds,
                    pixel_size=pixel, reference=volume, align_reference=not args.same_frame, soft=not args.hard,
                    half=half, device=torch_device(args.device), progress=not args.quiet)

    print(f"{'round':>5} {'res (Å)':>8} {'after':>8} {'radius':>8} {'NCC':>8} {'moved (rad)':>11} {'shift (px)':>10}")
    for i, r in enumerate(result.rounds, 1):
        print(f"{i:5d} {r.resolution:8.2f} {r.resolution_after:8.2f} {r.radius:8.4f} {r.mean_score:8.4f} "
              f"{r.mean_rotation:11.4f} {r.mean_shift:10.3f}")
    if result.stopped:
        print(result.stopped)
    print(f"final resolution (FSC 0.143): {result.resolution:.2f} Å")
    same, mirrored = result.hand_correlations
    print(f"hand: {'mirror' if result.handedness_flipped else 'same'} (correlation {max(same, mirrored):.3f} vs "
          f"{min(same, mirrored):.3f} in the other hand) against {args.map}; mean FSC {result.reference_fsc:.3f} "
          "in that hand")
    out = particles.copy()
    rot, tilt, psi = quat_to_euler(result.quaternions)
    out.rot, out.tilt, out.psi = rot.numpy(), tilt.numpy(), psi.numpy()
    out.origin_x_angst, out.origin_y_angst = result.origins_angst.numpy().T
    out.data["rlnRandomSubset"] = result.half.numpy() + 1
    write_particles(args.output, out, overwrite=args.force)
    print(f"wrote {args.output}")
    if args.output_map:
        write_map(args.output_map, result.map.numpy(), pixel, overwrite=args.force)
        print(f"wrote {args.output_map}")
    return 0
