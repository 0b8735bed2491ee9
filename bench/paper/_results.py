"""The results table of the paper reproductions in bench/paper (one row per experiment id), and
the plumbing their scripts share: options, the start of a run (:func:`start_run`), snn_paper's
protocol per setting (:func:`run_protocol`), figures and the rows a run writes (:class:`Run`).

Rows live in a CSV file (``results.csv``); a script re-run replaces its rows (matched by the
``experiment`` id, e.g. ``fig5/sigma2=0.8/P=1650``, ``fig7b/sigma2=16``, ``sec3.5/noiseless``)
and every write is atomic (temporary file + ``os.replace``). Units: E_OR in radians (paper
eq. 5), L_OR and L_DE in rad² (eqs. 4 and 3; L_DE is the best validation value), resolutions in
Å (FSC thresholds 0.5 and 0.143), ``seconds`` the wall-clock time of the experiment. The
``paper_*`` columns hold only numbers the paper's text states (Banjac et al., §3.2, §3.4, §3.5).
"""

from __future__ import annotations

import csv
import datetime
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository
COLUMNS = (
    "experiment", "setting", "E_OR_rad", "paper_E_OR_rad", "L_OR", "L_DE", "fsc05_A", "paper_fsc05_A",
    "fsc0143_A", "fsc05_true_A", "seconds", "device", "date", "command",
)
METRICS = ("E_OR_rad", "L_OR", "L_DE", "fsc05_A", "fsc0143_A", "fsc05_true_A", "seconds")

# The numbers the paper's text states for 5j0n, by setting.
PAPER = {
    "fig5/sigma2=0": {"paper_E_OR_rad": 0.0},  # §3.2: "from E_OR = 0 with exact distances"
    "fig5/sigma2=0.8": {"paper_E_OR_rad": 0.2},  # §3.2: "to E_OR ≈ 0.2 radians for σ² = 0.8"
    "fig7b/sigma2=0": {"paper_E_OR_rad": 0.16},  # §3.4: "E_OR ≈ 0.16 radians for noiseless projections"
    "fig7b/sigma2=16": {"paper_E_OR_rad": 0.42},  # §3.4: "E_OR ≈ 0.42 radians for σ² = 16"
    "sec3.5/noiseless": {"paper_E_OR_rad": 0.20, "paper_fsc05_A": 12.2},  # §3.5, Fig. 8a, 9c
    "sec3.5/sigma2=16": {"paper_E_OR_rad": 0.25, "paper_fsc05_A": 15.2},  # §3.5, Fig. 8b, 9d
}
SECTIONS = ("fig5/", "fig7a/", "fig7b/", "sec3.5/")
HEADERS = {
    "experiment": "experiment", "setting": "setting", "E_OR_rad": "E_OR (rad)", "paper_E_OR_rad": "paper E_OR",
    "L_OR": "L_OR", "L_DE": "val L_DE", "fsc05_A": "FSC 0.5 (Å)", "paper_fsc05_A": "paper FSC 0.5",
    "fsc0143_A": "FSC 0.143 (Å)", "fsc05_true_A": "true q: FSC 0.5", "seconds": "time (s)", "device": "device",
    "date": "date",
}


def add_run_arguments(p, out_help: str) -> None:
    """The options fig7.py and sec35.py share: network, training source, device, seed, outputs."""
    p.add_argument("--arch", default="paper", choices=("paper", "resnet"))
    p.add_argument("--train-source", choices=("fly", "dataset"), default="fly")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "out" / "paper", help=out_help)
    p.add_argument("--table", type=Path, help="results CSV (default: <out>/results.csv)")
    p.add_argument("--workdir", type=Path, default=ROOT / "out" / "paper-work",
                   help="simulated datasets, networks and training logs")
    p.add_argument("--quiet", action="store_true")


def parse_passthrough(p, argv, own: tuple[str, ...], script: str):
    """(known args, the rest for snn_paper); the rest may not set what ``script`` sets per setting."""
    args, rest = p.parse_known_args(argv)
    clash = [a for a in rest if a.split("=")[0] in own]
    if clash:
        p.error(f"{', '.join(clash)}: set by {script} for each setting")
    return args, rest


class Run(NamedTuple):
    """A started run: its device, the folder of its figures, its results table and the shell line
    that reproduces it (recorded in every row)."""

    device: torch.device
    out: Path
    table: Path
    command: str

    def row(self, experiment: str, setting: str, *, paper: str | None, **metrics) -> dict:
        """:func:`make_row` with this run's device and command."""
        return make_row(experiment, setting, paper=paper, device=self.device, command=self.command, **metrics)

    def save(self, rows, figures=(), prefix: str = "") -> None:
        """Write ``rows`` into the table; print ``prefix``, then what was written (``figures``, the rows)."""
        upsert(self.table, rows)
        print(f"{prefix}wrote " + " and ".join([*map(str, figures), f"{len(rows)} row(s) of {self.table}"]))


