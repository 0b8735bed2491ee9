"""Speed of ops.pair_loss (forward + backward w.r.t. q) against the plain-PyTorch reference.

    python bench/bench_pair_loss.py                 # CUDA: P = 1e5, M = 1e6 and 1e7, float32
    python bench/bench_pair_loss.py --device cpu --pairs 100000 1000000

Each row times one loss + ∂L/∂q evaluation (reduction "mean"): "fused" is
ops.pair_loss_and_grad (one kernel pass, no autograd), "autograd" is loss = ops.pair_loss(...)
then torch.autograd.grad(loss, q); both through their Python wrappers with validate=False (no
device synchronisation). The reference runs the same autograd step eager and under
torch.compile, in this process. On CUDA each figure is the median of per-call CUDA-event
timings (host time included: one call at a time), and "graph" replays the fused call from a
CUDA graph (GPU time without Python or launch overhead). "HBM" is the fraction of the
detected GPU's peak bandwidth (bench/_peak.py) that the bytes the op must move (indices,
targets, q read and ∂L/∂q written once) would take at the fused call's time. Ratios are
reference / fused.
"""

from __future__ import annotations

import argparse

import torch

from _peak import percent
from _timing import cuda_graph, cuda_median_ms, wall_median_ms

from cryoorient import ops
from cryoorient.ops import _torch_impl as ref



def make_problem(P: int, M: int, device, itype, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(P, 4, generator=g, device=device)
    i = torch.randint(0, P, (M,), generator=g, device=device, dtype=itype)
    j = torch.randint(0, P, (M,), generator=g, device=device, dtype=itype)
    t = torch.rand(M, generator=g, device=device) * torch.pi
    return q.requires_grad_(True), i, j, t


def fwd_bwd(loss_fn, q, i, j, t):
    def step():
        loss = loss_fn(q, i, j, t)
        return torch.autograd.grad(loss, q)[0]

    return step


def fused(q, i, j, t):
    return lambda: ops.pair_loss_and_grad(q, i, j, t, validate=False)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--orientations", "-P", type=int, default=100_000)
    parser.add_argument("--pairs", "-M", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--index-dtype", choices=["int64", "int32", "both"], default="both")
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available; run with --device cpu")
    timer = cuda_median_ms if cuda else wall_median_ms
    itypes = {"int64": [torch.int64], "int32": [torch.int32], "both": [torch.int64, torch.int32]}[args.index_dtype]
    op = lambda q, i, j, t: ops.pair_loss(q, i, j, t, validate=False)  # noqa: E731
    compiled = None if args.no_compile else torch.compile(ref.pair_loss)

    print(f"device: {torch.cuda.get_device_name(device) if cuda else 'cpu'}, P = {args.orientations}, float32, "
          f"fwd+bwd (reduction='mean'), median of {args.reps}")
    header = f"{'M':>10} {'index':>6} {'fused ms':>9} {'graph ms':>9} {'autograd ms':>12} {'HBM':>6} " \
             f"{'eager ms':>9} {'compile ms':>11} {'x eager':>8} {'x compile':>10}"
    print(header)
    print("-" * len(header))
    for M in args.pairs:
        for itype in itypes:
            q, i, j, t = make_problem(args.orientations, M, device, itype)
            t_fused = timer(fused(q, i, j, t), args.reps)
            t_graph = cuda_median_ms(cuda_graph(fused(q, i, j, t)).replay, args.reps) if cuda else float("nan")
            t_op = timer(fwd_bwd(op, q, i, j, t), args.reps)
            t_eager = timer(fwd_bwd(ref.pair_loss, q, i, j, t), max(5, args.reps // 10))
            t_comp = timer(fwd_bwd(compiled, q, i, j, t), args.reps) if compiled else float("nan")
            moved = M * (2 * i.element_size() + t.element_size()) + 2 * q.numel() * q.element_size()
            hbm = percent(moved / (t_fused * 1e-3), "hbm", device)
            print(f"{M:>10} {str(itype).replace('torch.', ''):>6} {t_fused:9.3f} {t_graph:9.3f} {t_op:12.3f} "
                  f"{hbm:>6} {t_eager:9.3f} {t_comp:11.3f} {t_eager / t_fused:8.1f} {t_comp / t_fused:10.1f}")
            del q, i, j, t


if __name__ == "__main__":
    main()
