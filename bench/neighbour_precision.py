"""Neighbour precision of a comparison of projections on proteins held out of training, per protein × SNR.

    python bench/neighbour_precision.py --device cuda --out results/neighbours          # acceptance (issue 20)
    python bench/neighbour_precision.py --device cpu --P 2000 --size 64 --proteins 5j0n 5h73 4p5j gen:0
    python bench/neighbour_precision.py --comparison learned --weights run/weights.pt ...
    python bench/neighbour_precision.py --comparison mypackage.module:function ...     # another comparison

Proteins (``--proteins``; default 5j0n, the library models of
``cryoorient.learning.synthetic.HELD_OUT`` and two generated ones): 5j0n (``--map``, at its own
voxel size); library models of ``--structures`` by stem, rendered at 1.5–2 Å/px (the pixel size
that makes their diameter 3/4 of the box) at a resolution of 2 px (``--resolution`` Å instead: models
that look like an EM map of that resolution); ``gen:S``, the generated
protein ``random_protein(EVALUATION_SEEDS + S)`` (seeds no training uses), rendered likewise
with its B-factors. Only held-out proteins are accepted unless ``--allow-training-proteins``.

Data, per protein × SNR (``bench/abinitio_realistic.py``'s ``simulate_case``; nothing written):
P images of ``--size``² with uniform orientations; CTF 300 kV, Cs 2.7 mm, amplitude contrast 0.1,
defocus uniform in 0.8–2.5 µm, astigmatism up to 0.1 µm; shifts N(0, 3 px) per axis, the shift
vector clipped to 10 px; white noise at the SNR: the variance of the clean CTF-affected image
over the whole box (mean over a 1,000-image pilot) over the noise variance.

Comparison (``--comparison``): ``handmade`` is the ab initio module's (step 0 then steps 1–3 of
:mod:`cryoorient.orientations.abinitio`, as ``estimate_orientations`` runs them with its
defaults): ``prepare_images`` (phase flip by the true CTFs, centring) then
``rotational_neighbors`` with every image a candidate (no landmarks). ``learned`` is
``cryoorient.orientations.learned_comparison.learned_neighbours`` with the network of ``--weights``
and the hub correction of ``--hub-k`` (0: raw scores)
(``cryoorient train_comparison``; the same phase flip and centring). Another comparison is
``module:function`` taking ``(images (P, n, n) on the device, ctf(indices, size), neighbors,
device, diameter)`` (the particle's diameter in pixels, ``particle_diameter`` of the simulated map) and
returning neighbour nodes (P or 2P, ≥ neighbors) as ``rotational_neighbors`` does
(node r < P: image r; node P + r: its mirror image).

Metric (``cryoorient.learning.neighbours.neighbour_precision``): for each image, the fraction of
its 10 best-scored partners whose true viewing direction (−v for a mirror-image node) lies within
10° of its own; the mean over images. ``chance`` is (1 − cos 10°)/2, ``ceiling`` the precision of
the true 10 nearest nodes (below 1 when P is too small for 10 views within 10°). Rows sorted worst
protein first (lowest precision over its SNRs); every case is a row of ``--out``/results.csv.
``--within 3 5 20`` adds the same fraction within other angles (column ``precision_within``).
``--orientations`` also runs the ab initio stage on each graph (``estimate_orientations`` with every
image a landmark and the hand-made or learned comparison): E_OR, the share more than 0.3 rad wrong
and the verdict, so that a better graph is seen to give better orientations (or not).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from abinitio_realistic import FAILURE, simulate_case  # noqa: E402 - the same simulations and failure line

from cryoorient.imaging.simulate import load_volume  # noqa: E402
from cryoorient.orientations.learned_comparison import particle_diameter, particle_pixel_size  # noqa: E402
from cryoorient.learning.generator import protein_density, random_protein  # noqa: E402
from cryoorient.learning.neighbours import neighbour_precision, true_neighbours  # noqa: E402
from cryoorient.learning.synthetic import EVALUATION_SEEDS, HELD_OUT  # noqa: E402
from cryoorient.orientations.abinitio import estimate_orientations  # noqa: E402
from cryoorient.orientations.align import align_orientations  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_PROTEINS = ["5j0n", *HELD_OUT, "gen:0", "gen:1"]
COLUMNS = ["protein", "pixel_A", "model_resolution_A", "snr_db", "P", "size", "diameter_px", "comparison", "precision",
           "chance", "ceiling",
           "seconds", "simulation_seconds", "E_OR_abinitio", "wrong_abinitio", "determined", "precision_within"]


def handmade(images, ctf, neighbors: int, device, diameter=None):
    """The ab initio module's comparison: phase flip and centring, then rotational_neighbors over all images."""
    from cryoorient.orientations.abinitio import rotational_neighbors
    from cryoorient.orientations.preprocess import prepare_images

    x, _, _ = prepare_images(images, ctf, device=device)
    return rotational_neighbors(x, neighbors=neighbors, device=device)[0]


