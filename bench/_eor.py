"""Private E_OR evaluator for the all-pairs benchmarks (paper eq. 5): the package's own
alignment lives in cryoorient.align; this small one is only for bench scripts.

E_OR = min over T in O(4) of mean_i d_q(q_i, T q̂_i), found by Procrustes iterations with the
per-projection signs re-chosen each step, started from the signs implied by a few reference
projections, for both components of O(4).
"""

from __future__ import annotations

import torch


def orientation_recovery_error(q_true, q_hat, n_starts: int = 6, iterations: int = 30) -> float:
    """E_OR in radians between (P, 4) true and recovered quaternions."""
    A = torch.nn.functional.normalize(q_true.detach().double().cpu(), dim=1)
    B = torch.nn.functional.normalize(q_hat.detach().double().cpu(), dim=1)
    best = float("inf")
    for det in (1.0, -1.0):
        for r in torch.linspace(0, len(A) - 1, n_starts).long().tolist():
            s = torch.sign((A @ A[r]) * (B @ B[r]))[:, None]  # sign of q̂_i relative to q_i, if q̂_r ~ T q_r
            s[s == 0] = 1
            for _ in range(iterations):
                U, _, Vh = torch.linalg.svd(A.T @ (s * B))
                D = torch.ones(4, dtype=A.dtype)
                D[-1] = det * torch.sign(torch.linalg.det(U @ Vh))
                T = U @ torch.diag(D) @ Vh
                s = torch.sign((A * (B @ T.T)).sum(1, keepdim=True))
                s[s == 0] = 1
            d = 2 * torch.acos((A * (B @ T.T)).sum(1).abs().clamp(max=1))
            best = min(best, d.mean().item())
    return best
