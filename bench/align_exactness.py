"""Exactness of cryoorient.orientations.align.align_orientations over random planted problems.

Each trial draws q_true (P log-uniform in [10, 10⁴]), a Haar-random T ∈ O(4) (proper or
improper), q_est = T⁻¹·q_true with rotation noise σ ∈ {0, 0.01, 0.1, 0.3, 0.6} rad, a fraction
of outliers ∈ {0, 0, 0.3} and random signs and scales. Pass: the returned E_OR is at most the
error under the planted T plus 1e-4 rad. Runs on the CPU (or --device cuda).

    python bench/align_exactness.py [--trials 200] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from cryoorient.orientations.align import align_orientations, aligned_errors
from cryoorient.geometry import quat_multiply, random_quaternions


def planted(P: int, sigma: float, outliers: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    qt = random_quaternions(P, g, dtype=torch.float64)
    Q, R = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    T = Q * torch.sign(torch.diagonal(R))
    qe = qt @ T  # T·q_est = q_true
    if sigma:
        axis = torch.randn(P, 3, generator=g, dtype=torch.float64)
        axis = axis / axis.norm(dim=-1, keepdim=True)
        half = sigma * torch.randn(P, 1, generator=g, dtype=torch.float64) / 2
        qe = quat_multiply(qe, torch.cat([torch.cos(half), torch.sin(half) * axis], -1))
    n = int(outliers * P)
    qe[:n] = random_quaternions(n, g, dtype=torch.float64)
    qe = qe * torch.where(torch.rand(P, 1, generator=g) < 0.5, -1.0, 1.0).double() * (0.5 + torch.rand(P, 1, generator=g))
    return qt, qe, T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(2024)
    worst, fails, t_all = -math.inf, 0, 0.0
    print(f"{'trial':>5} {'P':>6} {'sigma':>5} {'outl':>4} {'refl':>5} {'planted':>9} {'E_OR':>9} {'gap':>9} {'s':>6}")
    for trial in range(args.trials):
        P = int(10 ** (1 + 3 * torch.rand(1, generator=g).item()))
        sigma = (0.0, 0.01, 0.1, 0.3, 0.6)[trial % 5]
        outliers = (0.0, 0.0, 0.3)[trial % 3]
        qt, qe, T = planted(P, sigma, outliers, seed=trial)
        qt, qe = qt.to(args.device), qe.to(args.device)
        e_planted = aligned_errors(qt, qe, T).mean().item()
        t0 = time.perf_counter()
        res = align_orientations(qt, qe, seed=trial)
        dt = time.perf_counter() - t0
        t_all += dt
        gap = res.error - e_planted
        worst = max(worst, gap)
        fails += gap > 1e-4
        print(
            f"{trial:5d} {P:6d} {sigma:5.2f} {outliers:4.1f} {str(res.reflected):>5} {e_planted:9.6f} {res.error:9.6f} "
            f"{gap:+9.1e} {dt:6.2f}{'  FAIL' if gap > 1e-4 else ''}",
            flush=True,
        )
    print(f"\n{args.trials} trials, {fails} failures, worst gap {worst:+.2e} rad (E_OR - planted), "
          f"{t_all:.1f} s total on {args.device} ({torch.get_num_threads()} threads)")
    if fails:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
