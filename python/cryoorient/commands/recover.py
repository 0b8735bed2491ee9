"""``cryoorient recover``: takes particles (RELION STAR, cryoSPARC .cs or a bare .mrcs stack) and a
trained Siamese network (.pt); writes a RELION 3.1 STAR (or .cs by the suffix) with
rlnAngleRot/Tilt/Psi (degrees) and origins 0 Å, and OUTPUT_loss.png (L_OR in rad² per step) unless
--all-pairs. Runs under torchrun with --all-pairs (the pairs split over the processes; rank 0 writes)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from ._common import add_particles_args, add_run_flags, read_particles, refuse_existing

HELP = "recover particle orientations from the images with a trained Siamese network"
DESCRIPTION = (
    "Estimate distances between projections with the Siamese network, then find the orientations "
    "whose pairwise distances match (L_OR). Writes a RELION 3.1 STAR (or cryoSPARC .cs) with rlnAngleRot/Tilt/Psi "
    "(degrees) and origins set to 0. Distances leave a global O(4) ambiguity; the part that the images can see is "
    "then fixed (--resolve-frame), so the remaining global rotation of the map and the map's hand are arbitrary. "
    "L_OR is the accuracy proxy when no ground truth exists."
)


def add_args(p: argparse.ArgumentParser) -> None:
    add_particles_args(p)
    p.add_argument("--model", required=True, help="trained network (.pt from `cryoorient train`)")
    p.add_argument("-o", "--output", required=True, help="output: RELION 3.1 STAR (.star) or cryoSPARC (.cs)")
    p.add_argument("--restarts", type=int, default=4, help="random restarts run together (default 4)")
    p.add_argument("--steps", type=int, default=2000,
                   help="maximum optimisation steps, or epochs with --all-pairs (default 2000)")
    p.add_argument("--cutoff", type=float, default=None,
                   help="trust only estimated distances below this (radians), with a spreading term (default: all); "
                   "with --all-pairs, pairs with a larger distance are left out")
    p.add_argument("--all-pairs", action="store_true",
                   help="full-batch recovery over every pair each epoch (one restart; fused all-pairs kernel); under "
                   "`torchrun --nproc-per-node N -m cryoorient recover ...` split over the N processes")
    p.add_argument("--resolve-frame", action=argparse.BooleanOptionalAction, default=True,
                   help="fix the part of the global ambiguity that the images can see (a rotation of every image "
                   "frame), so that the orientations reconstruct a sharp map (default yes)")
    add_run_flags(p, "overwrite the output", seed=True)


def main(args: argparse.Namespace) -> int:
    from .. import distributed

    if not args.all_pairs and distributed.launched() and int(os.environ["WORLD_SIZE"]) > 1:
        raise ValueError("under torchrun with several processes, recover runs with --all-pairs only")
    return distributed.run(lambda device: _recover(args, device), distributed.device_option(args.device))


def _recover_all_pairs(args: argparse.Namespace, model, images):
    """--all-pairs: every rank embeds its consecutive share of the images, then the
    full-batch recovery runs split over all ranks (one process outside torchrun). Returns the
    orientations on rank 0, None on the others."""
    from .. import distributed
    from ..learning.model import image_features
    from ..orientations.recover import recover_orientations_allpairs

    rank, world, n = distributed.rank(), distributed.world_size(), len(images)
    if n < 2:
        raise ValueError(f"need at least 2 images to recover orientations; got {n}")
    mine = images[n * rank // world : n * (rank + 1) // world]
    if len(mine) >= 2:
        features = image_features(model, mine, progress=not args.quiet and rank == 0)
    else:  # a share of 0 or 1 image (more processes than images)
        features = model.features(np.asarray(mine, dtype=np.float32))
    weight = None if args.cutoff is None else ("cutoff", args.cutoff)
    result = recover_orientations_allpairs(features, weight=weight, max_epochs=args.steps, seed=args.seed)
    if rank != 0:
        return None
    print(f"all-pairs L_OR {result.losses[-1]:.4f} rad² per pair after {result.epochs} epochs on {world} "
          f"process(es) ({result.seconds:.1f} s)")
    return result.q


def _recover(args: argparse.Namespace, device) -> int:
    from ..io import read_particle_images, write_recovered_star
    from ..learning.model import SiameseNet, image_features
    from ..orientations.frame import resolve_frame
    from ..orientations.recover import recover_from_features

    out = Path(args.output)
    refuse_existing(out, args.force, inputs=(args.particles, args.model))
    particles = read_particles(args)
    model = SiameseNet.load(args.model, map_location=device)
    images = read_particle_images(particles)
    if args.all_pairs:
        q, result = _recover_all_pairs(args, model, images), None
        if q is None:
            return 0
    else:
        features = image_features(model, images, progress=not args.quiet)
        result = recover_from_features(model, features, restarts=args.restarts, steps=args.steps,
                                       cutoff=args.cutoff, seed=args.seed, device=device, progress=not args.quiet)
        q = result.orientations
    if args.resolve_frame:
        frame = resolve_frame(images, q, seed=args.seed, device=device)
        q = frame.quaternions
        print(f"image frame resolved: cross-validated NCC {frame.score:.3f} (as recovered: "
              f"{frame.score_uncorrected:.3f})")
    write_recovered_star(particles, q, out, overwrite=args.force)
    if result is not None:
        plot = out.with_name(out.stem + "_loss.png")
        result.plot(str(plot))
        print(f"recovered {len(particles)} orientations: L_OR {result.loss:.4f} rad² (restart {result.restart}, "
              f"{result.seconds:.1f} s); the map's global rotation and hand are arbitrary. Loss curve: {plot}")
    print(out)
    return 0
