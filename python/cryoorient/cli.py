"""The ``cryoorient`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np


from .distributed import DEVICE_HELP


def _device(name: str):
    """A --device argument as a torch.device ("auto": CUDA if a GPU is usable, else CPU)."""
    from .distributed import device_option, local_device

    return local_device(device_option(name))


def _refuse_existing(path: Path, force: bool) -> None:
    """Refuse before any work is done, rather than after, to overwrite a user's file."""
    if path.exists() and not force:
        raise FileExistsError(f"'{path}' exists; pass --force to overwrite it")


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import build_info, format_info

    print(format_info(build_info()))
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .imaging.simulate import SimulationSettings, simulate

    if args.shift_dist is None:
        args.shift_dist = "triangular" if args.shift_max > 0 else "none"
    settings = SimulationSettings(
        n=args.n, size=args.size, orientations=args.orientations,
        euler_ranges=(tuple(args.rot_range), tuple(args.tilt_range), tuple(args.psi_range)),
        symmetry=args.symmetry, shift_distribution=args.shift_dist, shift_max=args.shift_max,
        shift_unit=args.shift_unit, ctf=args.ctf, defocus_min=args.defocus_min * 1e4,
        defocus_max=args.defocus_max * 1e4, astigmatism=args.astigmatism, voltage=args.voltage, cs=args.cs,
        amplitude_contrast=args.amplitude_contrast, b_factor=args.b_factor, phase_shift=args.phase_shift,
        snr_db=args.snr, sigma2=args.sigma2, normalize=args.normalize, seed=args.seed,
        chunk_size=args.chunk_size, interpolation=args.interpolation, pad=args.pad,
    )
    out = simulate(args.source, args.output, settings, device=_device(args.device), force=args.force,
                   progress=not args.quiet, pixel_size=args.pixel_size, resolution=args.resolution)
    print(out)
    return 0