def start_run(script: str, args, argv=None, *, map_path: Path | None = None, check=None) -> Run | None:
    """The run of ``bench/paper/<script>.py`` with ``args`` (``--device``, ``--out``, ``--table``),
    ``--out`` made; None, after one line on stderr and with nothing written, when it cannot start:
    --device cuda without a GPU, ``map_path`` missing, or what ``check()`` returns (a reason, or None).
    The scripts that read a map train snn_paper's network: the CPU hint names its size options."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        reason = "no CUDA GPU here; pass --device cpu" + (" (with small --n/--size/--epochs)" if map_path else "")
    elif map_path is not None and not map_path.is_file():
        reason = (f"map not found: {map_path} (the default is ../shared/data/maps/5j0n.mrc beside the checkout; "
                  "pass --map)")
    else:
        reason = check() if check else None
    if reason:
        print(f"{script}: {reason}", file=sys.stderr)
        return None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    return Run(device, args.out, args.table or args.out / "results.csv", command_line(f"{script}.py", argv))


def run_protocol(args, rest, name: str, sigma2: float, *extra: str) -> tuple[dict, float]:
    """One setting of ``bench/snn_paper.py``'s protocol in ``<--workdir>/<name>``: the noiseless
    protocol, or the noise protocol at σ² = ``sigma2``, with --map, --epochs and the options of
    :func:`add_run_arguments`, then ``extra`` and the pass-through ``rest``; (its row, seconds)."""
    import snn_paper  # bench/, on sys.path in the scripts that run it

    argv = ["--protocol", "noise" if sigma2 else "noiseless", *(["--sigma2", f"{sigma2:g}"] if sigma2 else []),
            "--map", str(args.map), "--arch", args.arch, "--train-source", args.train_source,
            "--epochs", str(args.epochs), "--device", args.device, "--seed", str(args.seed),
            *(["--quiet"] if args.quiet else []), *extra]
    sargs = snn_paper.parse_args(argv + list(rest))
    workdir = args.workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    row = snn_paper.run_protocol(sargs, workdir, torch.device(args.device))[0]
    return row, time.perf_counter() - t0


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (figures go to files; no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def device_name(device) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def command_line(script: str, argv) -> str:
    """The shell line that reproduces a run: ``python bench/paper/<script> <argv>``."""
    return shlex.join(["python", f"bench/paper/{script}", *argv])


def make_row(experiment: str, setting: str, *, paper: str | None, device, command: str, **metrics) -> dict:
    """One table row; ``paper`` is the key into :data:`PAPER` (None or unknown: no paper number)."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; expected some of {METRICS}")
    row = {"experiment": experiment, "setting": setting, **PAPER.get(paper, {}), "device": device_name(device),
           "date": datetime.date.today().isoformat(), "command": command}
    row.update({k: float(v) for k, v in metrics.items() if v is not None})
    return row


def read_table(path) -> list[dict]:
    """The rows of a results CSV ([] when the file does not exist); numbers stay strings."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "experiment" not in reader.fieldnames:
            raise ValueError(f"{path} is not a results table (no 'experiment' column)")
        return [dict(r) for r in reader]


def _section(row: dict) -> int:
    return next((k for k, s in enumerate(SECTIONS) if row["experiment"].startswith(s)), len(SECTIONS))


def upsert(path, rows) -> list[dict]:
    """Replace the rows of ``path`` with the same experiment ids by ``rows`` (others appended),
    keep the sections in paper order, write atomically; returns the whole table."""
    path = Path(path)
    new = {}
    for r in rows:
        if not r.get("experiment"):
            raise ValueError(f"a results row needs an 'experiment' id, got {r!r}")
        if set(r) - set(COLUMNS):
            raise ValueError(f"unknown column(s) {sorted(set(r) - set(COLUMNS))}")
        new[r["experiment"]] = r
    table = [new.pop(r["experiment"], r) for r in read_table(path)] + list(new.values())
    table.sort(key=_section)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({k: _cell(r.get(k)) for k in COLUMNS} for r in table)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return table


def _cell(value) -> str:
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def _fmt(value: str) -> str:
    try:
        x = float(value)
    except ValueError:
        return value
    if not math.isfinite(x):
        return value
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.3g}"


def markdown(rows) -> str:
    """The table as Markdown (our numbers next to the paper's), then the commands that produced it."""
    keys = [k for k in HEADERS if any(r.get(k) for r in rows) or k in ("experiment", "E_OR_rad", "paper_E_OR_rad")]
    lines = ["| " + " | ".join(HEADERS[k] for k in keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k) or "") for k in keys) + " |")
    commands = list(dict.fromkeys(r["command"] for r in rows if r.get("command")))
    if commands:
        lines += ["", "Commands:", "", "```bash", *commands, "```"]
    return "\n".join(lines) + "\n"
