"""Speed of the alignment: the align_loss kernel and the full align_orientations.

1. One loss + gradient evaluation of ``ops.align_loss`` (float32, P pairs, K candidates; the op
   with its Python wrapper, validate=False) against the plain-PyTorch reference
   (``ops._torch_impl.align_loss``) eager and under torch.compile, same process. Median of CUDA
   event timings. Fractions of the detected GPU's peaks (bench/_peak.py): HBM bandwidth for the
   bytes the op must move (the two P×4 sets once), and FP32 FLOP/s for ≈130 FLOP (FMA = 2) per
   (pair, candidate), counted from the kernel's inner loop. "fused" is ``ops.align_loss_and_grad``
   (value and gradient in one call, no autograd); "autograd" runs ``align_loss`` then backward.
2. ``align_orientations`` at P = 10⁵ on the GPU (noisy planted problem): median wall time and
   the gap to the planted error.
3. ``align_orientations`` at P = 1,650 on the CPU.

    python bench/bench_align.py [--P 100000] [--K 128] [--reps 200] [--skip-cpu] [--skip-gpu] [--threads N]
"""

from __future__ import annotations

import argparse

import torch

from _peak import percent
from _timing import cuda_graph, cuda_median_ms, wall_median_ms

from cryoorient import ops
from cryoorient.orientations.align import align_orientations, aligned_errors
from cryoorient.ops import _torch_impl as ref

FLOP_PER_EVAL = 130


def planted(P: int, sigma: float, device, seed: int = 0):
    from align_exactness import planted as make

    qt, qe, T = make(P, sigma, 0.0, seed)
    return qt.to(device), qe.to(device), T


def bench_op(P: int, K: int, reps: int) -> None:
    dev = "cuda"
    g = torch.Generator().manual_seed(0)
    qt = torch.randn(P, 4, generator=g).to(dev)
    qe = torch.randn(P, 4, generator=g).to(dev)
    angles = torch.randn(K, 6, generator=g).to(dev).requires_grad_(True)
    reflect = (torch.rand(K, generator=g) < 0.5).to(dev)

    def step(f):
        def run():
            angles.grad = None
            f(angles).sum().backward()
        return run

    compiled = torch.compile(lambda a: ref.align_loss(a, reflect, qt, qe))
    fused = lambda: ops.align_loss_and_grad(angles, reflect, qt, qe, validate=False)  # noqa: E731
    graph = cuda_graph(fused)
    rows = [
        ("align_loss_and_grad (fused)", fused),
        ("  same, CUDA graph replay", graph.replay),
        ("align_loss + autograd", step(lambda a: ops.align_loss(a, reflect, qt, qe, validate=False))),
        ("reference eager", step(lambda a: ref.align_loss(a, reflect, qt, qe))),
        ("reference torch.compile", step(compiled)),
    ]
    nbytes = 2 * P * 4 * 4
    print(f"\nalign_loss value + gradient, float32, P = {P}, K = {K} ({torch.cuda.get_device_name()})")
    print(f"{'':30s} {'ms':>9} {'vs fused':>8} {'HBM BW':>8} {'FP32':>7}")
    base = None
    for name, fn in rows:
        ms = cuda_median_ms(fn, reps)
        base = base or ms
        bw = percent(nbytes / (ms * 1e-3), "hbm")
        fl = percent(P * K * FLOP_PER_EVAL / (ms * 1e-3), "fp32")
        print(f"{name:30s} {ms:9.4f} {ms / base:7.1f}x {bw:>8} {fl:>7}")


def bench_align(P: int, device: str, seed: int, reps: int) -> None:
    """Full align_orientations on a planted problem (noise 0.1 rad): median time and gap to planted."""
    qt, qe, T = planted(P, 0.1, device, seed=seed)
    e_planted = aligned_errors(qt, qe, T).mean().item()
    res = align_orientations(qt, qe)
    ms = wall_median_ms(lambda: align_orientations(qt, qe), reps)
    where = torch.cuda.get_device_name() if device == "cuda" else f"the CPU ({torch.get_num_threads()} threads)"
    print(f"\nalign_orientations on {where}, P = {P}, noise 0.1 rad: median {ms:.1f} ms, "
          f"E_OR {res.error:.6f} rad, gap to planted {res.error - e_planted:+.1e} rad")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--P", type=int, default=100_000)
    ap.add_argument("--K", type=int, default=128)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--P-cpu", type=int, default=1650)
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--skip-gpu", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_gpu:
        if torch.cuda.is_available():
            bench_op(args.P, args.K, args.reps)
            bench_align(args.P, "cuda", seed=1, reps=5)
        else:
            print("no CUDA device: skipping the GPU benchmarks")
    if not args.skip_cpu:
        bench_align(args.P_cpu, "cpu", seed=2, reps=3)


if __name__ == "__main__":
    main()