def _add_simulate(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a particle dataset (projections, shifts, CTF, noise) as .mrcs + RELION STAR",
        description="Simulate p = C S P x + n from a map (.mrc; non-cubic maps are zero-padded to a cube) or an "
        "atomic model (.cif/.pdb; needs --size and --pixel-size). Writes DIR/particles.mrcs, DIR/particles.star "
        "(ground-truth angles, origins, CTF) and DIR/simulation.json.",
    )
    p.add_argument("source", help="map (.mrc/.map) or atomic model (.cif/.pdb)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory (must not exist unless --force)")
    p.add_argument("-n", type=int, default=5000, help="number of projections (default 5000)")
    p.add_argument("--size", type=int, help="image edge in pixels (default: map edge; larger pads, smaller crops)")
    p.add_argument("--pixel-size", type=float, help="Å per pixel (overrides the map header; required for models)")
    p.add_argument("--resolution", type=float, help="Å, resolution of a map made from a model (default 2 × pixel)")
    p.add_argument("--orientations", choices=["uniform", "euler", "asymmetric_unit"], default="uniform",
                   help="uniform on SO(3), uniform RELION Euler angles within --*-range, or uniform on the "
                   "asymmetric unit of --symmetry (default uniform)")
    p.add_argument("--rot-range", type=float, nargs=2, default=(-180.0, 180.0), metavar=("LO", "HI"), help="degrees")
    p.add_argument("--tilt-range", type=float, nargs=2, default=(0.0, 180.0), metavar=("LO", "HI"), help="degrees")
    p.add_argument("--psi-range", type=float, nargs=2, default=(-180.0, 180.0), metavar=("LO", "HI"), help="degrees")
    p.add_argument("--symmetry", default="C1", help="point group for --orientations asymmetric_unit (default C1)")
    p.add_argument("--shift-max", type=float, default=0.0, help="shift limit (triangular/uniform) or std (gaussian)")
    p.add_argument("--shift-unit", choices=["px", "A"], default="px", help="unit of --shift-max (default px)")
    p.add_argument("--shift-dist", choices=["none", "triangular", "uniform", "gaussian"],
                   help="shift distribution (default triangular if --shift-max > 0, as in the paper)")
    p.add_argument("--ctf", action=argparse.BooleanOptionalAction, default=False, help="apply a CTF (default no)")
    p.add_argument("--defocus-min", type=float, default=1.0, help="µm, lowest mean defocus (default 1.0)")
    p.add_argument("--defocus-max", type=float, default=2.5, help="µm, highest mean defocus (default 2.5)")
    p.add_argument("--astigmatism", type=float, default=0.0, help="Å, largest defocus U - V (default 0)")
    p.add_argument("--voltage", type=float, default=300.0, help="kV (default 300)")
    p.add_argument("--cs", type=float, default=2.7, help="spherical aberration, mm (default 2.7)")
    p.add_argument("--amplitude-contrast", type=float, default=0.1, help="fraction (default 0.1)")
    p.add_argument("--b-factor", type=float, default=0.0, help="CTF envelope B-factor, Å² (default 0)")
    p.add_argument("--phase-shift", type=float, default=0.0, help="phase-plate shift, degrees (default 0)")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--snr", type=float, help="signal-to-noise ratio in dB (e.g. -12)")
    noise.add_argument("--sigma2", type=float, help="noise variance on the normalised images (paper: 16)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                   help="standardise the clean dataset to mean 0, variance 1 before adding noise (default yes)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--chunk-size", type=int, default=1000, help="images computed and written at once (default 1000)")
    p.add_argument("--interpolation", choices=["auto", "cubic", "linear"], default="auto",
                   help="Fourier-slice interpolation: cubic (~0.05%% error) or linear (~2.5%%, 5-8x faster on "
                   "CPU); auto = cubic on CUDA, linear on CPU (default)")
    p.add_argument("--pad", type=float, default=2.0, help="Fourier oversampling of the map (default 2)")
    p.add_argument("--force", action="store_true", help="replace the output directory if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_simulate)


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from .maps.fsc import fsc, plot_fsc
    from .io import read_map, read_star, write_map
    from .maps.transforms import align_map
    from .maps.reconstruct import reconstruct_particles

    out = Path(args.output)
    _refuse_existing(out, args.force)
    particles = read_star(args.particles)
    reference = None
    if args.reference:
        reference, ref_voxel = read_map(args.reference, pad_to_cube=True)
    volume = reconstruct_particles(particles, pad=args.pad, batch_size=args.batch_size, device=_device(args.device),
                                   with_ctf=not args.no_ctf, progress=not args.quiet).cpu()
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


def _add_reconstruct(sub) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="reconstruct a map from particles with orientations (direct Fourier inversion)",
        description="Reconstruct a 3D map from a RELION STAR file (angles, origins in Å, CTF) and its stacks. "
        "With --reference, report the FSC (0.5 and 0.143, in Å) after aligning the map to the reference "
        "(orientations recovered ab initio are only defined up to a global rotation and reflection).",
    )
    p.add_argument("particles", help="RELION STAR file with rlnAngleRot/Tilt/Psi (degrees)")
    p.add_argument("-o", "--output", required=True, help="output map (.mrc)")
    p.add_argument("--reference", help="ground-truth map (.mrc) for the FSC")
    p.add_argument("--align", action=argparse.BooleanOptionalAction, default=True,
                   help="align the map (rotation and hand) to the reference before the FSC (default yes)")
    p.add_argument("--no-ctf", action="store_true", help="ignore CTF parameters in the STAR file")
    p.add_argument("--pad", type=int, default=2, help="Fourier padding factor (default 2)")
    p.add_argument("--batch-size", type=int, default=512, help="images per batch (default 512)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--force", action="store_true", help="overwrite the output map")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_reconstruct)


def _cmd_train(args: argparse.Namespace) -> int:
    from .learning.train import train_from_args

    train_from_args(args)
    return 0


def _add_train(sub) -> None:
    from .learning.train import add_train_arguments

    p = sub.add_parser("train", help="train the Siamese distance estimator (paper §2.2)")
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)


def _read_particles(path: str):
    """A RELION STAR file, or a bare .mrcs stack (pixel size from its header, no angles)."""
    from .io import Particles, read_stack, read_star

    p = Path(path)
    if p.suffix in (".mrcs", ".mrc"):
        images, pixel = read_stack(p)
        return Particles.create([p.resolve()] * len(images), np.arange(len(images)), pixel_size=pixel,
                                image_size=images.shape[-1], root=p.resolve().parent)
    return read_star(p)


