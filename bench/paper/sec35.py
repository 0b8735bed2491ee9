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
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import snn_paper  # noqa: E402
from _results import (  # noqa: E402
    add_run_arguments, cannot_start, command_line, make_row, parse_passthrough, upsert,
)

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


def run_setting(args, rest, sigma2: float, device) -> dict:
    """The protocol with --reconstruct; the row and the FSC curves (recovered, true orientations)."""
    protocol = "noise" if sigma2 else "noiseless"
    argv = ["--protocol", protocol, "--map", str(args.map), "--arch", args.arch, "--train-source",
            args.train_source, "--epochs", str(args.epochs), "--device", args.device, "--seed", str(args.seed),
            "--reconstruct", *(["--sigma2", f"{sigma2:g}"] if sigma2 else []), *(["--quiet"] if args.quiet else [])]
    sargs = snn_paper.parse_args(argv + rest)
    workdir = args.workdir / f"sec35-{protocol}-sigma2{sigma2:g}"
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    row = snn_paper.run_protocol(sargs, workdir, device)[0]
    seconds = time.perf_counter() - t0
    print(f"[sec35] σ² {sigma2:g}: E_OR {row['E_OR']:.3f} rad, FSC 0.5 {row['fsc05_A']:.2f} Å, "
          f"0.143 {row['fsc0143_A']:.2f} Å (true orientations {row['fsc05_true_A']:.2f} Å); {seconds:.1f} s "
          f"(training {row['train_seconds']:.1f} s)", flush=True)
    return {"row": row, "seconds": seconds}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from cryoorient.imaging.simulate import load_volume

    argv = sys.argv[1:] if argv is None else list(argv)
    args, rest = parse_args(argv)
    device = torch.device(args.device)
    if cannot_start("sec35", device, args.map):
        return 2
    box, size = load_volume(args.map)[0].shape[0], snn_paper.parse_args(["--protocol", "noiseless"] + rest).size
    if size < box:
        print(f"sec35: --size {size} is smaller than the map box ({box}); the reconstruction needs --size >= {box}",
              file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    command = command_line("sec35.py", argv)
    results, rows = {}, []
    for sigma2 in args.sigma2:
        r = results[sigma2] = run_setting(args, rest, sigma2, device)
        row = r["row"]
        experiment, setting = ("sec3.5/noiseless", "noiseless") if not sigma2 else (
            f"sec3.5/sigma2={sigma2:g}", f"noise σ² = {sigma2:g}")
        rows.append(make_row(experiment, setting, paper=experiment, device=device, command=command,
                             E_OR_rad=row["E_OR"], L_OR=row["L_OR"], L_DE=row["val_loss"], fsc05_A=row["fsc05_A"],
                             fsc0143_A=row["fsc0143_A"], fsc05_true_A=row["fsc05_true_A"], seconds=r["seconds"]))
    plot(results, args.out / "sec35_fsc.png")
    table = args.table or args.out / "results.csv"
    upsert(table, rows)
    print(f"wrote {args.out / 'sec35_fsc.png'} and {len(rows)} row(s) of {table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
