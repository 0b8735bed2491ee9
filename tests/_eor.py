"""A small exact E_OR evaluator for tests and benchmarks (paper eq. 5; not part of the package).

E_OR = min over T in O(4) of the mean d_q(q_i, T·q̂_i). T is initialised in closed form
(the top eigenvector of the 16×16 second moment of q_i ⊗ q̂_i, which maximises
Σ <q_i, T q̂_i>² over a relaxation of O(4), projected onto O(4) by SVD; both components
of O(4) are reached), then sign-aware Procrustes iterations, then Adam on the 6 angles
of SO(4) around it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cryoorient.geometry import quat_distance


def _unit(q: Tensor) -> Tensor:
    q = q.detach().double().cpu()
    return q / q.norm(dim=1, keepdim=True)


def _project_o4(A: Tensor) -> Tensor:
    U, _, Vh = torch.linalg.svd(A)
    return U @ Vh


def _skew(theta: Tensor) -> Tensor:
    A = theta.new_zeros(4, 4)
    r, c = torch.triu_indices(4, 4, 1)
    A = A.index_put((r, c), theta)
    return A - A.T


def align(q_true: Tensor, q_hat: Tensor, steps: int = 200) -> tuple[float, Tensor]:
    """(E_OR in radians, T (4×4, in O(4))) with d_q(q_true_i, T q̂_i) minimal on average."""
    q, h = _unit(q_true), _unit(q_hat)
    X = (q[:, :, None] * h[:, None, :]).reshape(-1, 16)
    _, vecs = torch.linalg.eigh(X.T @ X)
    T = _project_o4(vecs[:, -1].reshape(4, 4))
    for _ in range(10):  # Procrustes with per-orientation signs
        s = torch.sign(((h @ T.T) * q).sum(1, keepdim=True))
        T = _project_o4((q * s).T @ h)
    theta = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=1e-3)
    best = (quat_distance(q, h @ T.T).mean().item(), T)
    for _ in range(steps):
        Tt = torch.linalg.matrix_exp(_skew(theta)) @ T
        e = quat_distance(q, h @ Tt.T).mean()
        if e.item() < best[0]:
            best = (e.item(), Tt.detach())
        opt.zero_grad()
        e.backward()
        opt.step()
    return best


def eor(q_true: Tensor, q_hat: Tensor, steps: int = 200) -> float:
    """Mean orientation recovery error E_OR (radians) after the best O(4) alignment."""
    return align(q_true, q_hat, steps)[0]