def _recover_all_pairs(args: argparse.Namespace, model, images):
    """--all-pairs: every rank embeds its consecutive share of the images, then the sharded
    full-batch recovery runs over all ranks (one process outside torchrun). Returns the
    orientations on rank 0, None on the others."""
    from . import distributed
    from .learning.model import image_features
    from .orientations.recover import recover_orientations_allpairs_sharded

    rank, world, n = distributed.rank(), distributed.world_size(), len(images)
    if n < 2:
        raise ValueError(f"need at least 2 images to recover orientations; got {n}")
    mine = images[n * rank // world : n * (rank + 1) // world]
    if len(mine) >= 2:
        features = image_features(model, mine, progress=not args.quiet and rank == 0)
    else:  # a share of 0 or 1 image (more processes than images)
        features = model.features(np.asarray(mine, dtype=np.float32))
    weight = None if args.cutoff is None else ("cutoff", args.cutoff)
    result = recover_orientations_allpairs_sharded(features, weight=weight, max_epochs=args.steps, seed=args.seed)
    if rank != 0:
        return None
    print(f"all-pairs L_OR {result.losses[-1]:.4f} rad² per pair after {result.epochs} epochs on {world} "
          f"process(es) ({result.seconds:.1f} s)")
    return result.q


def _cmd_recover(args: argparse.Namespace) -> int:
    from . import distributed

    if not args.all_pairs and distributed.launched() and int(os.environ["WORLD_SIZE"]) > 1:
        raise ValueError("under torchrun with several processes, recover runs with --all-pairs only")
    return distributed.run(lambda device: _recover(args, device), distributed.device_option(args.device))


def _recover(args: argparse.Namespace, device) -> int:
    from . import distributed
    from .io import read_particle_images
    from .learning.model import SiameseNet
    from .orientations.frame import resolve_frame
    from .learning.model import image_features
    from .orientations.recover import recover_from_features
    from .io import write_recovered_star

    out = Path(args.output)
    _refuse_existing(out, args.force)
    particles = _read_particles(args.particles)
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
              f"{result.seconds:.1f} s); the global frame and handedness are arbitrary. Loss curve: {plot}")
    print(out)
    return 0


def _add_recover(sub) -> None:
    p = sub.add_parser(
        "recover", help="recover particle orientations from the images with a trained Siamese network",
        description="Estimate distances between projections with the Siamese network, then find the orientations "
        "whose pairwise distances match (L_OR). Writes a RELION 3.1 STAR with rlnAngleRot/Tilt/Psi (degrees) and "
        "origins set to 0. Distances leave a global O(4) ambiguity; the part that the images can see is then fixed "
        "(--resolve-frame), so the remaining global rotation of the map and its handedness are arbitrary. L_OR is "
        "the accuracy proxy when no ground truth exists.",
    )
    p.add_argument("particles", help="RELION STAR file or a bare .mrcs stack")
    p.add_argument("--model", required=True, help="trained network (.pt from `cryoorient train`)")
    p.add_argument("-o", "--output", required=True, help="output STAR file")
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
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--force", action="store_true", help="overwrite the output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_recover)


def _cmd_abinitio(args: argparse.Namespace) -> int:
    from .orientations.abinitio import estimate_orientations
    from .io import read_particle_images
    from .io import write_recovered_star

    out = Path(args.output)
    _refuse_existing(out, args.force)
    particles = _read_particles(args.particles)
    images = read_particle_images(particles)
    result = estimate_orientations(images, neighbors=args.neighbors, landmarks=args.landmarks or None, seed=args.seed,
                                   device=_device(args.device), progress=not args.quiet)
    write_recovered_star(particles, result.quaternions, out, overwrite=args.force)
    ev = ", ".join(f"{v:.4f}" for v in result.eigenvalues.tolist())
    print(f"estimated {len(particles)} orientations in {result.seconds:.1f} s; the global rotation and the "
          f"handedness of the map are arbitrary. Largest eigenvalues: {ev} (three close to 1 above a gap: "
          f"well determined)")
    print(out)
    return 0


