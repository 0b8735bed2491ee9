"""``cryoorient abinitio``: takes particles (RELION STAR, cryoSPARC .cs or a bare .mrcs stack; CTF
columns used where present) and no network or reference; writes the directory OUT_DIR with
particles.star (RELION 3.1: rlnAngleRot/Tilt/Psi in degrees, rlnOriginX/YAngst in Å), map.mrc,
half_map_1.mrc, half_map_2.mrc (voxel size = the particles' pixel size, Å), fsc.png, report.txt and
the checkpoints of :func:`cryoorient.orientations.chain.run_chain` (``--resume`` continues from them)."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from ._common import add_particles_args, add_rounds_args, add_run_flags, read_particles, torch_device

HELP = "ab initio map from the images alone: orientations, shifts, half maps, map (no network, no reference)"
DESCRIPTION = (
    "Phase-flip each image by its CTF (the STAR/.cs CTF columns) and centre it, estimate the orientations from "
    "the images alone (the in-plane-invariant neighbour graph of Singer et al. 2011, with the data's own verdict "
    "on them), then refine orientations and shifts by gold-standard projection matching with the CTF. For "
    "proteins the network never saw. The particle must lie inside the inscribed circle of the box. Writes "
    "OUT_DIR/particles.star (angles and origins), map.mrc, half_map_1.mrc, half_map_2.mrc, fsc.png and "
    "report.txt; the map's global rotation and hand are arbitrary. Each finished stage is checkpointed into "
    "OUT_DIR: --resume continues an interrupted run."
)

#: Files written into OUT_DIR besides the checkpoints: the maps and the FSC plot only when the refinement ran,
#: the .cs only with --cs.
STAR, CS, REPORT = "particles.star", "particles.cs", "report.txt"
MAPS, FSC_PLOT = ("map.mrc", "half_map_1.mrc", "half_map_2.mrc"), "fsc.png"


def add_args(p: argparse.ArgumentParser) -> None:
    add_particles_args(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR",
                   help="output directory (must not exist unless --force or --resume; never one holding the current "
                   "directory, the home directory or the particles)")
    p.add_argument("--ignore-ctf", action="store_true",
                   help="ignore the particles' CTF columns (images taken to be CTF-free; default: use them)")
    p.add_argument("--abinitio-only", action="store_true",
                   help="stop after the ab initio stage: particles.star with its orientations and centring origins, "
                   "no maps")
    p.add_argument("--restarts", type=int, default=2,
                   help="random starts of the global search beside the ab initio orientations, explored until the "
                   "best and the best of another origin agree; the start whose particles match best goes on (default 2)")
    p.add_argument("--coarse", type=int, metavar="N",
                   help="the global search's iterations at band 12 and above search coarse to fine: each particle's N "
                   "best directions at half the band, then the fine grid about them only, where a probe of 200 "
                   "particles searched both ways agrees (at -20 dB the coarse stage loses particles; bench/README.md); "
                   "0: every direction (default 16 on the CPU, 0 on a GPU)")
    p.add_argument("--shift-grid", type=int, metavar="N",
                   help="the global search's exploration draws each particle's shift among (2N+1)^2 offsets about its "
                   "shift (default 1 on the CPU, 2 on a GPU: 1, in the recentring too, cost 5j0n at -20 dB twice the error; the "
                   "recentring keeps at least 2; bench/README.md)")
    p.add_argument("--minibatch", type=int, metavar="N",
                   help="particles drawn per step of the global search's exploration (default a tenth of the particles "
                   "explored, at least 256; fewer is faster: 500 of 10^4 at -20 dB saved 14-25 %% of the time and cost "
                   "one case in five 0.02 rad, bench/README.md)")
    p.add_argument("--iterations", type=int, default=10, metavar="N",
                   help="the cap on the global search's iterations of projection matching (default 10; they stop "
                   "earlier once the band stays and under 2 %% of the particles move; more helped the smallest proteins "
                   "at -20 dB and costs about a minute an iteration at 10^5 particles, bench/README.md)")
    p.add_argument("--margin", type=int, default=10, metavar="N",
                   help="once the global search's iterations stop, more with the band N Fourier pixels beyond the half "
                   "maps' resolution, kept only if their half maps are finer (default 10, as RELION's --incr_size; 0: "
                   "none, faster: at -20 dB it saved the two smallest proteins, bench/README.md)")
    add_rounds_args(p)
    p.add_argument("--neighbors", type=int, default=10, help="neighbours kept per image and mirror image (default 10)")
    p.add_argument("--landmarks", type=int, default=5000,
                   help="build the neighbour graph on this many random images, place the others from their "
                   "neighbours among them (default 5000; 0: on all images, dense in the number of images)")
    p.add_argument("--comparison", metavar="WEIGHTS",
                   help="compare the images with this learned comparison (cryoorient train_comparison's weights.pt) "
                   "instead of the hand-made one")
    p.add_argument("--particle-diameter", type=float, metavar="Å",
                   help="the particle's diameter in Å: the learned comparison sees a window fitted to it (default: "
                   "the whole box)")
    p.add_argument("--accept-corners", action="store_true",
                   help="proceed (with a warning) although particle density reaches the image corners")
    p.add_argument("--cs", action="store_true", help="also write OUT_DIR/particles.cs (cryoSPARC .cs)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoints in OUT_DIR (same particles and options); a new run if none")
    add_run_flags(p, "replace OUT_DIR if it exists and cryoorient wrote it (start over; --resume continues)", seed=True,
                  quiet="no progress bars (the summary and warnings are still printed)")


def _pixel_size(particles) -> float:
    import numpy as np

    pixel = particles.pixel_size
    if pixel is None or not np.allclose(pixel, pixel[0], rtol=1e-4):
        raise ValueError("the particles need one pixel size (rlnImagePixelSize) for all optics groups")
    return float(pixel[0])


def _checkpoints(out: Path) -> list[str]:
    """The stages checkpointed in ``out`` (run_chain's STAGE.pt files)."""
    from ..orientations.chain import STAGES

    return [stage for stage in STAGES if (out / f"{stage}.pt").is_file()]


def _prepare(args, particles):
    """Everything refused before OUT_DIR is touched: ``(images, pixel size, (ctf, phase_flipped), notes)``."""
    from ..io import read_particle_images
    from ..orientations.abinitio import check_counts
    from ..orientations.chain import star_ctf
    from ..orientations.preprocess import as_images

    if args.rounds < 1:
        raise ValueError(f"--rounds must be at least 1; got {args.rounds}")
    if args.restarts < 0:
        raise ValueError(f"--restarts must be at least 0; got {args.restarts}")
    if args.coarse is not None and args.coarse < 0:
        raise ValueError(f"--coarse must be at least 0; got {args.coarse}")
    if args.shift_grid is not None and args.shift_grid < 0:
        raise ValueError(f"--shift-grid must be at least 0; got {args.shift_grid}")
    if args.margin < 0:
        raise ValueError(f"--margin must be at least 0; got {args.margin}")
    if args.iterations < 1:
        raise ValueError(f"--iterations must be at least 1; got {args.iterations}")
    if args.minibatch is not None and args.minibatch < 1:
        raise ValueError(f"--minibatch must be at least 1; got {args.minibatch}")
    pixel = _pixel_size(particles)
    ctf, flipped, notes = star_ctf(particles, ignore_ctf=args.ignore_ctf, device=torch_device(args.device))
    check_counts(len(particles), neighbors=args.neighbors, landmarks=args.landmarks or None)
    if args.particle_diameter is not None and not args.particle_diameter > 0:
        raise ValueError(f"--particle-diameter must be positive (Å); got {args.particle_diameter}")
    if args.comparison is not None:
        from ..orientations.learned_comparison import load_comparison

        load_comparison(args.comparison)  # refuses a file that is not one, before anything is written
        if args.particle_diameter is None:
            notes.append("proceeding without --particle-diameter: the learned comparison sees the whole box, "
                         "not a window fitted to the particle as in its training")
    elif args.particle_diameter is not None:
        notes.append("--particle-diameter is unused: only the learned comparison (--comparison) takes it")
    images = read_particle_images(particles)
    as_images(images)  # refuses NaN or infinite pixels
    return images, pixel, (ctf, flipped), notes


def _run(args, images, pixel: float, ctf, out: Path, resume: bool):
    """run_chain on the images, checkpointed into ``out``; ``(result, seconds of this run)``."""
    from ..orientations.chain import run_chain

    t0 = time.perf_counter()
    result = run_chain(images, pixel_size=pixel, ctf=ctf[0], phase_flipped=ctf[1], workdir=out, resume=resume,
                       force=args.force, stop_after="abinitio" if args.abinitio_only else None,
                       abinitio_options={"neighbors": args.neighbors, "landmarks": args.landmarks or None,
                                         "accept": ("corners",) if args.accept_corners else (),
                                         "comparison": args.comparison,
                                         "diameter": args.particle_diameter and args.particle_diameter / pixel},
                       global_options={"restarts": args.restarts, "coarse": args.coarse,
                                       "shift_grid": args.shift_grid, "minibatch": args.minibatch,
                                       "iterations": args.iterations,
                                       "margin": args.margin},
                       refine_options={"rounds": args.rounds, "keep_best": not args.all_rounds},
                       seed=args.seed, device=torch_device(args.device), progress=not args.quiet)
    return result, time.perf_counter() - t0


def _write_particles(args, particles, result, out: Path) -> list[str]:
    """particles.star (and .cs): the input's rows and optics, with the result's angles and origins."""
    from ..geometry import quat_to_euler
    from ..io import write_particles

    star = particles.copy()
    rot, tilt, psi = quat_to_euler(result.quaternions.double().cpu())
    star.rot, star.tilt, star.psi = rot.numpy(), tilt.numpy(), psi.numpy()
    star.origin_x_angst, star.origin_y_angst = result.origins_angst.double().cpu().numpy().T
    if result.refined is not None:
        star.data["rlnRandomSubset"] = result.refined.half.cpu().numpy() + 1  # the gold-standard halves
    for name, wanted in ((STAR, True), (CS, args.cs)):
        if wanted:
            write_particles(out / name, star, overwrite=True)
        else:
            (out / name).unlink(missing_ok=True)  # of an earlier run in this directory
    return [STAR] + ([CS] if args.cs else [])


def _write_maps(result, out: Path) -> list[str]:
    """map.mrc, the half maps and fsc.png (voxel size: the pixel size, Å); removes them after --abinitio-only."""
    from ..io import write_map
    from ..maps.fsc import plot_fsc

    r = result.refined
    if r is None:
        for name in (*MAPS, FSC_PLOT):
            (out / name).unlink(missing_ok=True)  # of an earlier run in this directory
        return []
    for name, volume in zip(MAPS, (r.map, *r.half_maps)):
        write_map(out / name, volume.detach().cpu().numpy(), r.pixel_size, overwrite=True)
    plot_fsc(r.fsc, out / FSC_PLOT, thresholds=(0.143,),
             title=f"gold-standard FSC: {r.resolution:.2f} Å at 0.143")
    return [*MAPS, FSC_PLOT]


def _write_report(args, particles, result, notes, reused, seconds: float, written, out: Path) -> None:
    """report.txt: the input, the CTF notes, the chain's summary (verdict, resolution, warnings) and timings."""
    from .. import __version__
    from ..io._atomic import atomic_path

    ab = result.abinitio
    lines = [f"cryoorient {__version__} abinitio", f"particles: {args.particles} ({len(particles)} images, "
             f"{result.pixel_size:.4f} Å/pixel)",
             f"options: neighbors {args.neighbors}, landmarks {args.landmarks or 'all'}, restarts {args.restarts}, "
             f"iterations cap {args.iterations}, rounds {args.rounds}{' (all)' if args.all_rounds else ''}, "
             f"seed {args.seed}{', abinitio only' if args.abinitio_only else ''}"
             f"{f', coarse to fine {args.coarse}' if args.coarse else ''}"
             f"{f', exploration shift grid {args.shift_grid}' if args.shift_grid is not None else ''}"
             f"{f', exploration minibatch {args.minibatch}' if args.minibatch else ''}"
             f"{f', learned comparison {args.comparison}' if args.comparison else ''}"
             f"{f', particle diameter {args.particle_diameter:g} Å' if args.particle_diameter else ''}"
             f"{', corners accepted' if args.accept_corners else ''}", *notes, *result.summary(),
             f"verdict: determined {ab.determined}; spectral gap {ab.spectral_gap:.4f}, spread {ab.spread:.4f}, "
             f"null edge {ab.null_edge:.4f}",
             f"timings: ab initio {ab.seconds:.1f} s"
             + (f", global search {result.searched.seconds:.1f} s" if result.searched is not None else "")
             + f"; this run {seconds:.1f} s in all"
             + (f" (reused the checkpoints of {', '.join(reused)})" if reused else ""),
             f"files: {', '.join(written)}"]
    if result.refined is not None:
        lines.insert(-2, f"resolution: {result.refined.resolution:.2f} Å (FSC 0.143, gold-standard half maps)")
    with atomic_path(out / REPORT, overwrite=True) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


def main(args: argparse.Namespace) -> int:
    from ..io import check_output_dir, make_output_dir

    particles = read_particles(args)
    if len(particles) == 0:
        raise ValueError(f"'{args.particles}' holds no particles")
    inputs = [args.particles, *sorted(set(map(str, particles.stack_paths)))]
    reused = _checkpoints(Path(args.output)) if args.resume else []
    out = check_output_dir(args.output, force=args.force or bool(reused), inputs=inputs)
    images, pixel, ctf, notes = _prepare(args, particles)
    for line in notes:
        print(line)
    if not reused:
        out = make_output_dir(out, force=args.force, inputs=inputs)
    try:
        result, seconds = _run(args, images, pixel, ctf, out, resume=bool(reused))
    except BaseException as err:
        if not reused and not _checkpoints(out):  # a new run with nothing to resume: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        else:
            print(f"cryoorient abinitio: '{out}' keeps the checkpoints of {', '.join(_checkpoints(out))} "
                  f"(--resume continues from them)", file=sys.stderr)
        if isinstance(err, ValueError) and "accept 'corners'" in str(err):
            raise ValueError(str(err).replace("accept 'corners'", "pass --accept-corners")) from None
        raise
    for line in result.warnings:
        print(line, file=sys.stderr)
    written = _write_particles(args, particles, result, out) + _write_maps(result, out)
    _write_report(args, particles, result, notes, reused, seconds, written + [REPORT], out)
    summary = result.summary()
    for line in summary[: len(summary) - len(result.warnings)]:  # the warnings went to stderr above
        print(line)
    print(out)
    return 0
