"""Paper §3.5 (Fig. 8a,b and 9c,d): the full pipeline and the reconstruction, on 5j0n.

    python bench/paper/sec35.py --device cuda --out out/paper           # noiseless and σ² = 16

For each noise variance (``--sigma2``; 0 = noiseless): ``bench/snn_paper.py``'s protocol
(5,000 projections of 116², split 50/17/33, distance learning, recovery of the 1,650 test
orientations from d̂_p, E_OR after the best O(4) alignment) with ``--reconstruct``: the map is
reconstructed from the noiseless projections of the test orientations (as in the paper, to
measure the orientation errors alone) with the recovered orientations, after
``cryoorient.orientations.frame`` resolved their image frame from the (noisy) test images, aligned to the
truth (rotation and hand) and compared by FSC; the same with the true orientations is the best
the box allows. The network trains on fresh on-the-fly projections (``--train-source dataset``:
on the 2,500 training images, as the paper did) for 60 epochs of 100 steps by default. Options
this script does not define go to snn_paper unchanged (``--n``, ``--size``, ``--batch-size``,
``--widths``, ``--restarts``, ``--recover-steps``, ...).

Writes ``sec35_fsc.png`` (FSC against spatial frequency: recovered and true orientations, every
setting) into ``--out`` and the rows ``sec3.5/noiseless`` and ``sec3.5/sigma2=<σ²>`` (E_OR, L_OR,
best validation L_DE, FSC 0.5 and 0.143 in Å) into the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import snn_paper  # noqa: E402
from _results import (  # noqa: E402
    add_run_arguments, parse_passthrough, pyplot, run_protocol, start_run,
)
from cryoorient.io.figure import save_figure  # noqa: E402

OWN = ("--protocol", "--workdir", "--reconstruct", "--sigma2")  # set by this script for each setting


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--map", type=Path, default=snn_paper.SHARED / "maps" / "5j0n.mrc")
    p.add_argument("--sigma2", type=float, nargs="+", default=[0.0, 16.0],
                   help="noise variances of the training/test images (0 = noiseless; clean images have unit variance)")
    p.add_argument("--epochs", type=int, default=60)
    add_run_arguments(p, "figure and table")
    args, rest = parse_passthrough(p, argv, OWN, "sec35.py")
    if min(args.sigma2) < 0:
        p.error("σ² must be >= 0")
    return args, rest


def size_below_box(args, rest) -> str | None:
    """Why the reconstruction cannot run (snn_paper's --size below the map's box), or None."""
    from cryoorient.imaging.simulate import load_volume

    box, size = load_volume(args.map)[0].shape[0], snn_paper.parse_args(["--protocol", "noiseless"] + rest).size
    if size < box:
        return f"--size {size} is smaller than the map box ({box}); the reconstruction needs --size >= {box}"
    return None


def run_setting(args, rest, sigma2: float) -> dict:
    """The protocol with --reconstruct; the row and the FSC curves (recovered, true orientations)."""
    protocol = "noise" if sigma2 else "noiseless"
    row, seconds = run_protocol(args, rest, f"sec35-{protocol}-sigma2{sigma2:g}", sigma2, "--reconstruct")
    print(f"[sec35] σ² {sigma2:g}: E_OR {row['E_OR']:.3f} rad, FSC 0.5 {row['fsc05_A']:.2f} Å, "
          f"0.143 {row['fsc0143_A']:.2f} Å (true orientations {row['fsc05_true_A']:.2f} Å); {seconds:.1f} s "
          f"(training {row['train_seconds']:.1f} s)", flush=True)
    return {"row": row, "seconds": seconds}


def plot(results: dict, path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    for k, (sigma2, r) in enumerate(results.items()):
        label = f"σ² = {sigma2:g}" if sigma2 else "noiseless"
        c = f"C{k}"
        row = r["row"]
        ax.plot(row["fsc_frequency"], row["fsc"], c=c, label=f"{label}, recovered q ({row['fsc05_A']:.1f} Å)")
        ax.plot(row["fsc_frequency"], row["fsc_true"], c=c, ls="--",
                label=f"{label}, true q ({row['fsc05_true_A']:.1f} Å)")
    for level in (0.5, 0.143):
        ax.axhline(level, c="gray", lw=0.8, ls=":")
    ax.set(xlabel="spatial frequency (1/Å)", ylabel="FSC with the true map", ylim=(-0.1, 1.05),
           title="§3.5: maps from the recovered orientations (FSC 0.5 in the legend)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None) -> int:
    args, rest = parse_args(argv)
    run = start_run("sec35", args, argv, map_path=args.map, check=lambda: size_below_box(args, rest))
    if run is None:
        return 2
    results, rows = {}, []
    for sigma2 in args.sigma2:
        r = results[sigma2] = run_setting(args, rest, sigma2)
        row = r["row"]
        experiment, setting = ("sec3.5/noiseless", "noiseless") if not sigma2 else (
            f"sec3.5/sigma2={sigma2:g}", f"noise σ² = {sigma2:g}")
        rows.append(run.row(experiment, setting, paper=experiment, E_OR_rad=row["E_OR"], L_OR=row["L_OR"],
                            L_DE=row["val_loss"], fsc05_A=row["fsc05_A"], fsc0143_A=row["fsc0143_A"],
                            fsc05_true_A=row["fsc05_true_A"], seconds=r["seconds"]))
    plot(results, run.out / "sec35_fsc.png")
    run.save(rows, [run.out / "sec35_fsc.png"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