def comparison(name: str, weights: str | None = None, hub_k: int = 10):
    if name == "handmade":
        return handmade
    if name == "learned":
        from cryoorient.orientations.learned_comparison import learned_neighbours, load_comparison
        from cryoorient.orientations.preprocess import prepare_images

        if not weights:
            sys.exit("neighbour_precision: --comparison learned needs --weights (cryoorient train_comparison's weights.pt)")
        net = load_comparison(weights, "cpu")

        def learned(images, ctf, neighbors, device, diameter=None):
            x, _, _ = prepare_images(images, ctf, device=device)  # as the hand-made comparison
            return learned_neighbours(x, net.to(device), neighbors, device, diameter, hub_k=hub_k)

        return learned
    module, _, func = name.partition(":")
    if not func:
        sys.exit(f"neighbour_precision: --comparison must be 'handmade', 'learned' or 'module:function'; got {name!r}")
    return getattr(importlib.import_module(module), func)


def proteins(args) -> list[tuple[str, object, float | None]]:
    """(name, source for load_volume, pixel size or None for the map's own) of ``args.proteins``."""
    out = []
    for name in args.proteins:
        held = name == "5j0n" or name.startswith("gen:") or name.lower() in HELD_OUT
        if not held and not args.allow_training_proteins:
            sys.exit(f"neighbour_precision: {name} is not held out of training ({', '.join(DEFAULT_PROTEINS)}, gen:S); "
                     f"pass --allow-training-proteins to measure it anyway")
        if name == "5j0n":
            out.append((name, args.map, None))
        elif name.startswith("gen:"):
            model = random_protein(EVALUATION_SEEDS + int(name[4:]))
            px = particle_pixel_size(model.coords, model.weights, args.size)
            out.append((name, protein_density(model, args.size, px, args.resolution), px))
        else:
            path = Path(args.structures) / f"{name}.cif"
            if not path.is_file():
                sys.exit(f"neighbour_precision: no model {path}")
            from cryoorient.io import model_atoms

            px = particle_pixel_size(*model_atoms(path), args.size)
            out.append((name, load_volume(path, args.size, px, args.resolution) if args.resolution else path, px))
    return out