def _add_abinitio(sub) -> None:
    p = sub.add_parser(
        "abinitio", help="estimate particle orientations from the images alone (no network, no reference)",
        description="Compare every image and mirror image with every other under in-plane rotation, keep the "
        "nearest neighbours and solve for the orientations that explain their in-plane angles (the eigenvector "
        "method of Singer et al. 2011; cryoorient.abinitio). For proteins the network never saw. Needs centred "
        "particles without CTF (phase-flip first) and white noise; the particle must lie inside the inscribed "
        "circle. Writes a RELION 3.1 STAR with rlnAngleRot/Tilt/Psi (degrees) and origins set to 0, ready for "
        "`cryoorient reconstruct` or `cryoorient refine`.",
    )
    p.add_argument("particles", help="RELION STAR file or a bare .mrcs stack")
    p.add_argument("-o", "--output", required=True, help="output STAR file")
    p.add_argument("--neighbors", type=int, default=10, help="neighbours kept per image and mirror image (default 10)")
    p.add_argument("--landmarks", type=int, default=5000,
                   help="build the neighbour graph on this many random images, place the others from their "
                   "neighbours among them (default 5000; 0: on all images, dense in the number of images)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--force", action="store_true", help="overwrite the output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_abinitio)


def _particle_keys(particles) -> list:
    """(absolute stack path, index) of each particle: its identity wherever the STAR file lies."""
    return list(zip(map(str, particles.stack_paths), particles.indices.tolist()))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .orientations.align import align_orientations, plot_error_histogram, save_errors_csv
    from .geometry import euler_to_quat
    from .io import read_star

    est, truth = read_star(args.recovered), read_star(args.truth)
    if est.angles is None or truth.angles is None:
        raise ValueError("both STAR files need rlnAngleRot/Tilt/Psi")
    if len(est) == 0:
        raise ValueError("no particles to evaluate")
    names_est, names_true = _particle_keys(est), _particle_keys(truth)
    if sorted(names_est) != sorted(names_true):
        raise ValueError(f"the STAR files hold different particles ({len(names_est)} vs {len(names_true)} images, "
                         "matched by stack file and index)")
    order = {n: k for k, n in enumerate(names_true)}
    idx = np.array([order[n] for n in names_est])
    qe = euler_to_quat(*torch.as_tensor(np.asarray(est.angles, dtype=np.float64)).unbind(1))
    qt = euler_to_quat(*torch.as_tensor(np.asarray(truth.angles, dtype=np.float64)[idx]).unbind(1))
    a = align_orientations(qt, qe, symmetry=args.symmetry)
    print(f"E_OR {a.error:.4f} rad ({a.error_deg:.2f}°), median {float(a.errors.median()):.4f} rad, "
          f"handedness {'flipped (mirror image)' if a.reflected else 'as the truth'}, {len(names_est)} particles")
    if args.histogram:
        _refuse_existing(Path(args.histogram), args.force)
        plot_error_histogram(args.histogram, a)
    if args.errors_csv:
        _refuse_existing(Path(args.errors_csv), args.force)
        save_errors_csv(args.errors_csv, a)
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="orientation recovery error E_OR against ground truth",
        description="Align the recovered orientations to the true ones over O(4) (a global rotation and "
        "reflection: paper eqs. 5-6) and report E_OR, the mean geodesic error in radians, and the handedness.",
    )
    p.add_argument("recovered", help="STAR file with recovered angles")
    p.add_argument("--truth", required=True, help="STAR file with true angles (same rlnImageName values)")
    p.add_argument("--symmetry", default=None, help="point group (C1, Cn, Dn, T, O, I); default none")
    p.add_argument("--histogram", help="write the per-particle error histogram to this PNG")
    p.add_argument("--errors-csv", help="write per-particle errors (radians) to this CSV")
    p.add_argument("--force", action="store_true", help="overwrite the histogram/CSV")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, run_demo

    settings = DemoSettings.quick() if args.quick else DemoSettings()
    settings.seed = args.seed
    summary = run_demo(args.output, settings, device=_device(args.device), force=args.force, progress=not args.quiet)
    out = Path(args.output)
    print(f"E_OR {summary['E_OR_rad']:.3f} rad ({summary['E_OR_deg']:.1f}°); map FSC 0.5 {summary['fsc05_A']:.1f} Å "
          f"(true orientations: {summary['fsc05_true_orientations_A']:.1f} Å); "
          f"{sum(summary['seconds'].values()):.0f} s. Report: {out / 'report.md'}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="the whole method on the built-in density: simulate, train, recover, evaluate, reconstruct",
        description="Generate the built-in asymmetric pseudo-molecule, simulate projections, train a small Siamese "
        "network on the fly, recover the test projections' orientations from the images alone, evaluate E_OR, "
        "reconstruct and compare the map by FSC. Writes DIR/report.md with PNG plots. About 5-10 minutes on a "
        "2-core CPU; about a minute on a GPU (the default device when one is available).",
    )
    p.add_argument("-o", "--output", default="cryoorient-demo", help="output directory (default ./cryoorient-demo)")
    p.add_argument("--quick", action="store_true", help="a reduced run of about a minute (tiny, inaccurate)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--force", action="store_true", help="replace the output directory")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)


