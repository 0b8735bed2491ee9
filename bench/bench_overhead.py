"""Per-call wrapper overhead of the cryoorient ops: tiny inputs, so the kernels cost nothing.

Each op runs on P = 16 orientations with M = 1 pair / K = 1 candidate (all-pairs: 16 × 8
features), validate=False (no device synchronisation). "fwd" calls the op on inputs that need
no gradient; "fwd+bwd" is a training step like the kernel benches: the op on inputs that
require a gradient, then ``torch.autograd.grad`` of the (summed) loss; for the fused
value-and-gradient entry points (``*_and_grad``) both columns time the one call. Median wall time per
call in µs over many repetitions (``time.perf_counter`` around batches of calls; CUDA runs
synchronise once per batch, so the figure is the host-side cost when the GPU keeps up).

    python bench/bench_overhead.py [--device cpu|cuda] [--reps 2000] [--batches 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cryoorient import ops


def median_us(fn, reps: int, batches: int, sync) -> float:
    for _ in range(max(50, reps // 10)):
        fn()
    sync()
    times = []
    for _ in range(batches):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        times.append((time.perf_counter() - t) / reps)
    return statistics.median(times) * 1e6


def cases(device: str):
    g = torch.Generator().manual_seed(0)
    P = 16
    q = torch.randn(P, 4, generator=g).to(device)
    i = torch.tensor([0], device=device)
    j = torch.tensor([5], device=device)
    t = torch.rand(1, generator=g).to(device)
    w = torch.rand(1, generator=g).to(device)
    qg = q.clone().requires_grad_(True)
    angles = torch.randn(1, 6, generator=g).to(device)
    angles_g = angles.clone().requires_grad_(True)
    reflect = torch.zeros(1, dtype=torch.bool, device=device)
    q2 = torch.randn(P, 4, generator=g).to(device)
    f = torch.randn(P, 8, generator=g).to(device)
    cache = ops.allpairs_distance_cache(f, "signless", validate=False)

    def grad(fn, x):
        return lambda: torch.autograd.grad(fn(x).sum(), x)

    qdist = lambda x: ops.qdist(x, i, j, validate=False)  # noqa: E731
    mean = lambda x: ops.pair_loss(x, i, j, t, validate=False)  # noqa: E731
    summed = lambda x: ops.pair_loss(x, i, j, t, w, "sum", validate=False)  # noqa: E731
    none = lambda x: ops.pair_loss(x, i, j, t, reduction="none", validate=False)  # noqa: E731
    align = lambda a: ops.align_loss(a, reflect, q, q2, validate=False)  # noqa: E731
    allpairs = lambda x: ops.allpairs_loss(f, x, "signless", validate=False)  # noqa: E731
    cached = lambda x: ops.allpairs_loss_cached(cache, x, validate=False)  # noqa: E731
    fused_pair = lambda: ops.pair_loss_and_grad(q, i, j, t, validate=False)  # noqa: E731
    fused_align = lambda: ops.align_loss_and_grad(angles, reflect, q, q2, validate=False)  # noqa: E731
    return [
        ("qdist", lambda: qdist(q), grad(qdist, qg)),
        ("pair_loss mean", lambda: mean(q), grad(mean, qg)),
        ("pair_loss sum, weighted", lambda: summed(q), grad(summed, qg)),
        ("pair_loss none", lambda: none(q), grad(none, qg)),
        ("pair_loss_and_grad mean", fused_pair, fused_pair),
        ("align_loss", lambda: align(angles), grad(align, angles_g)),
        ("align_loss_and_grad", fused_align, fused_align),
        ("allpairs_loss", lambda: allpairs(q), grad(allpairs, qg)),
        ("allpairs_loss_cached", lambda: cached(q), grad(cached, qg)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=2000, help="calls per timed batch")
    ap.add_argument("--batches", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of the kernels (CPU runs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"per-call overhead, µs (median of {args.batches} batches of {args.reps}; {name}; torch {torch.__version__})")
    print(f"{'op':26s} {'fwd':>8} {'fwd+bwd':>8}")
    for label, fwd, step in cases(args.device):
        a = median_us(fwd, args.reps, args.batches, sync)
        b = median_us(step, args.reps, args.batches, sync)
        print(f"{label:26s} {a:8.1f} {b:8.1f}")


if __name__ == "__main__":
    main()
