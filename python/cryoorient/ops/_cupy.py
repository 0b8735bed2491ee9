"""CuPy arrays in and out of the ops: zero-copy through DLPack, on CuPy's current stream.

``cupy_io`` wraps a public op where CuPy is installed (elsewhere it returns the op unchanged).
When no argument is a CuPy array (or torch.compile is tracing) it calls the op as it is:
cryoorient never imports CuPy, and while the caller has not imported it either, the check is one
dictionary look-up (the wrapper costs about 1 µs a call). Otherwise every CuPy array becomes a torch tensor on the same memory
(``torch.from_dlpack``; bool arrays through a uint8 view), a ``cupy.cuda.Device`` given as
``device`` becomes that CUDA device, and the op runs with PyTorch's current stream set to CuPy's
current stream of that device, so the kernels are ordered with the caller's CuPy work and
nothing synchronises. Tensors in the result (alone or in tuples) come back as CuPy arrays on the
same memory; a ``DistanceCache`` comes back as it is (its codes a torch tensor on the GPU,
``cupy.from_dlpack(cache.codes)`` views them) and takes CuPy quaternions in
``allpairs_loss_cached``. Inputs are checked by the op itself, so a wrong dtype, shape or device
gives the same error as with torch tensors.
"""

from __future__ import annotations

import functools
import importlib.util
import sys

import torch
from torch import Tensor


def cupy_io(op):
    """Let ``op`` take CuPy arrays (and a ``cupy.cuda.Device`` as ``device``) and return CuPy arrays."""
    if importlib.util.find_spec("cupy") is None:
        return op

    @functools.wraps(op)
    def wrapper(*args, **kwargs):
        cupy = sys.modules.get("cupy")
        if cupy is None or torch.compiler.is_compiling() or not any(
            _is_cupy(cupy, a) for a in (*args, *kwargs.values())
        ):
            return op(*args, **kwargs)
        return _call(cupy, op, args, kwargs)

    return wrapper


def _is_cupy(cupy, x) -> bool:
    return isinstance(x, (cupy.ndarray, cupy.cuda.Device))


def _call(cupy, op, args, kwargs):
    device = next(_device_index(cupy, a) for a in (*args, *kwargs.values()) if _is_cupy(cupy, a))
    with cupy.cuda.Device(device):
        ptr = cupy.cuda.get_current_stream().ptr
        # CuPy's default stream is CUDA's legacy default stream (handle 0), PyTorch's default stream too.
        stream = torch.cuda.default_stream(device) if ptr == 0 else torch.cuda.ExternalStream(ptr, device=device)
        with torch.cuda.device(device), torch.cuda.stream(stream):
            out = op(*(_to_torch(cupy, a) for a in args), **{k: _to_torch(cupy, v) for k, v in kwargs.items()})
            return _to_cupy(cupy, out)


def _device_index(cupy, x) -> int:
    return x.id if isinstance(x, cupy.cuda.Device) else x.device.id


def _to_torch(cupy, x):
    if isinstance(x, cupy.cuda.Device):
        return torch.device("cuda", x.id)
    if not isinstance(x, cupy.ndarray):
        return x
    if x.dtype == cupy.bool_:
        return torch.from_dlpack(x.view(cupy.uint8)).view(torch.bool)
    return torch.from_dlpack(x)


def _to_cupy(cupy, out):
    if isinstance(out, Tensor):
        return cupy.from_dlpack(out.detach())
    if isinstance(out, tuple):
        return tuple(_to_cupy(cupy, o) for o in out)
    return out
