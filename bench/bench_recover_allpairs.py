"""Full-batch all-pairs orientation recovery with exact (or perturbed) distance targets.

    python bench/bench_recover_allpairs.py                       # CUDA: P = 100000, n_f = 512, bf16 -> cache
    python bench/bench_recover_allpairs.py --source features     # d_p from the features every epoch
    python bench/bench_recover_allpairs.py --device cpu --P 1500 --compare-quantisation

Features are the true quaternions followed by n_f - 4 columns of σ·N(0, 1/(n_f - 4)) (--noise σ;
zeros by default), with the signless distance: d_p = d_q(true) exactly when σ = 0; otherwise
every pair's cosine gets independent noise (and is shrunk by 1/(1 + σ²)). The
time includes building the 1-byte cache (--source cache) and excludes the E_OR evaluation.
--compare-quantisation runs features (float) and cache recoveries on the same problem, with
exact and noisy targets, and prints E_OR for each.
"""

from __future__ import annotations

import argparse
import time

import torch

from cryoorient import ops
from cryoorient.orientations.align import orientation_error
from cryoorient.orientations.recover import recover_orientations_allpairs

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def problem(P, nf, noise, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    q_true = torch.nn.functional.normalize(torch.randn(P, 4, generator=g), dim=1)
    extra = noise * torch.randn(P, nf - 4, generator=g) / (nf - 4) ** 0.5
    return q_true, torch.cat([q_true, extra], 1).to(device=device, dtype=dtype)


def run(P, nf, noise, dtype, device, source, lr, max_epochs, seed=0):
    q_true, f = problem(P, nf, noise, dtype, device, seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    if source == "cache":
        cache = ops.allpairs_distance_cache(f, "signless")
        r = recover_orientations_allpairs(cache=cache, lr=lr, max_epochs=max_epochs, seed=seed + 1)
    else:
        r = recover_orientations_allpairs(f, distance="signless", lr=lr, max_epochs=max_epochs, seed=seed + 1)
    sync()
    seconds = time.perf_counter() - t
    return seconds, r, orientation_error(q_true, r.q)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--P", type=int, default=None, help="default 100000 on CUDA, 1500 on CPU")
    parser.add_argument("--nf", type=int, default=None, help="feature width (zero padding); default 512 on CUDA, 16 on CPU")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--source", choices=["cache", "features"], default="cache")
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--max-epochs", type=int, default=300)
    parser.add_argument("--compare-quantisation", action="store_true")
    parser.add_argument("--seeds", type=int, default=1, help="problems to average over (--compare-quantisation)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("CUDA requested but not available (use --device cpu)")
    P = args.P or (100_000 if cuda else 1500)
    nf = args.nf or (512 if cuda else 16)
    dtype = DTYPES[args.dtype or ("bf16" if cuda else "fp32")]
    print(f"P = {P}, n_f = {nf}, features {str(dtype)[6:]}, device {torch.cuda.get_device_name() if cuda else 'cpu'}")
    print(f"{'source':9s} {'noise':>6s} {'seconds':>8s} {'epochs':>6s} {'final loss':>11s} {'E_OR (rad)':>11s}")
    configs = (
        [(s, n) for n in (0.0, args.noise or 0.3) for s in ("features", "cache")]
        if args.compare_quantisation
        else [(args.source, args.noise)]
    )
    for source, noise in configs:
        for seed in range(args.seeds if args.compare_quantisation else 1):
            seconds, r, eor = run(P, nf, noise, dtype, device, source, args.lr, args.max_epochs, seed=10 * seed)
            print(f"{source:9s} {noise:6.3f} {seconds:8.2f} {r.epochs:6d} {r.losses[-1]:11.3g} {eor:11.3g}")


if __name__ == "__main__":
    main()
