"""Ab initio chain on realistic simulations: E_OR, failures and maps against the floor, per protein × SNR.

    python bench/abinitio_realistic.py --device cuda --out results/abinitio          # acceptance table
    python bench/abinitio_realistic.py --device cuda --P 100000 --snr -20 --proteins 5j0n phantom
    python bench/abinitio_realistic.py --quick --device cpu --out /tmp/smoke       # smoke run, minutes

Proteins: 5j0n (``--map``, at its own voxel size), the built-in phantom and ``--models``
asymmetric atomic models of ``--structures`` (``learning.library.structure_library`` leaves out the
symmetric ones), chosen to span shapes: sorted by the elongation of their inertia ellipsoid, evenly
spaced picks; each rendered at 1.5–2 Å/px (the pixel size that makes its diameter 3/4 of the box,
clipped to that range; the phantom likewise), resolution 2 px. Or name them with ``--proteins``
(5j0n, phantom, model ids).

Data, per protein × SNR × seed (``cryoorient.imaging.simulate.ImageSimulator``, nothing written): P
images of ``--size``² with uniform orientations; CTF 300 kV, Cs 2.7 mm, amplitude contrast 0.1,
defocus uniform in 0.8–2.5 µm, astigmatism uniform up to 0.1 µm; shifts N(0, 3 px) per axis, the
shift vector clipped to 10 px; white noise at the SNR given: the variance of the clean CTF-affected
image over the whole box (mean over the simulation's 1,000-image pilot) over the noise variance.

Each case runs :func:`cryoorient.orientations.chain.run_chain` (ab initio, the global search, then
at most ``--rounds`` of refinement with CTF and shifts, stopped by the half maps' resolution; E_OR after each,
seconds of each) and the floor: ``refine`` started from the true orientations and shifts for all ``--rounds``
rounds (``keep_best=False``: with it the floor would be the truth itself wherever a round's half maps are worse
than the truth's, which says nothing of what projection matching reaches on the images); the same with each
particle's group left out of its reference
(``groups`` = 8: the floor without the hold of the particles' own noise, which keeps a refinement
near its start; ``maps.refine`` module docstring); and the FSC 0.143 resolution of the map from the true orientations
and shifts (``refine`` with 0 rounds). E_OR: ``align_orientations`` (O(4)); physical error: the
mean angle between true and estimated relative rotations A_i·A_jᵀ of random pairs, for the better
hand (blind to a global rotation and the hand of the map, which projections cannot fix, but not to
a rotation of every image frame, which E_OR forgives); failure: E_OR > 0.3 rad. The table is
sorted worst protein first (largest E_OR / (1.25 · floor + 0.01)); every run is a row of
``--out``/results.csv. Nothing is tuned per protein.

``--global-only``: the global search alone (:func:`cryoorient.orientations.global_search.global_search`)
from ``--restarts`` random starts, zero starting shifts, no ab initio and no refinement, on the same
data: E_OR, the fraction of particles more than 0.3 rad off, and for those, the median true shift
against the others'; rows of ``--out``/global.csv, worst first.

``--no-floor``: no floors (the two refinements of all ``--rounds`` from the truth);
floor and target are NaN and the table is sorted by E_OR. The true-orientation map is still made.

``--oracle``: also the global search started at the true orientations and shifts (no exploration), its
own floor on these images. ``--global NAME=VALUE ...``: options of the chain's global search (and of
the oracle's), e.g. ``joint_grid=0 max_band=32`` for the defaults before session 8.

``--ambiguity``: no chain; against the true map at the true shifts, for each band of ``--bands``
(Fourier pixels), the fraction of the first ``--count`` particles whose best orientation on the global
search's grid lies more than 0.3 rad from the truth, and the fraction of those whose NCC there beats
the NCC at their exact true orientation: how often the data themselves, not the search, place a
particle wrong at that band. Rows of ``--out``/ambiguity.csv.

``--end-to-end``: the issue's speed criterion. Each case's very images are written as a RELION 3.1 STAR
file and MRC stack (``--out``/CASE/), and ``cryoorient abinitio`` runs on them in a process of its own,
timed from the outside (Python's start, reading the stack, the chain, writing the STAR file, maps, FSC
plot and report); its orientations are then read back and compared with the truth, and the seconds of its
stages taken from its report (the run in all, ab initio, global search: exploration, recentring,
iterations; the rest of the run is refinement, reading and writing). No floors. Rows of
``--out``/end_to_end.csv; the stack is deleted after the run, the command's outputs kept.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from cryoorient.geometry import euler_to_quat, quat_conjugate, quat_distance, quat_multiply
from cryoorient.imaging.ctf import ctf_2d
from cryoorient.imaging.shift import phase_ramp
from cryoorient.imaging.simulate import (STACK_NAME, STAR_NAME, ImageSimulator, SimulationSettings, draw_parameters,
                                        load_volume, simulated_particles)
from cryoorient.io import read_particles, write_stack, write_star
from cryoorient.orientations.learned_comparison import particle_diameter, particle_pixel_size
from cryoorient.maps.refine import mirror_orientations, refine
from cryoorient.maps.transforms import resample_map, resize_map
from cryoorient.orientations.align import align_orientations
from cryoorient.orientations.chain import run_chain
from cryoorient.orientations.global_search import global_search
from cryoorient.orientations.polar_matching import (ParticleStack, PolarSearch, band_weights, crop_spectrum,
                                                    working_box)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FAILURE = 0.3  # rad
LEFT_OUT_GROUPS = 8  # the second floor: refine's groups, each particle compared without its own noise
COLUMNS = ["protein", "pixel_A", "snr_db", "seed", "P", "size", "comparison", "E_OR_abinitio", "determined", "E_OR_global",
           "global_start", "rounds_kept", "E_OR", "wrong", "physical", "failed", "floor_E_OR", "floor_left_out_E_OR", "target", "resolution_A", "true_map_resolution_A",
           "seconds", "abinitio_seconds", "global_seconds", "explore_seconds", "floor_seconds", "oracle_E_OR", "oracle_wrong"]
AMBIGUITY_COLUMNS = ["protein", "pixel_A", "snr_db", "seed", "P", "size", "band", "wrong", "beaten", "E_OR"]
END_TO_END_COLUMNS = ["protein", "pixel_A", "snr_db", "seed", "P", "size", "comparison", "E_OR", "wrong", "physical",
                      "resolution_A", "seconds_end_to_end", "command_seconds", "abinitio_seconds", "global_seconds",
                      "explore_seconds", "recentre_seconds", "iterate_seconds"]
STAGE_TIMES = {"command_seconds": r"this run ([0-9.]+) s", "abinitio_seconds": r"^timings: ab initio ([0-9.]+) s",
               "global_seconds": r"^timings: .*global search ([0-9.]+) s", "explore_seconds": r"explore ([0-9.]+) s",
               "recentre_seconds": r"recentre ([0-9.]+) s", "iterate_seconds": r"iterate ([0-9.]+) s"}
GLOBAL_COLUMNS = ["protein", "pixel_A", "snr_db", "seed", "P", "size", "restarts", "E_OR", "wrong", "shift_wrong_px",
                  "shift_right_px", "start", "agreement", "recentred", "seconds"]


def physical_error(q_true, q_est, pairs: int = 20000, seed: int = 0) -> float:
    """Mean angle (rad) between true and estimated relative rotations q_i·q_j⁻¹ of random pairs, better hand."""
    g = torch.Generator().manual_seed(seed)
    i, j = torch.randint(0, q_true.shape[0], (2, pairs), generator=g)
    rel = lambda q: quat_multiply(q[i], quat_conjugate(q[j]))  # noqa: E731 - A_i·A_jᵀ
    return min(float(quat_distance(rel(q_true), rel(q)).mean()) for q in (q_est, mirror_orientations(q_est)))


def _elongation(path: Path) -> float:
    from cryoorient.io import model_atoms

    xyz, w = model_atoms(path)
    c = xyz - (w[:, None] * xyz).sum(0) / w.sum()
    ev = np.linalg.eigvalsh((w[:, None, None] * c[:, :, None] * c[:, None, :]).sum(0) / w.sum())
    return float(math.sqrt(ev[-1] / ev[0]))


def proteins(args) -> list[tuple[str, object, float]]:
    """(name, source for load_volume, pixel size or None for the map's own) of the proteins to run; an atomic
    model's source is its map, rendered once here."""
    from cryoorient.imaging.phantom import default_density, pseudo_molecule
    from cryoorient.io import model_atoms
    from cryoorient.learning.library import structure_library

    out = []
    models = {}
    if Path(args.structures).is_dir():
        kept, _ = structure_library(args.structures)
        models = {p.stem: p for p in kept}
    wanted = args.proteins
    if wanted is None:
        ranked = sorted(models, key=lambda m: _elongation(models[m]))
        k = min(args.models, len(ranked))
        picks = [ranked[round(i * (len(ranked) - 1) / max(k - 1, 1))] for i in range(k)] if k else []
        wanted = (["5j0n"] if Path(args.map).is_file() else []) + ["phantom"] + picks
    for name in wanted:
        if name == "phantom":
            px = particle_pixel_size(*pseudo_molecule(), args.size)
            out.append((name, (default_density(args.size, px, 2 * px), px), px))
        elif name == "5j0n":
            if not Path(args.map).is_file():
                sys.exit(f"abinitio_realistic: map not found: {args.map}")
            out.append((name, args.map, None))
        elif name in models:
            px = particle_pixel_size(*model_atoms(models[name]), args.size)  # rendered once, for every case
            out.append((name, load_volume(models[name], args.size, px), px))
        else:
            sys.exit(f"abinitio_realistic: unknown protein {name!r} (5j0n, phantom, or an asymmetric model of "
                     f"{args.structures}: {', '.join(sorted(models)) or 'none found'})")
    return out


def simulate_case(source, pixel, args, snr: float, seed: int, device, parameters: bool = False):
    """Images (P, n, n) on ``device``, true quaternions and shifts (CPU float64), a CTF source, the pixel size;
    with ``parameters`` also the simulation's (parameters, settings)."""
    volume, voxel = load_volume(source, args.size, pixel)
    settings = SimulationSettings(n=args.P, size=args.size, shift_distribution="gaussian", shift_max=3.0, ctf=True,
                                  defocus_min=8000.0, defocus_max=25000.0, astigmatism=1000.0, snr_db=snr, seed=seed,
                                  chunk_size=2000)
    params = draw_parameters(settings, voxel)
    length = params.shifts.norm(dim=1, keepdim=True)
    params.shifts = params.shifts * (10.0 / length).clamp(max=1.0)  # the shift vector clipped to 10 px
    sim = ImageSimulator(volume, voxel, settings, params, device)
    images = torch.empty(args.P, sim.size, sim.size, device=device)
    for start, block in sim.chunks():
        images[start : start + block.shape[0]] = block
    d = params.defocus

    def ctf(indices, size):
        idx = torch.as_tensor(indices).cpu()
        return ctf_2d(size, voxel, d[idx, 0], d[idx, 1], d[idx, 2], device=device)

    return (images, params.quaternions, params.shifts, ctf, voxel) + (((params, settings),) if parameters else ())


def run_end_to_end_case(name, source, pixel, args, snr, seed, device) -> dict:
    """``cryoorient abinitio`` on the case written as a STAR file and stack, timed from the outside
    (module docstring, ``--end-to-end``)."""
    images, q_true, _, _, voxel, (params, settings) = simulate_case(source, pixel, args, snr, seed, device, True)
    work = Path(args.out) / f"{name}_{snr:g}dB_seed{seed}"
    if work.exists():
        shutil.rmtree(work)  # this script's own folder of an earlier run
    work.mkdir(parents=True)
    write_stack(work / STACK_NAME, images.cpu().numpy(), voxel)
    write_star(work / STAR_NAME, simulated_particles(params, settings, voxel, images.shape[-1], work))
    del images
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the command's process gets the GPU's memory
    cmd = [sys.executable, "-m", "cryoorient", "abinitio", str(work / STAR_NAME), "-o", str(work / "out"),
           "--device", str(device), "--rounds", str(args.rounds), "--landmarks", str(args.landmarks), "-q"]
    cmd += [x for k, v in args.global_options.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    if args.comparison:
        cmd += ["--comparison", args.comparison,
                "--particle-diameter", f"{particle_diameter(*load_volume(source, args.size, pixel)):.2f}"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    (work / STACK_NAME).unlink()  # the stack is the largest file; the command's outputs stay
    if done.returncode:
        raise RuntimeError(f"cryoorient abinitio exited with {done.returncode}: {done.stderr.strip()[-400:]}")
    found = read_particles(work / "out" / STAR_NAME)
    q = euler_to_quat(*torch.from_numpy(np.asarray(found.angles, dtype=np.float64)).T)
    errors = align_orientations(q_true, q).errors
    report = (work / "out" / "report.txt").read_text()
    return {"protein": name, "pixel_A": round(voxel, 4), "snr_db": snr, "seed": seed, "P": args.P, "size": args.size,
            "comparison": "learned" if args.comparison else "hand-made", "E_OR": float(errors.mean()),
            "wrong": float((errors > FAILURE).double().mean()), "physical": physical_error(q_true, q),
            "resolution_A": float(re.search(r"^resolution: ([0-9.]+) Å", report, re.M).group(1)),
            "seconds_end_to_end": seconds,
            **{k: float(re.search(pattern, report, re.M).group(1)) for k, pattern in STAGE_TIMES.items()}}


def run_case(name, source, pixel, args, snr, seed, device) -> dict:
    images, q_true, t_true, ctf, voxel = simulate_case(source, pixel, args, snr, seed, device)
    opts = {"rounds": args.rounds}
    ab_opts = {"landmarks": args.landmarks or None}
    if args.comparison:  # the learned comparison, with a window fitted to the simulated map's particle
        ab_opts.update(comparison=args.comparison,
                       diameter=particle_diameter(*load_volume(source, args.size, pixel)) / voxel)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    res = run_chain(images, pixel_size=voxel, ctf=ctf, refine_options=opts, abinitio_options=ab_opts,
                    global_options=args.global_options, seed=seed, device=device, progress=not args.quiet)
    sync()
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    floor_e = left_out_e = math.nan
    if not args.no_floor:
        floor = refine(images, q_true, shifts=t_true.clone(), ctf=ctf, pixel_size=voxel, seed=seed, device=device,
                       progress=False, keep_best=False, **opts)
        left_out = refine(images, q_true, shifts=t_true.clone(), ctf=ctf, pixel_size=voxel, seed=seed, device=device,
                          progress=False, groups=LEFT_OUT_GROUPS, keep_best=False, **opts)
        floor_e = align_orientations(q_true, floor.quaternions).error
        left_out_e = align_orientations(q_true, left_out.quaternions).error
    truth = refine(images, q_true, shifts=t_true.clone(), ctf=ctf, pixel_size=voxel, seed=seed, device=device,
                   progress=False, rounds=0)
    sync()
    floor_seconds = time.perf_counter() - t0
    found = align_orientations(q_true, res.quaternions)
    e_or = found.error
    lines = [x for x in res.summary() if not args.quiet or x.startswith(("global search", "refine:"))]
    print("\n".join(lines), flush=True)
    oracle = {}
    if args.oracle:  # the global search's own floor: its iterations started at the truth
        at_truth = global_search(images, q_true, shifts=t_true, ctf=ctf, pixel_size=voxel, seed=seed, device=device,
                                 **{**args.global_options, "restarts": 0, "steps": 0})
        errors = align_orientations(q_true, at_truth.quaternions).errors
        oracle = {"oracle_E_OR": float(errors.mean()), "oracle_wrong": float((errors > FAILURE).double().mean())}
    return {**oracle, "protein": name, "pixel_A": round(voxel, 4), "snr_db": snr, "seed": seed, "P": args.P, "size": args.size,
            "comparison": args.comparison or "handmade",
            "E_OR_abinitio": align_orientations(q_true, res.abinitio.quaternions).error,
            "determined": res.abinitio.determined, "E_OR_global": align_orientations(q_true, res.searched.quaternions).error,
            "global_start": res.searched.start, "rounds_kept": res.refined.kept, "E_OR": e_or, "wrong": float((found.errors > FAILURE).double().mean()),
            "physical": physical_error(q_true, res.quaternions),
            "failed": e_or > FAILURE, "floor_E_OR": floor_e,
            "floor_left_out_E_OR": left_out_e, "target": 1.25 * floor_e + 0.01,
            "resolution_A": res.refined.resolution, "true_map_resolution_A": truth.resolution, "seconds": seconds,
            "abinitio_seconds": res.abinitio.seconds, "global_seconds": res.searched.seconds,
            "explore_seconds": res.searched.stage_seconds["explore"],
            "floor_seconds": floor_seconds}


def _ncc(stack: ParticleStack, idx, m: int, K: int, t, F):
    """NCC in the band K of particles ``idx`` at shifts t (n-pixels) with references F (B, m, m//2 + 1), the
    projections' spectra at the origin (``FourierProjector.slices``), each times the particle's CTF."""
    c = stack.ctf_at(idx, m)
    F = F if c is None else F * c
    band, herm, _ = band_weights(m, K, stack.device)
    x = crop_spectrum(stack.spec[idx.to(stack.device)], m) * phase_ramp(-t.to(stack.device).float() * (m / stack.n), m)
    x, F = x * band, F * band
    dot = ((x * F.conj()).real * herm).sum((1, 2))
    return dot / torch.sqrt(((x.abs() ** 2) * herm).sum((1, 2)) * ((F.abs() ** 2) * herm).sum((1, 2))).clamp_min(1e-30)


def run_ambiguity_case(name, source, pixel, args, snr, seed, device) -> list[dict]:
    """Against the true map, at the true shifts, per band K of ``--bands``: the fraction of the first
    ``--count`` particles whose best orientation over the sphere (the global search's grid, spacing 1.5/K
    rad) lies more than FAILURE from the truth ("wrong"), and the fraction whose NCC there exceeds the NCC at
    their exact true orientation ("beaten": no search of the likelihood can place them right at that band)."""
    images, q_true, t_true, ctf, voxel = simulate_case(source, pixel, args, snr, seed, device)
    volume = resize_map(torch.as_tensor(load_volume(source, args.size, pixel)[0], device=device), args.size)  # the images' box
    n, count = args.size, min(args.count, args.P)
    stack = ParticleStack(images[:count], ctf, working_box(max(args.bands), n), device, 1024, seed)
    rows = []
    for K in args.bands:
        m = working_box(K, n)
        search = PolarSearch(resample_map(volume, 1.0, n / m)[0], K, {"sampling": 1.5, "budget": 1 << 28})
        wrong = beaten = total = 0.0
        for idx in torch.arange(count).split(search.rows):
            score, best = search.scores(stack, idx, m, t_true[idx]).max(1)
            q = search.orientations(best)
            far = quat_distance(q, q_true[idx]) > FAILURE
            at_truth = _ncc(stack, idx, m, K, t_true[idx], search.proj.slices(q_true[idx].to(device).float()))
            wrong += float(far.sum())
            beaten += float((far & (score.cpu() > at_truth.cpu())).sum())
            total += float(quat_distance(q, q_true[idx]).sum())
        rows.append({"protein": name, "pixel_A": round(voxel, 4), "snr_db": snr, "seed": seed, "P": count,
                     "size": n, "band": K, "wrong": wrong / count, "beaten": beaten / count, "E_OR": total / count})
        print(f"{name} {snr:.0f} dB band {K} ({n * voxel / K:.1f} Å): {wrong / count:.1%} wrong, "
              f"{beaten / count:.1%} beat the truth, mean error {total / count:.3f} rad", flush=True)
    return rows


def run_global_case(name, source, pixel, args, snr, seed, device) -> dict:
    """The global search alone from ``args.restarts`` random starts (module docstring, ``--global-only``)."""
    images, q_true, t_true, ctf, voxel = simulate_case(source, pixel, args, snr, seed, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    res = global_search(images, None, ctf=ctf, pixel_size=voxel, restarts=args.restarts, seed=seed, device=device,
                        progress=not args.quiet)
    sync()
    errors = align_orientations(q_true, res.quaternions).errors
    wrong, true_shift = errors > FAILURE, t_true.norm(dim=1)
    median = lambda x: float(x.median()) if len(x) else float("nan")  # noqa: E731
    print(res.summary(), flush=True)
    return {"protein": name, "pixel_A": round(voxel, 4), "snr_db": snr, "seed": seed, "P": args.P, "size": args.size,
            "restarts": args.restarts, "E_OR": float(errors.mean()), "wrong": float(wrong.double().mean()),
            "shift_wrong_px": median(true_shift[wrong]), "shift_right_px": median(true_shift[~wrong]),
            "start": res.start, "agreement": res.agreement, "recentred": res.recentred,
            "seconds": time.perf_counter() - t0}


def global_table(rows: list[dict]) -> str:
    """One line per run, worst E_OR first."""
    lines = ["global search alone from random starts, zero starting shifts; E_OR in rad; wrong: more than 0.3 rad "
             "off; |t| wrong / right: median true shift (px) of those and of the others",
             f"{'protein':>8} {'SNR dB':>6} {'seed':>4} {'E_OR':>6} {'wrong':>6} {'|t| wrong/right':>15} {'s':>5}"]
    for r in sorted(rows, key=lambda r: -r["E_OR"]):
        lines.append(f"{r['protein']:>8} {r['snr_db']:6.0f} {r['seed']:4d} {r['E_OR']:6.3f} {r['wrong']:6.1%} "
                     f"{r['shift_wrong_px']:7.2f}/{r['shift_right_px']:<7.2f} {r['seconds']:5.0f}")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict], columns: list[str] = COLUMNS) -> None:
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def table(rows: list[dict]) -> str:
    """Per protein × SNR over seeds, worst protein first."""
    cases: dict[tuple, list[dict]] = {}
    for r in rows:
        cases.setdefault((r["protein"], r["snr_db"]), []).append(r)
    worst = {}
    for (prot, _), rs in cases.items():
        ratio = max(r["E_OR"] / r["target"] if math.isfinite(r["target"]) else r["E_OR"] for r in rs)
        worst[prot] = max(worst.get(prot, 0.0), ratio)
    head = (f"{'protein':>8} {'Å/px':>5} {'SNR dB':>6} {'seeds':>5} {'abinitio':>8} {'global':>6} {'E_OR':>7} "
            f"{'worst':>7} {'physical':>8} {'fail':>4} {'floor':>7} {'target':>7} {'res Å':>6} {'true Å':>6} "
            f"{'res/true':>8} {'s/run':>6} {'s ab/gl':>8} {'floor lo':>8}")
    lines = ["SNR: variance of the clean CTF-affected image over the whole box / noise variance; E_OR (abinitio, "
             "global: after those stages; E_OR: after refinement), physical, floor in rad (means over seeds; worst: "
             "largest E_OR); fail: E_OR > 0.3 rad; target: 1.25·floor + 0.01; res: FSC 0.143 of the refined map, "
             "true: of the map from the true orientations; s/run: the whole chain, s ab/gl: its first two stages; "
             "floor lo: refine from the truth with each particle's group left out of its reference", head]
    for (prot, snr), rs in sorted(cases.items(), key=lambda kv: (-worst[kv[0][0]], kv[0][0], -kv[0][1])):
        m = lambda k: float(np.mean([r[k] for r in rs]))  # noqa: E731
        lines.append(f"{prot:>8} {rs[0]['pixel_A']:5.2f} {snr:6.0f} {len(rs):5d} {m('E_OR_abinitio'):8.3f} "
                     f"{m('E_OR_global'):6.3f} {m('E_OR'):7.4f} {max(r['E_OR'] for r in rs):7.4f} {m('physical'):8.3f} "
                     f"{sum(r['failed'] for r in rs):4d} {m('floor_E_OR'):7.4f} {m('target'):7.4f} "
                     f"{m('resolution_A'):6.2f} {m('true_map_resolution_A'):6.2f} "
                     f"{m('resolution_A') / m('true_map_resolution_A'):8.2f} {m('seconds'):6.1f} "
                     f"{m('abinitio_seconds'):3.0f}/{m('global_seconds'):<4.0f} {m('floor_left_out_E_OR'):8.3f}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", default=str(SHARED / "maps" / "5j0n.mrc"))
    p.add_argument("--structures", default=str(SHARED / "structures"))
    p.add_argument("--proteins", nargs="+", help="names to run (default: 5j0n, phantom and --models models)")
    p.add_argument("--models", type=int, default=6, help="asymmetric models picked to span shapes (default 6)")
    p.add_argument("--P", type=int, default=10000, help="images per case (default 10,000)")
    p.add_argument("--size", type=int, default=128, help="image edge, pixels (default 128)")
    p.add_argument("--snr", type=float, nargs="+", default=[-12.0, -16.0, -20.0], help="SNRs in dB")
    p.add_argument("--seeds", type=int, default=5, help="seeds per case (default 5)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="the first seed (default 0): seeds first-seed … first-seed + seeds − 1, so that one case's "
                        "seeds can run in calls of their own")
    p.add_argument("--rounds", type=int, default=5,
                   help="most refinement rounds of the chain, all rounds of the floor (default 5)")
    p.add_argument("--landmarks", type=int, default=5000, help="ab initio landmarks (0: all images)")
    p.add_argument("--comparison", metavar="WEIGHTS",
                   help="ab initio with this learned comparison (cryoorient train_comparison's weights.pt) instead of "
                        "the hand-made one")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="results/abinitio_realistic", help="folder for results.csv")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the floors (refine from the truth; the true-orientation map is still made): "
                        "floor and target NaN, cases sorted by E_OR")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the phantom (or --proteins), 400 images of 48², -12 dB, one seed, 2 rounds")
    p.add_argument("--global-only", action="store_true",
                   help="the global search alone from random starts (module docstring); rows of --out/global.csv")
    p.add_argument("--restarts", type=int, default=2, help="random starts of --global-only (default 2)")
    p.add_argument("--oracle", action="store_true",
                   help="also run the global search started at the true orientations and shifts (its own floor)")
    p.add_argument("--end-to-end", action="store_true",
                   help="write each case as a STAR file and stack and time `cryoorient abinitio` on it from the "
                        "outside (module docstring); rows of --out/end_to_end.csv")
    p.add_argument("--ambiguity", action="store_true",
                   help="per band of --bands, how many of --count particles the true map places wrong (rows of "
                        "--out/ambiguity.csv)")
    p.add_argument("--bands", type=int, nargs="+", default=[16, 24, 32, 48, 60])
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--global", dest="global_options", nargs="+", default=[], metavar="NAME=VALUE",
                   help="options of the chain's global search (cryoorient.orientations.global_search), "
                        "e.g. max_band=48")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        pairs = (o.split("=", 1) for o in args.global_options)
        args.global_options = {k: float(v) if "." in v else int(v) for k, v in pairs}
    except ValueError:
        p.error(f"--global takes NAME=NUMBER pairs; got {' '.join(args.global_options)}")
    if args.first_seed < 0:
        p.error(f"--first-seed must be at least 0; got {args.first_seed}")
    if args.end_to_end and set(args.global_options) - {"restarts", "coarse", "shift_grid", "minibatch"}:
        p.error("--end-to-end passes on only --global restarts=N, coarse=N, shift_grid=N and minibatch=N (the "
                "command's options)")
    if args.quick:
        args.P, args.size, args.snr, args.seeds, args.rounds = 400, 48, [-12.0], 1, 2
        args.proteins = args.proteins or ["phantom"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("abinitio_realistic: no CUDA GPU (pass --device cpu); skipped")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = proteins(args)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; {args.P} images of {args.size}², {args.rounds} refinement rounds, proteins: "
          f"{', '.join(f'{c[0]}' for c in cases)}", flush=True)
    rows = []
    for prot, source, pixel in cases:
        for snr in args.snr:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                if args.ambiguity:
                    rows += run_ambiguity_case(prot, source, pixel, args, snr, seed, device)
                    write_csv(out / "ambiguity.csv", rows, AMBIGUITY_COLUMNS)
                    continue
                if args.end_to_end:
                    try:
                        rows.append(run_end_to_end_case(prot, source, pixel, args, snr, seed, device))
                    except Exception:  # one case's failure is reported, the others still run
                        traceback.print_exc()
                        continue
                    print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()),
                          flush=True)
                    write_csv(out / "end_to_end.csv", rows, END_TO_END_COLUMNS)
                    continue
                try:
                    row = (run_global_case if args.global_only else run_case)(prot, source, pixel, args, snr, seed,
                                                                                device)
                except Exception:  # one case's failure is reported, the others still run
                    traceback.print_exc()
                    continue
                rows.append(row)
                if args.global_only:
                    print(global_table([row]).splitlines()[-1], flush=True)
                    write_csv(out / "global.csv", rows, GLOBAL_COLUMNS)
                    continue
                print(f"{prot} {snr:.0f} dB seed {seed}: E_OR {row['E_OR_abinitio']:.3f} -> {row['E_OR_global']:.3f} "
                      f"({row['global_start']}) -> {row['E_OR']:.4f} rad, {row['wrong']:.1%} wrong (floor {row['floor_E_OR']:.4f}, target "
                      f"{row['target']:.4f}, with groups left out {row['floor_left_out_E_OR']:.3f}"
                      + (f"; global at the truth {row['oracle_E_OR']:.3f}, {row['oracle_wrong']:.1%} wrong" if args.oracle
                         else "") + "), "
                      f"{row['resolution_A']:.2f} Å (true {row['true_map_resolution_A']:.2f} Å), {row['seconds']:.1f} s "
                      f"(ab initio {row['abinitio_seconds']:.1f} s, global {row['global_seconds']:.1f} s of which exploration "
                      f"{row['explore_seconds']:.1f} s)", flush=True)
                write_csv(out / "results.csv", rows)
    if args.ambiguity or args.end_to_end:
        return 0
    print(global_table(rows) if args.global_only else table(rows))
    print(out / ("global.csv" if args.global_only else "results.csv"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
