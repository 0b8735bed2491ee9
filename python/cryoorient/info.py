"""Installation facts: version, compiled CUDA kernels, usable GPU."""

from __future__ import annotations

import platform

import torch


def build_info() -> dict:
    """Version, whether CUDA kernels were compiled and for which architectures, GPU usability and
    the all-pairs tensor-core engine the GPU gets."""
    from . import __version__, _ext

    C = _ext._C
    gpu = torch.cuda.is_available() and C.cuda_compiled and C.cuda_device_count() > 0
    return {
        "cryoorient": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_kernels_compiled": bool(C.cuda_compiled),
        "cuda_architectures": [f"sm_{a}" for a in C.cuda_architectures()],
        "cuda_runtime": C.cuda_runtime_version,
        "gpu_usable": bool(gpu),
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        # bf16/fp16 all-pairs tile engine on GPU 0: "wgmma" (sm_90a build on Hopper) or "mma.sync"
        "allpairs_tensor_cores": C.allpairs_tensor_core_engine(0) if gpu else None,
    }


def format_info(info: dict) -> str:
    width = max(len(k) for k in info)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in info.items())
