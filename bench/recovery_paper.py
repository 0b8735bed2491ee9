"""Paper §3.2: orientation recovery from exact and from perturbed distances, one command each.

    python bench/recovery_paper.py exact --projections 1650 --seeds 0-9
    python bench/recovery_paper.py perturbed --variances 0 0.2 0.4 0.8 --projections 1650 10000
    python bench/recovery_paper.py plateau --plateau 2.0 --variance 0.1 --cutoff 1.2
    python bench/recovery_paper.py exact --projections 100000 --device cuda      # GPU

True orientations are uniform on SO(3) (seeded). "exact" recovers from d_q itself;
"perturbed" from d_q + ε with ε ~ N(0, σ²) fixed per unordered pair and not clipped (as in
the paper); "plateau" from min(d_q, plateau) + ε, a distance estimator that saturates.
Each row prints E_OR (radians, after the best O(4) alignment, paper eq. 5), the final
L_OR, the steps, the pair evaluations per orientation (2·steps·pairs_per_step / P) and
the wall-clock seconds of the recovery (the E_OR alignment is not timed). The number of
pairs per step is ``--pairs-per-orientation`` × P / 2 (default 20 × P: the same budget per
orientation whatever P).
"""

from __future__ import annotations

import argparse
from pathlib import Path
import statistics

import torch

from cryoorient.orientations.align import orientation_error as eor
from cryoorient.orientations.recover import ExactDistances, PerturbedDistances, recover_orientations


def true_orientations(P: int, seed: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + seed)
    q = torch.randn(P, 4, generator=g, dtype=torch.float64)
    return (q / q.norm(dim=1, keepdim=True)).to(device=device, dtype=torch.float32)


def seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["exact", "perturbed", "plateau"])
    parser.add_argument("--projections", "-P", type=int, nargs="+", default=[1650])
    parser.add_argument("--variances", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.8], help="perturbed: σ² list")
    parser.add_argument("--variance", type=float, default=0.1, help="plateau: σ² of the error")
    parser.add_argument("--plateau", type=float, default=2.0, help="plateau: saturation distance (radians)")
    parser.add_argument("--cutoff", type=float, default=None, help="trust only distances below this (radians)")
    parser.add_argument("--spread", type=float, default=1.0)
    parser.add_argument("--seeds", type=seeds, default=[0], help="e.g. 0-9 or 0,3,5")
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2000, help="maximum steps (stops earlier on convergence)")
    parser.add_argument(
        "--pairs-per-orientation", type=float, default=40.0, help="pair evaluations per orientation per step"
    )
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--patience", type=int, default=3, help="evaluations without progress before the LR decays")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--plot", type=Path, default=None, help="folder for L_OR curve PNGs")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.experiment == "perturbed":
        conditions = [(P, v) for v in args.variances for P in args.projections]
    else:
        conditions = [(P, args.variance if args.experiment == "plateau" else 0.0) for P in args.projections]
    note = f", plateau {args.plateau}" if args.experiment == "plateau" else ""
    print(f"§3.2 {args.experiment}: {device}, restarts {args.restarts}, lr {args.lr}, cutoff {args.cutoff}{note}")
    header = (
        f"{'P':>7} {'σ²':>5} {'seed':>4} {'E_OR rad':>9} {'L_OR':>9} {'steps':>6} {'pairs/orient':>12} {'seconds':>8}"
    )
    print(header)
    print("-" * len(header))
    summary = []
    for P, variance in conditions:
        errors, times = [], []
        for seed in args.seeds:
            q = true_orientations(P, seed, device)
            if args.experiment == "exact":
                source = ExactDistances(q)
            else:
                plateau = args.plateau if args.experiment == "plateau" else None
                source = PerturbedDistances(q, variance, seed=seed, plateau=plateau)
            if device.type == "cuda":
                torch.cuda.synchronize()
            result = recover_orientations(
                source,
                restarts=args.restarts,
                steps=args.steps,
                pairs_per_step=max(1, round(args.pairs_per_orientation * P / 2)),
                lr=args.lr,
                patience=args.patience,
                cutoff=args.cutoff,
                spread=args.spread,
                seed=seed,
                device=device,
                progress=args.progress,
            )
            e = eor(q, result.orientations)
            errors.append(e), times.append(result.seconds)
            print(f"{P:>7} {variance:5.2f} {seed:>4} {e:9.3g} {result.loss:9.3g} {result.steps:>6} "
                  f"{result.pairs_per_orientation:12.0f} {result.seconds:8.1f}", flush=True)
            if args.plot is not None:
                args.plot.mkdir(parents=True, exist_ok=True)
                result.plot(str(args.plot / f"{args.experiment}_P{P}_var{variance}_seed{seed}.png"))
        summary.append((P, variance, errors, times))
    if len(args.seeds) > 1 or len(summary) > 1:
        print("\nsummary (over seeds)")
        print(f"{'P':>7} {'σ²':>5} {'E_OR median':>11} {'E_OR max':>9} {'seconds max':>11}")
        for P, variance, errors, times in summary:
            print(f"{P:>7} {variance:5.2f} {statistics.median(errors):11.3g} {max(errors):9.3g} {max(times):11.1f}")


if __name__ == "__main__":
    main()
