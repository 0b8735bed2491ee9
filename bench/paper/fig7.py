"""Paper Fig. 7 (§3.4): sensitivity of distance learning to shifts (a) and to noise (b), on 5j0n.

    python bench/paper/fig7.py --device cuda --out out/paper                     # both panels
    python bench/paper/fig7.py --device cuda --panels b --sigma2 0 16 --epochs 30

Each setting runs ``bench/snn_paper.py``'s protocol (5,000 projections of 116², split 50/17/33,
validation on 7,022 uniform-distance pairs, recovery of the 1,650 test orientations from d̂_p,
E_OR after the best O(4) alignment) on a dataset simulated with that perturbation only:
(a) shifts of both image axes drawn from a triangular distribution of mean 0 and limit t pixels
(``--shifts``), no noise; (b) white noise of variance σ² after the standardisation of the clean
images (``--sigma2``; σ² = 16 ≈ −12 dB), no shift. The unperturbed setting is run once for both.
The network trains on fresh on-the-fly projections with the same perturbation by default
(``--train-source dataset``: on the 2,500 training images, as the paper did). Options this
script does not define (``--n``, ``--size``, ``--batch-size``, ``--widths``, ``--restarts``,
``--recover-steps``, ``--lr``, ``--amp``, ...) go to snn_paper unchanged.

Defaults: 40 epochs of 50 steps of 256 images per setting when training on the fly (~45 s per
setting on one H100, ~7 minutes for the 9 settings; snn_paper's full protocol uses 60-100
epochs of 100 steps). With 10 epochs the settings with shifts >= 10 px or σ² >= 9 were still at
chance level on an H100: the harder settings need the longer training.
Per setting the script prints its time and records the validation L_DE of every epoch (the
paper's box plots are over epochs), the best validation L_DE, L_OR and E_OR. Writes
``fig7a_shift.png``, ``fig7b_noise.png`` into ``--out`` and the rows ``fig7a/shift=<t>`` and
``fig7b/sigma2=<σ²>`` into the table; simulated datasets and training logs go to ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import snn_paper  # noqa: E402
from _results import (  # noqa: E402
    PAPER, add_run_arguments, parse_passthrough, pyplot, run_protocol, start_run,
)
from cryoorient.io.figure import save_figure  # noqa: E402

OWN = ("--protocol", "--workdir", "--sigma2", "--shift-max", "--snr")  # set by this script for each setting


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--map", type=Path, default=snn_paper.SHARED / "maps" / "5j0n.mrc")
    p.add_argument("--panels", nargs="+", choices=("a", "b"), default=["a", "b"])
    p.add_argument("--shifts", type=float, nargs="+", default=[0.0, 5.0, 10.0, 15.0],
                   help="(a) limits of the triangular shift distribution, pixels")
    p.add_argument("--sigma2", type=float, nargs="+", default=[0.0, 1.0, 4.0, 9.0, 16.0, 25.0],
                   help="(b) noise variances (clean images have unit variance)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--steps-per-epoch", type=int,
                   help="default: 50 on the fly, one pass over the training images with --train-source dataset")
    add_run_arguments(p, "figures and table")
    args, rest = parse_passthrough(p, argv, OWN, "fig7.py")
    if min(args.shifts) < 0 or min(args.sigma2) < 0:
        p.error("shift limits and σ² must be >= 0")
    return args, rest


def run_setting(args, rest, shift: float, sigma2: float) -> dict:
    """snn_paper's protocol with the setting's σ² and shift limit: train, validate every epoch,
    recover the test orientations; the validation L_DE per epoch."""
    name = f"fig7-shift{shift:g}-sigma2{sigma2:g}"
    steps = args.steps_per_epoch or (50 if args.train_source == "fly" else None)
    row, seconds = run_protocol(args, rest, name, sigma2, "--shift-max", f"{shift:g}",
                                *(["--steps-per-epoch", str(steps)] if steps else []))
    history = json.loads((args.workdir / name / f"{row['arch']}-{row['train_source']}" / "history.json").read_text())
    val = [h["val_loss"] for h in history["epochs"]]
    print(f"[fig7] shift {shift:g} px, σ² {sigma2:g}: val L_DE {row['val_loss']:.4f}, L_OR {row['L_OR']:.4f}, "
          f"E_OR {row['E_OR']:.3f} rad; {seconds:.1f} s (training {row['train_seconds']:.1f} s)", flush=True)
    return {"val_losses": val, "L_DE": row["val_loss"], "L_OR": row["L_OR"], "E_OR": row["E_OR"], "seconds": seconds}


def plot_panel(values, results, xlabel: str, title: str, paper: dict, path: Path) -> None:
    """The paper's Fig. 7 layout: validation L_DE over epochs as box plots, L_OR and E_OR per setting."""
    labels = [f"{v:g}" for v in values]
    x = list(range(1, len(values) + 1))
    fig, (ax0, ax1) = pyplot().subplots(1, 2, figsize=(11, 4))
    ax0.boxplot([r["val_losses"] for r in results], positions=x)
    ax0.set_xticks(x, labels)
    ax0.set(xlabel=xlabel, ylabel="validation L_DE (rad²)", title="distance learning (over epochs)")
    ax1.plot(x, [r["L_OR"] for r in results], "s-", label="L_OR (rad²)")
    ax1.plot(x, [r["E_OR"] for r in results], "o-", label="E_OR (rad)")
    stated = [(k + 1, paper[v]) for k, v in enumerate(values) if v in paper]
    if stated:
        ax1.plot(*zip(*stated), "kx", ms=9, label="paper E_OR (text)")
    ax1.set_xticks(x, labels)
    ax1.set(xlabel=xlabel, title="orientation recovery (test set)")
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def main(argv=None) -> int:
    args, rest = parse_args(argv)
    run = start_run("fig7", args, argv, map_path=args.map)
    if run is None:
        return 2
    panels = {"a": [(t, 0.0) for t in args.shifts], "b": [(0.0, v) for v in args.sigma2]}
    runs: dict[tuple[float, float], dict] = {}
    rows = []
    start = time.perf_counter()
    for panel in args.panels:
        results = []
        for shift, sigma2 in panels[panel]:
            if (shift, sigma2) not in runs:
                runs[shift, sigma2] = run_setting(args, rest, shift, sigma2)
            r = runs[shift, sigma2]
            results.append(r)
            metrics = dict(E_OR_rad=r["E_OR"], L_OR=r["L_OR"], L_DE=r["L_DE"], seconds=r["seconds"])
            if panel == "a":
                rows.append(run.row(f"fig7a/shift={shift:g}", f"shifts: triangular, limit {shift:g} px", paper=None,
                                    **metrics))
            else:
                rows.append(run.row(f"fig7b/sigma2={sigma2:g}", f"noise σ² = {sigma2:g}" if sigma2 else "noiseless",
                                    paper=f"fig7b/sigma2={sigma2:g}", **metrics))
        if panel == "a":
            plot_panel(args.shifts, results, "shift limit (px)", "Fig. 7a: learning from shifted projections",
                       {}, run.out / "fig7a_shift.png")
        else:
            paper = {float(k.split("=")[1]): v["paper_E_OR_rad"] for k, v in PAPER.items() if k.startswith("fig7b/")}
            plot_panel(args.sigma2, results, "noise variance σ²", "Fig. 7b: learning from noisy projections",
                       paper, run.out / "fig7b_noise.png")
    run.save(rows, prefix=f"[fig7] {len(runs)} setting(s) in {time.perf_counter() - start:.1f} s; ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
