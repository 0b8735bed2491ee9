"""Scaling over several GPUs (torch.distributed): data-parallel SNN training and the sharded
all-pairs recovery epoch.

    torchrun --standalone --nproc-per-node N bench/bench_distributed.py --out results.jsonl
    python bench/bench_distributed.py --out results.jsonl            # one process (N = 1)
    python bench/bench_distributed.py --summary results.jsonl        # scaling table of all runs
    torchrun --standalone --nproc-per-node 2 bench/bench_distributed.py --device cpu --P 2000 \\
        --size 32 --batch-size 16 --steps 4 --warmup 1 --widths 8 16 16 32   # CPU smoke test (gloo)

Measurements (rank 0 prints one row each and appends one JSON line to ``--out``):

* ``train``: ``Trainer.train_step`` steps (DistributedDataParallel, features all-gathered so the
  loss sees all B(B−1)/2 pairs of the global batch of ``--batch-size`` images) on fresh on-the-fly
  projections (``--size``², CTF, σ² = 16, shifts ≤ 5 px) of ``--map`` (default: the built-in
  phantom), paper architecture, AMP auto. Each step: this rank's share of the batch is rendered,
  then the optimiser step; the step time is the slowest rank's median over ``--steps`` steps
  after ``--warmup``. images/s = B / step time; pairs/s = B(B−1)/2 / step time.
* ``allpairs``: epochs of ``recover_orientations_allpairs`` (loss + q-gradient over this
  rank's row block from n_f = ``--nf`` bfloat16 random non-negative features, one all-reduce of the
  (P, 4) gradient, Adam) at each ``--P``; the epoch time is the slowest rank's median of the
  intervals between the per-epoch callbacks (CUDA events; the loop syncs on the loss every
  epoch) over ``--epochs`` epochs after the first (which also gathers the features). No P×P array is allocated (the fused kernel works tile by tile).

``NCCL_NVLS_ENABLE`` is set to 0 unless already set (NVLink multicast stays off).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")

import torch  # noqa: E402

from cryoorient import distributed  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (NCCL) or cpu (gloo)")
    p.add_argument("--map", help="map (.mrc) to project (default: the built-in phantom)")
    p.add_argument("--size", type=int, default=116, help="image edge in pixels (default 116)")
    p.add_argument("--batch-size", type=int, default=256, help="global images per step (default 256)")
    p.add_argument("--steps", type=int, default=30, help="timed training steps (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed training steps first (default 5)")
    p.add_argument("--widths", type=int, nargs="+", help="paper architecture widths (default: the paper's)")
    p.add_argument("--compile", action="store_true", help="torch.compile the feature extractor")
    p.add_argument("--P", type=int, nargs="+", default=[100_000, 1_000_000], help="all-pairs sizes")
    p.add_argument("--nf", type=int, default=512, help="feature size (default 512)")
    p.add_argument("--epochs", type=int, default=5, help="timed all-pairs epochs (default 5)")
    p.add_argument("--skip", choices=("train", "allpairs"), action="append", default=[], help="leave a part out")
    p.add_argument("--out", help="append one JSON line per measurement to this file (rank 0)")
    p.add_argument("--summary", metavar="JSONL", help="print the scaling table of a results file and exit")
    return p.parse_args(argv)


def _timer(device):
    """now() -> an opaque mark; ms(a, b) -> milliseconds between two marks (CUDA events on CUDA)."""
    if device.type == "cuda":
        def now():
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e

        def ms(a, b):
            b.synchronize()
            return a.elapsed_time(b)
    else:
        now = time.perf_counter

        def ms(a, b):
            return 1e3 * (b - a)
    return now, ms


def _slowest(value: float, device) -> float:
    """The largest of the ranks' values (every rank gets it)."""
    if not distributed.is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t)


def bench_train(args, device) -> dict:
    from cryoorient.learning.model import SiameseNet
    from cryoorient.imaging.simulate import SimulationSettings
    from cryoorient.imaging.render import ProjectionRenderer
    from cryoorient.learning.sources import OnTheFlySource
    from cryoorient.learning.trainer import TrainConfig, Trainer

    settings = SimulationSettings(n=1, size=args.size, sigma2=16.0, ctf=True, defocus_min=5000.0,
                                  defocus_max=25000.0, shift_max=5.0, seed=0)
    if args.map:
        renderers = ProjectionRenderer.from_sources([args.map], settings, device)
    else:
        from cryoorient.imaging.phantom import default_density

        voxel = 174.0 / args.size  # 1.5 Å at 116 px: the phantom (~90 Å across) fits any box
        renderers = [ProjectionRenderer(default_density(args.size, voxel, 2 * voxel), voxel, settings, device)]
    source = OnTheFlySource(renderers, device=device)
    config = TrainConfig(epochs=1, steps_per_epoch=args.warmup + args.steps, batch_size=args.batch_size,
                         val_pairs=64, compile=args.compile, progress=False)
    torch.manual_seed(0)
    trainer = Trainer(SiameseNet("paper", widths=tuple(args.widths or ())), source, source.render_fixed(64, seed=1),
                      config, device=device)
    now, ms = _timer(device)
    distributed.barrier()
    marks = []
    for _ in range(args.warmup + args.steps + 1):
        marks.append(now())  # no sync inside the loop: steps queue as in training
        trainer.train_step(trainer.local_batch())
    distributed.barrier()
    times = [ms(a, b) for a, b in zip(marks[args.warmup:], marks[args.warmup + 1:])]
    step_ms = _slowest(statistics.median(times), device)
    B = args.batch_size
    return {"bench": "train", "batch_size": B, "size": args.size, "map": args.map or "phantom",
            "widths": list(trainer.model.config.widths), "compile": args.compile, "ms_per_step": step_ms,
            "images_per_s": B / step_ms * 1e3, "pairs_per_s": B * (B - 1) / 2 / step_ms * 1e3}


