"""Access to the compiled module ``cryoorient._C`` and the raw-pointer calling convention.

The compiled module does not link libtorch: each kernel takes data pointers, sizes,
dtype codes, a device index (-1 for CPU), PyTorch's current CUDA stream and a CPU
thread count. This module turns tensors into those arguments.
"""

from __future__ import annotations

import torch

try:
    from . import _C
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError(
        "cryoorient's compiled extension cryoorient._C is missing or broken "
        f"({err}). Install the package with `pip install .` from the source tree."
    ) from err

# PyTorch's current CUDA stream of a device as a raw handle, without building a Stream object
# (the function inductor's generated code uses; absent from CPU-only builds).
_current_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)

FLOAT_CODES = {torch.float32: 0, torch.float64: 1}
INDEX_CODES = {torch.int32: 0, torch.int64: 1}


def cuda_compiled() -> bool:
    """Whether the CUDA kernels were compiled into this installation."""
    return bool(_C.cuda_compiled)


def launch_args(t: torch.Tensor) -> tuple[int, int, int]:
    """(device index or -1 for CPU, CUDA stream handle, CPU threads) for a kernel on t's device."""
    if t.device.type == "cuda":
        if not _C.cuda_compiled:
            raise RuntimeError(
                "cryoorient was built without CUDA kernels; reinstall on a machine with nvcc "
                "(CRYOORIENT_CUDA=ON) or move the tensors to the CPU"
            )
        index = t.get_device()
        if _current_raw_stream is not None:
            return index, _current_raw_stream(index), 1
        return index, torch.cuda.current_stream(index).cuda_stream, 1
    return -1, 0, torch.get_num_threads()
