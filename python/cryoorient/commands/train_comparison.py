"""``cryoorient train_comparison``: trains the learned comparison of projections
(``orientations.learned_comparison``) on the asymmetric atomic models of --structures less the held-out ones
(``learning.synthetic.HELD_OUT``) and --generated procedurally generated proteins (seeds 0 … N−1),
each rendered at the pixel size that makes its diameter 3/4 of the box (clipped to 1.5–2 Å); writes
OUT/checkpoint.pt as it goes and OUT/weights.pt at the end (``bench/neighbour_precision.py
--comparison learned --weights OUT/weights.pt`` measures it). Reproducible from --seed; --resume
continues from the checkpoint (bit for bit on the CPU)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._common import add_run_flags, torch_device

HELP = "train the learned comparison of projections on many proteins (issue 20)"
DESCRIPTION = None


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, help="training folder (checkpoint.pt, weights.pt)")
    p.add_argument("--structures", help="folder of atomic models (.cif/.pdb); the held-out ones are left out")
    p.add_argument("--generated", type=int, default=100, help="generated proteins, seeds 0 … N−1 (default 100)")
    p.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    p.add_argument("--size", type=int, default=64, help="image edge in pixels (default 64)")
    p.add_argument("--proteins-per-step", type=int, default=6, help="proteins in each batch (default 6)")
    p.add_argument("--pairs", type=int, default=48, help="pairs of each protein in each batch (default 48)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default 2e-3)")
    p.add_argument("--near-misses", type=float, nargs=2, metavar=("LO", "HI"),
                   help="also train each image against a view LO–HI degrees from its own (LO > 10: no "
                        "neighbour in the 10° sense; default: none)")
    net = p.add_argument_group("network (orientations.learned_comparison.ComparisonNet)")
    for flag, default in (("crop", 32), ("rings", 15), ("angles", 32), ("width", 16), ("depth", 5), ("features", 8)):
        net.add_argument(f"--{flag}", type=int, default=default, help=f"(default {default})")
    net.add_argument("--fill", type=float, default=0.75,
                     help="fraction of the network's window a particle's diameter fills (0: the whole image; "
                          "default 0.75)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="processes rendering the training maps (default: up to 8)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")
    add_run_flags(p, "start over in an existing OUTPUT written by cryoorient", seed=True)


def main(args: argparse.Namespace) -> int:
    from ..io import check_output_dir, make_output_dir
    from ..orientations.learned_comparison import train_comparison

    out = Path(args.output)
    for name in ("generated", "steps", "size", "proteins_per_step", "pairs", "workers"):
        if getattr(args, name) < (0 if name == "generated" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}")
    if args.resume and args.force:
        raise ValueError("--resume and --force exclude each other")
    if args.resume and not (out / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"nothing to resume: {out / 'checkpoint.pt'} does not exist")
    if not 0 <= args.fill <= 1:
        raise ValueError(f"--fill must be in [0, 1] (0: the whole image); got {args.fill}")
    if args.near_misses and not 10 < args.near_misses[0] < args.near_misses[1] <= 180:
        raise ValueError(f"--near-misses needs 10 < LO < HI <= 180 degrees; got {args.near_misses}")
    if 2 * args.rings + 2 > args.crop or args.crop > args.size:
        raise ValueError(f"need 2·rings + 2 <= crop <= size; got rings {args.rings}, crop {args.crop}, size {args.size}")
    inputs = [args.structures] if args.structures else []
    if not args.resume:
        check_output_dir(out, force=args.force, inputs=inputs)  # before minutes of rendering maps
    maps = training_maps(args.structures, args.generated, args.size, progress=not args.quiet, workers=args.workers)
    if not args.resume:
        make_output_dir(out, force=args.force, inputs=inputs)
    options = {k: getattr(args, k) for k in ("crop", "rings", "angles", "width", "depth", "features")}
    options["fill"] = args.fill or None
    weights = train_comparison(maps, out, steps=args.steps, size=args.size, proteins_per_step=args.proteins_per_step,
                               pairs=args.pairs, lr=args.lr, seed=args.seed, resume=args.resume,
                               near=args.near_misses,
                               device=torch_device(args.device), net_options=options, progress=not args.quiet)
    print(f"learned comparison: {len(maps)} proteins, {args.steps} steps; weights: {weights}")
    return 0


def training_maps(structures, generated: int, size: int, progress: bool = False, workers: int = 1) -> list:
    """[(volume (size³), pixel size Å, diameter Å)] of the training models of ``structures`` and ``generated``
    proteins, rendered by ``workers`` processes."""
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial
    from multiprocessing import get_context

    from tqdm import tqdm

    from ..learning.synthetic import training_models

    models = training_models(structures) if structures else []
    if not models and not generated:
        raise ValueError("nothing to train on: give --structures or --generated N > 0")
    items, render = models + list(range(generated)), partial(_render, size=size)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            return list(tqdm(pool.map(render, items), total=len(items), desc="proteins", disable=not progress))
    return [render(item) for item in tqdm(items, desc="proteins", disable=not progress)]


def _render(item, size: int) -> tuple:
    """(volume (size³) float32, pixel size Å, diameter Å) of a model file or of the generated protein of seed
    ``item``."""
    import numpy as np

    from ..imaging.simulate import load_volume
    from ..io import model_atoms
    from ..learning.generator import protein_density, random_protein
    from ..orientations.learned_comparison import particle_diameter, particle_pixel_size

    if isinstance(item, int):
        m = random_protein(item)
        vol, vox = protein_density(m, size, particle_pixel_size(m.coords, m.weights, size))
    else:
        vol, vox = load_volume(item, size, particle_pixel_size(*model_atoms(item), size))
    vol = np.asarray(vol, dtype=np.float32)
    return vol, float(vox), particle_diameter(vol, float(vox))
