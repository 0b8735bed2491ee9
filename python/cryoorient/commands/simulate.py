"""``cryoorient simulate``: takes a map (.mrc, Å per voxel from its header) or an atomic model
(.cif/.pdb, with --size in pixels and --pixel-size in Å); writes DIR/particles.mrcs,
DIR/particles.star (RELION 3.1: true angles in degrees, origins in Å, defocus in Å) and
DIR/simulation.json. Defocus is given in µm on the command line."""

from __future__ import annotations

import argparse

from ._common import add_run_flags, torch_device

HELP = "simulate a particle dataset (projections, shifts, CTF, noise) as .mrcs + RELION STAR"
DESCRIPTION = (
    "Simulate p = C S P x + n from a map (.mrc; non-cubic maps are zero-padded to a cube) or an "
    "atomic model (.cif/.pdb; needs --size and --pixel-size). Writes DIR/particles.mrcs, DIR/particles.star "
    "(ground-truth angles, origins, CTF) and DIR/simulation.json."
)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="map (.mrc/.map) or atomic model (.cif/.pdb)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory (must not exist unless --force; "
                   "never one holding the current directory, the home directory or SOURCE)")
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
    p.add_argument("--chunk-size", type=int, default=1000, help="images computed and written at once (default 1000)")
    p.add_argument("--interpolation", choices=["auto", "cubic", "linear"], default="auto",
                   help="Fourier-slice interpolation: cubic (~0.05%% error) or linear (~2.5%%, 5-8x faster on "
                   "CPU); auto = cubic on CUDA, linear on CPU (default)")
    p.add_argument("--pad", type=float, default=2.0, help="Fourier oversampling of the map (default 2)")
    p.add_argument("--projector", choices=["fourier", "astra"], default="fourier",
                   help="fourier: the native Fourier-slice projector (default); astra: the ASTRA Toolbox's GPU "
                   "ray integrator, as the paper projected (needs astra-toolbox and a GPU)")
    add_run_flags(p, "replace the output directory if it exists and cryoorient wrote it", seed=True)


#: Largest mean defocus (µm) the command takes: single-particle data lie well below (0.5–5 µm); a value above is
#: most likely given in Å.
MAX_DEFOCUS_UM = 20.0


def main(args: argparse.Namespace) -> int:
    from ..imaging.simulate import SimulationSettings, simulate

    if args.shift_dist is None:
        args.shift_dist = "triangular" if args.shift_max > 0 else "none"
    if args.ctf and max(args.defocus_min, args.defocus_max) > MAX_DEFOCUS_UM:
        raise ValueError(f"--defocus-min/--defocus-max are in µm (at most {MAX_DEFOCUS_UM:g}); got "
                         f"{args.defocus_min:g}, {args.defocus_max:g}: Å divided by 10,000 gives µm")
    settings = SimulationSettings(
        n=args.n, size=args.size, orientations=args.orientations,
        euler_ranges=(tuple(args.rot_range), tuple(args.tilt_range), tuple(args.psi_range)),
        symmetry=args.symmetry, shift_distribution=args.shift_dist, shift_max=args.shift_max,
        shift_unit=args.shift_unit, ctf=args.ctf, defocus_min=args.defocus_min * 1e4,
        defocus_max=args.defocus_max * 1e4, astigmatism=args.astigmatism, voltage=args.voltage, cs=args.cs,
        amplitude_contrast=args.amplitude_contrast, b_factor=args.b_factor, phase_shift=args.phase_shift,
        snr_db=args.snr, sigma2=args.sigma2, normalize=args.normalize, seed=args.seed,
        chunk_size=args.chunk_size, interpolation=args.interpolation, pad=args.pad, projector=args.projector,
    )
    out = simulate(args.source, args.output, settings, device=torch_device(args.device), force=args.force,
                   progress=not args.quiet, pixel_size=args.pixel_size, resolution=args.resolution)
    print(out)
    return 0
