"""All-pairs L_OR kernels against cuBLAS and the plain-PyTorch reference.

    python bench/bench_allpairs.py                      # CUDA, P = 100000, n_f = 512
    python bench/bench_allpairs.py --device cpu --P 3000

One "epoch" is the loss over every pair i < j plus its gradient w.r.t. q (forward + backward,
the op called through its Python wrapper with validate=False). CUDA times are medians of CUDA-
event timings of one call at a time (host time before the first kernel included); the cache
epoch is also timed 10 calls back to back, per call, as a recovery loop runs it. cuBLAS rows time torch.mm over row chunks of the full P×P product (bf16, then
fp32 with TF32 allowed) in the same process, and "ref" is the plain-PyTorch reference
(cryoorient.ops._torch_impl.allpairs_chunk_loss over row chunks, forward + backward chunk by
chunk), eager and with the chunk function torch.compile'd.
"Extra GB" is the peak memory the op allocates beyond its inputs (the cache itself excluded).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _peak import percent

from cryoorient import ops
from cryoorient.ops import _torch_impl as ref


def make_problem(P, nf, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q_true = torch.nn.functional.normalize(torch.randn(P, 4, generator=g), dim=1)
    f = torch.cat([4 * q_true, torch.randn(P, nf - 4, generator=g) / nf**0.5], 1)
    return f.to(device=device, dtype=dtype), torch.randn(P, 4, generator=g).to(device)


def timed(fn, reps, device, warmup=1, calls=1):
    """Median wall time of fn() in ms (CUDA events on CUDA). With calls > 1, each sample times that
    many calls back to back (the host queues the next while the GPU runs the last, as a training
    loop does) and is divided by it."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop) / calls)
        else:
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append(1e3 * (time.perf_counter() - t) / calls)
    return statistics.median(times)


def extra_memory_gb(fn, device):
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def epoch(loss_fn, q):
    x = q.clone().requires_grad_(True)

    def run():
        x.grad = None
        loss_fn(x).backward()

    return run


def reference_epoch(f, q, chunk_loss):
    """Chunked plain-PyTorch loss + q-gradient, backward chunk by chunk (memory of one chunk)."""
    fu = ref.unit_features(f)
    x = q.clone().requires_grad_(True)

    def run():
        x.grad = None
        qn = x / torch.linalg.vector_norm(x, dim=1, keepdim=True)
        qd = qn.detach().requires_grad_(True)
        for a, b, mask in ref.pair_chunks(len(q), 0, len(q), device=q.device):
            chunk_loss(fu[a:b], fu[a + 1 :], qd[a:b], qd[a + 1 :], mask, "snn", float("inf")).backward()
        qn.backward(qd.grad)

    return run


