"""Timing helpers shared by the benchmarks (medians; CUDA events on the current stream), and when a script skips."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

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


def cuda_graph(fn) -> torch.cuda.CUDAGraph:
    """``fn()`` captured in a CUDA graph, after a warm-up on a side stream; replay with ``.replay()``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def wall_median_ms(fn, reps: int) -> float:
    """Median wall time of ``fn()`` in ms after one warm-up call (CUDA synchronised after each call)."""
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def synchronize(device) -> None:
    """Wait until ``device``'s queued work is done (CUDA); nothing to wait for on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def skip_reason(device, *files) -> str | None:
    """Why a benchmark on ``device`` with its input ``files`` cannot run here (no CUDA GPU, a file missing), or None."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU (pass --device cpu)"
    missing = [str(f) for f in files if not Path(f).is_file()]
    return f"not found: {', '.join(missing)}" if missing else None
