"""Paper Fig. 5 (§3.2): orientation recovery from perturbed exact distances.

    python bench/paper/fig5.py --device cpu                              # P = 1,650 (the test set)
    python bench/paper/fig5.py --device cuda -P 1650 100000 --out out/paper

P orientations uniform on SO(3) (``recovery_paper.true_orientations``: the same per seed); the
recovery sees d_q + ε with ε ~ N(0, σ²) fixed per pair and not clipped (paper §3.2), through
``cryoorient.orientations.recover`` with ``bench/recovery_paper.py``'s settings (4 restarts, Adam lr 0.3,
40 pair evaluations per orientation and step, at most 2,000 steps). For each σ² and P: E_OR
(radians, best O(4) alignment, eq. 5) and the final L_OR (rad², eq. 4). The paper's Fig. 5 uses
the orientations only, so no map is read. Writes ``fig5.png`` (E_OR and L_OR against σ², one line
per P; L_OR against E_OR) into ``--out`` and the rows ``fig5/sigma2=<σ²>/P=<P>`` into the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from _results import PAPER, ROOT, pyplot, start_run  # noqa: E402
from cryoorient.io.figure import save_figure  # noqa: E402
from recovery_paper import true_orientations  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variances", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.8], help="σ² of ε (rad²)")
    p.add_argument("--projections", "-P", type=int, nargs="+", default=[1650])
    p.add_argument("--restarts", type=int, default=4)
    p.add_argument("--steps", type=int, default=2000, help="maximum Adam steps (stops earlier on convergence)")
    p.add_argument("--pairs-per-orientation", type=float, default=40.0,
                   help="pair evaluations per orientation and step")
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "paper", help="figure and table folder")
    p.add_argument("--table", type=Path, help="results CSV (default: <out>/results.csv)")
    args = p.parse_args(argv)
    if min(args.projections) < 3 or min(args.variances) < 0 or args.restarts < 1 or args.steps < 1:
        p.error("need P >= 3, σ² >= 0, --restarts >= 1 and --steps >= 1")
    return args


def plot(results: list[dict], path: Path) -> None:
    fig, axes = pyplot().subplots(1, 3, figsize=(13, 3.8))
    for P in sorted({r["P"] for r in results}):
        rs = sorted((r for r in results if r["P"] == P), key=lambda r: r["sigma2"])
        s2 = [r["sigma2"] for r in rs]
        axes[0].plot(s2, [r["E_OR"] for r in rs], "o-", label=f"P = {P:,}")
        axes[1].plot(s2, [r["L_OR"] for r in rs], "o-", label=f"P = {P:,}")
        axes[2].scatter([r["E_OR"] for r in rs], [r["L_OR"] for r in rs], label=f"P = {P:,}")
    stated = [(float(k.split("=")[1]), v["paper_E_OR_rad"]) for k, v in PAPER.items() if k.startswith("fig5/")]
    axes[0].plot(*zip(*stated), "kx", ms=9, label="paper (text)")
    axes[0].set(xlabel="σ² of the distance error (rad²)", ylabel="E_OR (rad)", title="recovery error")
    axes[1].set(xlabel="σ² of the distance error (rad²)", ylabel="L_OR (rad²)", title="recovery loss")
    axes[2].set(xlabel="E_OR (rad)", ylabel="L_OR (rad²)", title="L_OR as a proxy for E_OR")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Fig. 5: orientation recovery from perturbed distances (d_q + N(0, σ²))")
    save_figure(fig, path)


def main(argv=None) -> int:
    from cryoorient.orientations.align import orientation_error
    from cryoorient.orientations.recover import PerturbedDistances, recover_orientations

    args = parse_args(argv)
    run = start_run("fig5", args, argv)
    if run is None:
        return 2
    results, rows = [], []
    print(f"{'P':>7} {'σ²':>5} {'E_OR rad':>9} {'L_OR':>9} {'steps':>6} {'seconds':>8}")
    for P in args.projections:
        q = true_orientations(P, args.seed, run.device)
        for v in args.variances:
            result = recover_orientations(
                PerturbedDistances(q, v, seed=args.seed), restarts=args.restarts, steps=args.steps,
                pairs_per_step=max(1, round(args.pairs_per_orientation * P / 2)), lr=args.lr, seed=args.seed,
                device=run.device, progress=False)
            e = orientation_error(q, result.orientations)
            print(f"{P:>7} {v:5.2f} {e:9.3g} {result.loss:9.3g} {result.steps:>6} {result.seconds:8.1f}", flush=True)
            results.append({"P": P, "sigma2": v, "E_OR": e, "L_OR": result.loss})
            rows.append(run.row(f"fig5/sigma2={v:g}/P={P}", f"σ² = {v:g}, P = {P:,}", paper=f"fig5/sigma2={v:g}",
                                E_OR_rad=e, L_OR=result.loss, seconds=result.seconds))
    plot(results, run.out / "fig5.png")
    run.save(rows, [run.out / "fig5.png"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
