"""Peak figures of the GPU a benchmark runs on, looked up from its device name.

Fractions of peak (HBM bandwidth, FP32 FLOP/s, dense BF16 tensor-core FLOP/s) are reported
against the GPU that ran the benchmark, never against a fixed card. The table holds vendor
data-sheet figures (dense, no sparsity, boost clock) of the cards these benchmarks have run on
and their close kin; a GPU not in it (or a MIG slice of one) gets no fraction rather than a
wrong one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Peak:
    """Data-sheet peaks of one GPU model: bytes/s of HBM and FLOP/s."""

    model: str
    hbm: float  # memory bandwidth, bytes/s
    fp32: float  # FP32 (non-tensor) FLOP/s, FMA = 2
    bf16: float  # dense BF16 tensor-core FLOP/s


# Most specific pattern first, searched in torch.cuda.get_device_name() (\b: GH200 is not an H200).
_TABLE = (
    (r"\bH200 NVL\b", Peak("H200 NVL", 4.8e12, 60e12, 835e12)),
    (r"\bH200\b", Peak("H200 SXM", 4.8e12, 67e12, 989e12)),
    (r"\bH100 NVL\b", Peak("H100 NVL", 3.9e12, 60e12, 835e12)),
    (r"\bH100 PCIe\b", Peak("H100 PCIe", 2.0e12, 51e12, 756e12)),
    (r"\bH100 80GB HBM3\b|\bH100 SXM", Peak("H100 SXM", 3.35e12, 67e12, 989e12)),
    (r"\bA100-SXM4-80GB\b", Peak("A100 SXM 80GB", 2.039e12, 19.5e12, 312e12)),
    (r"\bA100 80GB PCIe\b", Peak("A100 PCIe 80GB", 1.935e12, 19.5e12, 312e12)),
    (r"\bA100-(SXM4|PCIE)-40GB\b", Peak("A100 40GB", 1.555e12, 19.5e12, 312e12)),
    (r"\bL40S\b", Peak("L40S", 0.864e12, 91.6e12, 362e12)),
)

KINDS = ("hbm", "fp32", "bf16")


def lookup(name: str) -> Peak | None:
    """The table entry for a device name as CUDA reports it; None if unknown or a MIG slice."""
    if "MIG" in name:
        return None
    for pattern, peak in _TABLE:
        if re.search(pattern, name):
            return peak
    return None


def device_name(device: torch.device | str | None = None) -> str:
    """CUDA's name of ``device`` (default: the current CUDA device), or ``cpu (N threads)``."""
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda":
        return f"cpu ({torch.get_num_threads()} threads)"
    return torch.cuda.get_device_name(device)


def fraction(rate: float, kind: str, device: torch.device | str | None = None) -> float | None:
    """``rate`` (bytes/s for ``"hbm"``, FLOP/s for ``"fp32"``/``"bf16"``) as a fraction of the
    peak of ``device`` (default: the current CUDA device); None for a CPU or an unknown GPU."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        return None
    peak = lookup(device_name(device))
    return None if peak is None else rate / getattr(peak, kind)


def percent(rate: float, kind: str, device: torch.device | str | None = None) -> str:
    """``fraction`` formatted for a table: ``"31.2%"``, or ``"–"`` when there is no known peak."""
    f = fraction(rate, kind, device)
    return "–" if f is None else f"{f:.1%}"
