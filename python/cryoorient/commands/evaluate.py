"""``cryoorient evaluate``: takes two particle files (RELION STAR or cryoSPARC .cs) with orientations,
the recovered and the true orientations of the same particles (matched by stack file and index);
prints E_OR (paper eq. 5: the mean geodesic error in radians after the best O(4) alignment) and the
physical error (after only a global rotation of the map and a choice of its hand) with the hand that
fits; optionally writes the E_OR error histogram (PNG) and per-particle errors (CSV, radians)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ._common import add_run_flags, refuse_existing, torch_device

HELP = "orientation recovery error E_OR and the physical error against ground truth"
DESCRIPTION = (
    "Align the recovered orientations to the true ones over O(4) (paper eqs. 5-6) and report E_OR, the mean "
    "geodesic error in radians. Then report the physical error: the error left after only what the images "
    "cannot tell, a global rotation of the map and the map's hand (its mirror image), and which hand fits."
)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recovered", help="recovered orientations: RELION STAR (.star) or cryoSPARC (.cs)")
    p.add_argument("--truth", required=True, help="true orientations of the same particles (.star or .cs)")
    p.add_argument("--symmetry", default=None, help="point group (C1, Cn, Dn, T, O, I); default none")
    p.add_argument("--histogram", help="write the per-particle E_OR error histogram to this PNG")
    p.add_argument("--errors-csv", help="write per-particle E_OR errors (radians) to this CSV")
    add_run_flags(p, "overwrite the histogram/CSV", quiet=None)


def _particle_keys(particles) -> list:
    """(absolute stack path, index) of each particle: its identity wherever the file lies."""
    return list(zip(map(str, particles.stack_paths), particles.indices.tolist()))


def _quaternions(particles, order, device):
    import torch

    from ..geometry import euler_to_quat

    angles = torch.as_tensor(np.asarray(particles.angles, dtype=np.float64)[order], device=device)
    return euler_to_quat(*angles.unbind(1))


def main(args: argparse.Namespace) -> int:
    from ..io import read_particles
    from ..orientations.align import align_orientations, physical_error, plot_error_histogram, save_errors_csv

    for path in (args.histogram, args.errors_csv):
        if path:
            refuse_existing(Path(path), args.force, inputs=(args.recovered, args.truth))
    device = torch_device(args.device)
    est, truth = read_particles(args.recovered), read_particles(args.truth)
    if est.angles is None or truth.angles is None:
        raise ValueError("both files need orientations (rlnAngleRot/Tilt/Psi, or a cryoSPARC pose)")
    if len(est) == 0:
        raise ValueError("no particles to evaluate")
    names_est, names_true = _particle_keys(est), _particle_keys(truth)
    if sorted(names_est) != sorted(names_true):
        raise ValueError(f"the files hold different particles ({len(names_est)} vs {len(names_true)} images, "
                         "matched by stack file and index)")
    order = {n: k for k, n in enumerate(names_true)}
    qe = _quaternions(est, slice(None), device)
    qt = _quaternions(truth, np.array([order[n] for n in names_est]), device)
    a = align_orientations(qt, qe, symmetry=args.symmetry)
    phys = physical_error(qt, qe, symmetry=args.symmetry)
    print(f"E_OR {a.error:.4f} rad ({a.error_deg:.2f}°), median {float(a.errors.median()):.4f} rad, "
          f"{len(names_est)} particles")
    print(f"physical error {phys.error:.4f} rad ({np.degrees(phys.error):.2f}°), median "
          f"{float(phys.errors.median()):.4f} rad (after only a global rotation of the map and its hand)")
    hand, other = (("same hand as the truth", "mirror") if phys.hand == "same"
                   else ("mirror hand (the mirror image of the truth)", "same"))
    print(f"map: {hand}; in the {other} hand the physical error is {phys.error_other_hand:.4f} rad")
    if args.histogram:
        plot_error_histogram(args.histogram, a)
    if args.errors_csv:
        save_errors_csv(args.errors_csv, a)
    return 0