def bench_allpairs(args, P: int, device) -> dict:
    from cryoorient.orientations.recover import recover_orientations_allpairs

    rank, world = distributed.rank(), distributed.world_size()
    lo, hi = P * rank // world, P * (rank + 1) // world  # this rank's consecutive share of the features
    gen = torch.Generator(device=device).manual_seed(1000 + rank)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    features = torch.randn(hi - lo, args.nf, generator=gen, device=device).abs_().to(dtype)
    now, ms = _timer(device)
    marks = []
    distributed.barrier()
    result = recover_orientations_allpairs(
        features, lr=0.05, max_epochs=args.epochs + 1, tol=0.0, patience=10**6, target_loss=0.0,
        callback=lambda epoch, q, loss: marks.append(now()))
    distributed.barrier()
    intervals = [ms(a, b) for a, b in zip(marks, marks[1:])]  # epochs 1.. (epoch 0 also gathers, warms up)
    epoch_ms = _slowest(statistics.median(intervals), device)
    pairs = P * (P - 1) // 2
    return {"bench": "allpairs", "P": P, "nf": args.nf, "dtype": str(dtype).replace("torch.", ""),
            "epoch_ms": epoch_ms, "pairs_per_s": pairs / epoch_ms * 1e3, "final_loss": result.losses[-1]}


def summary(path: str) -> None:
    """Scaling table: per measurement and size, rows by process count, efficiency vs. 1 process.

    All pairs (fixed P, strong scaling): efficiency = t₁ / (N·t_N). Training is grouped by the
    images per process (weak scaling: the global batch grows with N): efficiency = images/s with
    N processes / (N × images/s with one)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

    def key(r):
        per_process = r.get("batch_size", 0) // r["processes"] if r["bench"] == "train" else None
        return r["bench"], r["device"], r.get("P"), per_process, r.get("size")

    print(f"{'bench':9s} {'size':>10s} {'procs':>5s} {'ms':>10s} {'pairs/s':>11s} {'images/s':>9s} {'efficiency':>10s}  device")
    for group in sorted({key(r) for r in rows}, key=str):
        runs = sorted((r for r in rows if key(r) == group), key=lambda r: r["processes"])
        one = next((r for r in runs if r["processes"] == 1), None)
        for r in runs:
            if one is None:
                eff = "–"
            elif group[0] == "train":
                eff = f"{100 * r['images_per_s'] / (r['processes'] * one['images_per_s']):.0f} %"
            else:
                eff = f"{100 * one['epoch_ms'] / (r['processes'] * r['epoch_ms']):.0f} %"
            ms = r["ms_per_step"] if group[0] == "train" else r["epoch_ms"]
            size = f"{r['size']}²×{r['batch_size']}" if group[0] == "train" else f"P={r['P']:.0e}"
            imgs = f"{r['images_per_s']:.0f}" if "images_per_s" in r else "–"
            print(f"{r['bench']:9s} {size:>10s} {r['processes']:5d} {ms:10.2f} {r['pairs_per_s']:11.4g} "
                  f"{imgs:>9s} {eff:>10s}  {r['device']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summary:
        summary(args.summary)
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_distributed: needs CUDA GPUs (pass --device cpu for a gloo smoke test); skipped")
        return 0
    distributed.init_from_env(args.device)
    try:
        device = distributed.local_device(args.device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        world = distributed.world_size()
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        rows = []
        if "train" not in args.skip:
            rows.append(bench_train(args, device))
        if "allpairs" not in args.skip:
            rows += [bench_allpairs(args, P, device) for P in args.P]
        if distributed.rank() == 0:
            for r in rows:
                r.update(processes=world, device=name, torch=torch.__version__,
                         nvls=os.environ.get("NCCL_NVLS_ENABLE"))
                what = (f"train {r['size']}² batch {r['batch_size']}: {r['ms_per_step']:.2f} ms/step, "
                        f"{r['images_per_s']:.0f} images/s, {r['pairs_per_s']:.4g} pairs/s"
                        if r["bench"] == "train" else
                        f"all-pairs P = {r['P']}: {r['epoch_ms']:.2f} ms/epoch, {r['pairs_per_s']:.4g} pairs/s")
                print(f"{world} × {name}: {what}")
                if args.out:
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps(r) + "\n")
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
