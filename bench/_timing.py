"""Timing helpers shared by the benchmarks (medians; CUDA events on the current stream)."""

from __future__ import annotations

import statistics

import torch


def cuda_median_ms(fn, reps: int, warmup: int = 5) -> float:
    """Median GPU time of ``fn()`` in ms, each call between two CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)