def run_case(name, source, pixel, args, snr, compares: dict, device) -> list[dict]:
    """One simulation of the case, scored by every comparison of ``compares`` {label: (function, options of
    estimate_orientations or None)}; with ``--orientations`` the ab initio stage runs with each comparison."""
    t0 = time.perf_counter()
    images, q_true, _, ctf, voxel = simulate_case(source, pixel, args, snr, args.seed, device)
    sim_seconds = time.perf_counter() - t0
    diameter = particle_diameter(load_volume(source, args.size, pixel)[0], 1.0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ceiling = neighbour_precision(true_neighbours(q_true, args.neighbors), q_true, k=args.neighbors)
    rows = []
    for label, (compare, ab_opts) in compares.items():
        sync()
        t0 = time.perf_counter()
        index = compare(images, ctf, args.neighbors, device, diameter)
        sync()
        rows.append({"protein": name, "pixel_A": round(voxel, 4), "model_resolution_A": args.resolution or "",
                     "snr_db": snr, "P": args.P, "size": args.size,
                     "diameter_px": round(diameter, 1), "comparison": label,
                     "precision": neighbour_precision(index, q_true, k=args.neighbors),
                     "chance": (1 - math.cos(math.radians(10))) / 2, "ceiling": ceiling,
                     "seconds": time.perf_counter() - t0, "simulation_seconds": sim_seconds,
                     "E_OR_abinitio": math.nan, "wrong_abinitio": math.nan, "determined": "",
                     "precision_within": " ".join(
                         f"{d:g}°:{neighbour_precision(index, q_true, k=args.neighbors, within_deg=d):.3f}"
                         for d in args.within)})
        if args.orientations and ab_opts is not None:
            if "comparison" in ab_opts:
                ab_opts = {**ab_opts, "diameter": diameter}
            res = estimate_orientations(images, ctf=ctf, landmarks=None, seed=args.seed, device=device, **ab_opts)
            errors = align_orientations(q_true, res.quaternions).errors
            rows[-1].update(E_OR_abinitio=float(errors.mean()), wrong_abinitio=float((errors > FAILURE).double().mean()),
                            determined=res.determined)
    return rows


def table(rows: list[dict]) -> str:
    worst = {}
    for r in rows:
        worst[r["protein"]] = min(worst.get(r["protein"], 1.0), r["precision"])
    labels = list(dict.fromkeys(r["comparison"] for r in rows))
    lines = [f"neighbour precision (10 best partners within 10°); chance {rows[0]['chance']:.4f}; worst protein first",
             f"{'protein':>8} {'Å/px':>5} {'SNR dB':>6} {'P':>6} {'size':>4} {'ceiling':>7} "
             + " ".join(f"{c:>16}" for c in labels)]
    cases = dict.fromkeys((r["protein"], r["snr_db"]) for r in rows)
    for prot, snr in sorted(cases, key=lambda c: (worst[c[0]], c[0], -c[1])):
        by = {r["comparison"]: r for r in rows if (r["protein"], r["snr_db"]) == (prot, snr)}
        r = next(iter(by.values()))
        cells = [f"{by[c]['precision']:.3f} ({by[c]['seconds']:.1f} s)" if c in by else "" for c in labels]
        lines.append(f"{prot:>8} {r['pixel_A']:5.2f} {snr:6.0f} {r['P']:6d} {r['size']:4d} {r['ceiling']:7.3f} "
                     + " ".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", default=str(SHARED / "maps" / "5j0n.mrc"))
    p.add_argument("--structures", default=str(SHARED / "structures"))
    p.add_argument("--proteins", nargs="+", default=DEFAULT_PROTEINS,
                   help=f"5j0n, library stems, gen:S (default {' '.join(DEFAULT_PROTEINS)})")
    p.add_argument("--allow-training-proteins", action="store_true", help="also accept proteins not held out")
    p.add_argument("--resolution", type=float,
                   help="render library and generated models at this resolution, Å (default: 2 px)")
    p.add_argument("--P", type=int, default=10000, help="images per case (default 10,000)")
    p.add_argument("--size", type=int, default=128, help="image edge, pixels (default 128)")
    p.add_argument("--snr", type=float, nargs="+", default=[-12.0, -16.0, -20.0], help="SNRs in dB")
    p.add_argument("--within", type=float, nargs="+", default=[],
                   help="also the precision within these angles, degrees (column precision_within)")
    p.add_argument("--neighbors", type=int, default=10, help="best partners scored per image (default 10)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    p.add_argument("--comparison", nargs="+", default=["handmade"],
                   help="one or more of 'handmade', 'learned', module:function (module docstring), each scored on "
                        "the very same images")
    p.add_argument("--weights", help="--comparison learned: the network (cryoorient train_comparison's weights.pt)")
    p.add_argument("--hub-k", type=int, nargs="+", default=[10],
                   help="--comparison learned: hub corrections to score, one column each (0: raw scores; default 10)")
    p.add_argument("--orientations", action="store_true",
                   help="also run the ab initio stage (estimate_orientations, every image a landmark) with each "
                        "hand-made or learned comparison: its E_OR, share wrong (> 0.3 rad) and verdict")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="results/neighbour_precision", help="folder for results.csv")
    args = p.parse_args(argv)
    if args.resolution is not None and not args.resolution > 0:
        p.error(f"--resolution must be a positive number of Å, got {args.resolution}")
    if any(not 0 < w <= 180 for w in args.within):
        p.error(f"--within takes angles in (0, 180] degrees, got {args.within}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("neighbour_precision: no CUDA GPU (pass --device cpu); skipped")
        return 0
    compares = {}
    for name in args.comparison:
        for k in (args.hub_k if name == "learned" else [None]):
            ab_opts = ({"hub_k": k, "comparison": args.weights} if name == "learned"
                       else {} if name == "handmade" else None)  # None: no ab initio stage for module:function
            compares[name if k is None else f"{name} hub {k}"] = (comparison(name, args.weights, k or 0), ab_opts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = proteins(args)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; {args.P} images of {args.size}², comparisons {', '.join(compares)}; proteins: "
          f"{', '.join(c[0] for c in cases)}", flush=True)
    rows = []
    for prot, source, pixel in cases:
        for snr in args.snr:
            for row in run_case(prot, source, pixel, args, snr, compares, device):
                rows.append(row)
                print(f"{prot} {snr:.0f} dB, {row['comparison']}: precision {row['precision']:.3f} (ceiling "
                      f"{row['ceiling']:.3f}), {row['seconds']:.1f} s (simulation {row['simulation_seconds']:.1f} s)"
                      + (f"; ab initio E_OR {row['E_OR_abinitio']:.3f}, {row['wrong_abinitio']:.1%} wrong, "
                         f"determined {row['determined']}" if row["determined"] != "" else "")
                      + (f"; within {row['precision_within']}" if args.within else ""), flush=True)
            tmp = out / ".results.csv.part"
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=COLUMNS)
                w.writeheader()
                w.writerows(rows)
            os.replace(tmp, out / "results.csv")
    print(table(rows))
    print(out / "results.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
