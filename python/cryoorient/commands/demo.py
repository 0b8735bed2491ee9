"""``cryoorient demo``: takes nothing but an output directory; runs the whole method on the
built-in pseudo-molecule (simulate, train, recover, evaluate, reconstruct; then the ab initio chain,
without map or training) and writes DIR/report.md with PNG plots; prints E_OR (radians and degrees)
and the map's FSC 0.5 resolution (Å) of both routes."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_run_flags, torch_device

HELP = "the whole method on the built-in density: simulate, train, recover, evaluate, reconstruct; ab initio"
DESCRIPTION = (
    "Generate the built-in asymmetric pseudo-molecule, simulate projections, train a small Siamese "
    "network on the fly, recover the test projections' orientations from the images alone, evaluate E_OR, "
    "reconstruct and compare the map by FSC; then the same from the images alone with the ab initio chain "
    "of `cryoorient abinitio` (no map, no training). Writes DIR/report.md with PNG plots. About 5-10 minutes on a "
    "2-core CPU; about a minute on a GPU (the default device when one is available)."
)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="cryoorient-demo", help="output directory (default ./cryoorient-demo)")
    p.add_argument("--quick", action="store_true", help="a reduced run of about a minute (tiny, inaccurate)")
    add_run_flags(p, "replace the output directory if cryoorient wrote it", seed=True, quiet="no progress bars")


def main(args: argparse.Namespace) -> int:
    from ..demo import DemoSettings, run_demo

    settings = DemoSettings.quick() if args.quick else DemoSettings()
    settings.seed = args.seed
    summary = run_demo(args.output, settings, device=torch_device(args.device), force=args.force,
                       progress=not args.quiet)
    out = Path(args.output)
    print(f"E_OR {summary['E_OR_rad']:.3f} rad ({summary['E_OR_deg']:.1f}°); map FSC 0.5 {summary['fsc05_A']:.1f} Å "
          f"(true orientations: {summary['fsc05_true_orientations_A']:.1f} Å); without a map or training "
          f"(ab initio chain): E_OR {summary['abinitio_E_OR_rad']:.3f} rad, FSC 0.5 {summary['abinitio_fsc05_A']:.1f} Å; "
          f"{sum(summary['seconds'].values()):.0f} s. Report: {out / 'report.md'}")
    return 0
