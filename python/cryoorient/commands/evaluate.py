"""``cryoorient evaluate``: takes two RELION STAR files with rlnAngleRot/Tilt/Psi (degrees), the
recovered and the true orientations of the same particles (matched by stack file and index);
prints E_OR, the mean geodesic error in radians after the best O(4) alignment, and the
handedness; optionally writes the error histogram (PNG) and per-particle errors (CSV, radians)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ._common import add_run_flags, refuse_existing

HELP = "orientation recovery error E_OR against ground truth"
DESCRIPTION = (
    "Align the recovered orientations to the true ones over O(4) (a global rotation and "
    "reflection: paper eqs. 5-6) and report E_OR, the mean geodesic error in radians, and the handedness."
)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recovered", help="STAR file with recovered angles")
    p.add_argument("--truth", required=True, help="STAR file with true angles (same rlnImageName values)")
    p.add_argument("--symmetry", default=None, help="point group (C1, Cn, Dn, T, O, I); default none")
    p.add_argument("--histogram", help="write the per-particle error histogram to this PNG")
    p.add_argument("--errors-csv", help="write per-particle errors (radians) to this CSV")
    add_run_flags(p, "overwrite the histogram/CSV", device=False, quiet=None)


def _particle_keys(particles) -> list:
    """(absolute stack path, index) of each particle: its identity wherever the STAR file lies."""
    return list(zip(map(str, particles.stack_paths), particles.indices.tolist()))


def main(args: argparse.Namespace) -> int:
    import torch

    from ..geometry import euler_to_quat
    from ..io import read_star
    from ..orientations.align import align_orientations, plot_error_histogram, save_errors_csv

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
        refuse_existing(Path(args.histogram), args.force)
        plot_error_histogram(args.histogram, a)
    if args.errors_csv:
        refuse_existing(Path(args.errors_csv), args.force)
        save_errors_csv(args.errors_csv, a)
    return 0
