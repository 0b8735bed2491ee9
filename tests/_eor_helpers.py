"""Test-only orientation-error helpers (the package's E_OR lives in cryoorient.orientations.align)."""

import torch

from cryoorient.geometry import quat_conjugate, quat_distance, quat_multiply


def mean_error(q_true: torch.Tensor, q_est: torch.Tensor) -> float:
    """Mean d_q (rad) with both sets in the same frame (no alignment)."""
    return float(quat_distance(q_true.double(), q_est.double()).mean())


def aligned_error(q_true: torch.Tensor, q_est: torch.Tensor) -> float:
    """Mean d_q (rad) after the best global map rotation g (q_est ≈ q_true·g), for sets in nearly the same frame."""
    m = quat_multiply(quat_conjugate(q_true.double()), q_est.double())
    g = torch.linalg.eigh(m.T @ m).eigenvectors[:, -1]
    return float(quat_distance(quat_multiply(q_true.double(), g.expand_as(m)), q_est.double()).mean())