def _cmd_refine(args: argparse.Namespace) -> int:
    import torch

    from .geometry import euler_to_quat, quat_to_euler
    from .io import read_map, read_particle_images, read_star, write_map, write_star
    from .maps.reconstruct import particle_ctf
    from .maps.refine import refine

    _refuse_existing(Path(args.output), args.force)
    if args.output_map:
        _refuse_existing(Path(args.output_map), args.force)
    particles = read_star(args.particles)
    if len(particles) == 0:
        raise ValueError(f"'{args.particles}' holds no particles")
    angles = particles.angles
    if angles is None:
        raise ValueError(f"'{args.particles}' has no rlnAngleRot/Tilt/Psi: refinement starts from given orientations")
    pixel = particles.pixel_size
    if pixel is None or not np.allclose(pixel, pixel[0], rtol=1e-4):
        raise ValueError("particles need one pixel size (rlnImagePixelSize) for all optics groups")
    pixel = float(pixel[0])
    volume, voxel = read_map(args.map, pad_to_cube=True)
    images = read_particle_images(particles)
    if volume.shape[0] != images.shape[-1]:
        raise ValueError(f"map box {volume.shape[0]} differs from the particle box {images.shape[-1]}")
    if abs(voxel - pixel) > 0.01 * pixel:
        raise ValueError(f"map voxel size {voxel:.4f} Å differs from the particle pixel size {pixel:.4f} Å")
    q0 = euler_to_quat(*torch.from_numpy(angles).T)
    origins = [np.zeros(len(particles)) if o is None else o for o in (particles.origin_x_angst, particles.origin_y_angst)]
    shifts = -torch.from_numpy(np.stack(origins, 1)) / pixel
    ctf = None
    if particles.defocus_u is not None:
        def ctf(indices, size):  # noqa: E306
            return particle_ctf(particles, indices.cpu().numpy(), size)
    result = refine(images, q0, shifts=shifts, ctf=ctf, rounds=args.rounds, pixel_size=pixel, reference=volume,
                    align_reference=not args.same_frame, soft=not args.hard,
                    device=_device(args.device))

    print(f"{'round':>5} {'res (Å)':>8} {'radius':>8} {'NCC':>8} {'moved (rad)':>11} {'shift (px)':>10}")
    for i, r in enumerate(result.rounds, 1):
        print(f"{i:5d} {r.resolution:8.2f} {r.radius:8.4f} {r.mean_score:8.4f} {r.mean_rotation:11.4f} {r.mean_shift:10.3f}")
    print(f"final resolution (FSC 0.143): {result.resolution:.2f} Å")
    print(f"handedness: the refined map is {'the MIRROR IMAGE of' if result.handedness_flipped else 'the same hand as'} "
          f"{args.map} (mean FSC {result.reference_fsc:.3f} in its hand)")
    out = particles.copy()
    rot, tilt, psi = quat_to_euler(result.quaternions)
    out.rot, out.tilt, out.psi = rot.numpy(), tilt.numpy(), psi.numpy()
    out.origin_x_angst, out.origin_y_angst = result.origins_angst.numpy().T
    out.data["rlnRandomSubset"] = result.half.numpy() + 1
    write_star(args.output, out, overwrite=args.force)
    print(f"wrote {args.output}")
    if args.output_map:
        write_map(args.output_map, result.map.numpy(), pixel, overwrite=args.force)
        print(f"wrote {args.output_map}")
    return 0


def _add_refine(sub) -> None:
    p = sub.add_parser(
        "refine",
        help="refine particle orientations and shifts by gold-standard projection matching",
        description="Refine the orientations (rlnAngleRot/Tilt/Psi) and origins of particles by alternating "
        "half-set reconstruction and local projection matching. The maps are reconstructed from the particles; "
        "--map (same box and pixel size, any frame) is the reference the refined map's handedness is "
        "reported against.",
    )
    p.add_argument("particles", help="RELION STAR file with starting orientations")
    p.add_argument("--map", required=True, help="reference map (MRC) for the handedness check")
    p.add_argument("-o", "--output", required=True, help="refined STAR file (RELION 3.1)")
    p.add_argument("--output-map", help="also write the refined map, low-pass filtered at its resolution (MRC)")
    p.add_argument("--rounds", type=int, default=5, help="reconstruction/search rounds (default 5)")
    p.add_argument("--same-frame", action="store_true",
                   help="--map is in the orientations' frame (skip the rotational alignment of the handedness check)")
    p.add_argument("--hard", action="store_true",
                   help="final half maps from the best matches only (default: soft assignment over each particle's "
                   "most probable local orientations and shifts, as RELION's marginalisation)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=_cmd_refine)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryoorient", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="version, compiled CUDA kernels and GPU availability")
    p.set_defaults(func=_cmd_info)
    _add_simulate(sub)
    _add_demo(sub)
    _add_recover(sub)
    _add_abinitio(sub)
    _add_evaluate(sub)
    _add_reconstruct(sub)
    _add_train(sub)
    _add_refine(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, IndexError, TypeError) as err:
        print(f"cryoorient {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