def cublas_allpairs(f, rows=4096):
    """F·Fᵀ over all P² pairs, in row chunks written to one reused buffer."""
    ft = f.T
    buf = torch.empty(rows, f.shape[0], dtype=f.dtype, device=f.device)

    def run():
        for a in range(0, f.shape[0], rows):
            b = min(f.shape[0], a + rows)
            torch.mm(f[a:b], ft, out=buf[: b - a])

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--P", type=int, default=None, help="projections (default 100000 on CUDA, 3000 on CPU)")
    parser.add_argument("--nf", type=int, default=512)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--skip-reference", action="store_true", help="skip the slow plain-PyTorch baselines")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA requested but not available (use --device cpu)")
    P = args.P or (100_000 if device.type == "cuda" else 3000)
    n_pairs = P * (P - 1) // 2
    cuda = device.type == "cuda"
    dtypes = [torch.bfloat16, torch.float16, torch.float32] if cuda else [torch.float32]
    where = "cpu"
    if cuda:
        from cryoorient import _ext

        engine = _ext._C.allpairs_tensor_core_engine(device.index or 0)
        where = f"{torch.cuda.get_device_name()}, bf16/fp16 tile engine {engine}"
    print(f"P = {P}, n_f = {args.nf}, {n_pairs:.3g} pairs, device {where}")

    rows = []  # (name, ms, extra GB, note)
    base = {}
    if cuda:
        f16, _ = make_problem(P, args.nf, device, torch.bfloat16)
        base["cublas_bf16"] = timed(cublas_allpairs(f16), args.reps, device)
        rows.append(("cuBLAS bf16 F·Fᵀ, all P² pairs", base["cublas_bf16"], float("nan"), ""))
        allow = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        base["cublas_tf32"] = timed(cublas_allpairs(f16.float()), max(2, args.reps // 3), device)
        torch.backends.cuda.matmul.allow_tf32 = allow
        rows.append(("cuBLAS tf32 F·Fᵀ, all P² pairs", base["cublas_tf32"], float("nan"), ""))
        del f16

    for dtype in dtypes:
        f, q = make_problem(P, args.nf, device, dtype)
        run = epoch(lambda x: ops.allpairs_loss(f, x, "snn", validate=False), q)
        reps = args.reps if dtype != torch.float32 or not cuda else max(2, args.reps // 5)
        ms = timed(run, reps, device)
        flops = 2.0 * n_pairs * args.nf
        rows.append((f"fused loss+grad from features ({str(dtype)[6:]})", ms, extra_memory_gb(run, device),
                     f"{flops / ms / 1e9:.1f} TFLOP/s (triangle product)"))
        if dtype == torch.float32 and cuda:
            allow = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            ms = timed(run, args.reps, device)
            torch.backends.cuda.matmul.allow_tf32 = allow
            rows.append(("  same, allow_tf32 (TF32 tensor cores)", ms, float("nan"),
                         f"{flops / ms / 1e9:.1f} TFLOP/s (triangle product)"))
        if dtype == dtypes[0]:
            base["fused"] = ms
            run_c = epoch(lambda x: ops.allpairs_loss(f, x, "snn", ("cutoff", 1.5), validate=False), q)
            rows.append(("  same, weight = [d_p <= 1.5]", timed(run_c, reps, device), float("nan"), ""))
            build = lambda: ops.allpairs_distance_cache(f, "snn", validate=False)  # noqa: E731
            rows.append(("build 1-byte cache (once)", timed(build, max(2, args.reps // 3), device),
                         extra_memory_gb(build, device), "includes the cache"))
            cache = build()
            run = epoch(lambda x: ops.allpairs_loss_cached(cache, x, validate=False), q)
            ms = timed(run, args.reps, device)
            rows.append(("loss+grad from the 1-byte cache", ms, extra_memory_gb(run, device),
                         f"{cache.codes.numel() / 1e9:.2f} GB cache, {percent(cache.codes.numel() / (ms * 1e-3), 'hbm', device)} of HBM"))
            ms = timed(run, args.reps, device, calls=10)
            rows.append(("  same, 10 epochs back to back, per epoch", ms, float("nan"),
                         f"{percent(cache.codes.numel() / (ms * 1e-3), 'hbm', device)} of HBM"))
            del cache
            knn = lambda: ops.feature_knn(f, 32, validate=False)  # noqa: E731
            rows.append(("k-NN, k = 32 (all rows)", timed(knn, max(1, args.reps // 5), device), extra_memory_gb(knn, device), ""))
            n_s = 10_000_000 if cuda else 1_000_000
            run = epoch(lambda x: ops.sampled_feature_pair_loss(f, x, n_s, seed=1, validate=False), q)
            rows.append((f"sampled loss+grad, {n_s:.0e} pairs", timed(run, args.reps, device), extra_memory_gb(run, device), ""))
            if not args.skip_reference:
                base["ref"] = timed(reference_epoch(f, q, ref.allpairs_chunk_loss), 1, device)
                rows.append(("ref: chunked PyTorch, eager", base["ref"], float("nan"), ""))
                compiled = torch.compile(ref.allpairs_chunk_loss, dynamic=True)
                rows.append(("ref: chunked PyTorch, torch.compile", timed(reference_epoch(f, q, compiled), 1, device),
                             float("nan"), ""))

    print(f"{'':46s} {'ms':>10s} {'extra GB':>9s} {'/cuBLAS bf16':>12s} {'/tf32':>7s} {'ref/this':>9s}")
    for name, ms, gb, note in rows:
        r16 = f"{ms / base['cublas_bf16']:.2f}" if "cublas_bf16" in base else "-"
        r32 = f"{ms / base['cublas_tf32']:.2f}" if "cublas_tf32" in base else "-"
        rr = f"{base['ref'] / ms:.1f}" if "ref" in base else "-"
        print(f"{name:46s} {ms:10.2f} {gb:9.2f} {r16:>12s} {r32:>7s} {rr:>9s}  {note}")


if __name__ == "__main__":
    main()
