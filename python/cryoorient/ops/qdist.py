"""qdist: quaternion distance d_q over index pairs, as a PyTorch op (CPU and CUDA kernels)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._ext import FLOAT_CODES, INDEX_CODES, _C, launch_args
from ._checks import FLOATS, INDICES, check_pair_indices, check_quaternions, check_same_device, check_tensor
from ._cupy import cupy_io
from ._direct import autograd_function, call, direct, in_direct_backward


@cupy_io
def qdist(q: Tensor, i: Tensor, j: Tensor, *, validate: bool = True) -> Tensor:
    """d_q(q[i[m]], q[j[m]]) = 2·arccos|<q̂_i, q̂_j>| in radians, for M index pairs.

    q: (P, 4) scalar-first quaternions, float32/float64, need not be unit (the op
    normalises them and differentiates through the normalisation). i, j: (M,) int32
    or int64. Returns (M,). Differentiable w.r.t. q; the gradient is finite
    everywhere and 0 at d = 0 exactly (see ``cryoorient.geometry.quat_distance``).
    ``validate=False`` skips the value checks (index range, zero/NaN quaternions),
    which cost one device synchronisation on CUDA.
    """
    q = check_tensor("q", q, FLOATS, (None, 4))
    i = check_tensor("i", i, INDICES, (None,))
    j = check_tensor("j", j, INDICES, (None,))
    check_same_device(q=q, i=i, j=j)
    if i.dtype != j.dtype:
        j = j.to(i.dtype)
    if validate and not torch.compiler.is_compiling():
        check_pair_indices(i, j, q.shape[0])
        check_quaternions(q)
    if direct(q, i, j):
        return call(_QDist, q, i, j)
    return _qdist(q, i, j)


def _qdist_impl(q: Tensor, i: Tensor, j: Tensor) -> Tensor:
    out = q.new_empty(i.shape[0])
    device, stream, threads = launch_args(q)
    _C.qdist_forward(
        q.data_ptr(), i.data_ptr(), j.data_ptr(), out.data_ptr(), q.shape[0], i.shape[0],
        FLOAT_CODES[q.dtype], INDEX_CODES[i.dtype], device, stream, threads,
    )
    return out


_qdist = torch.library.custom_op("cryoorient::qdist", _qdist_impl, mutates_args=())


@_qdist.register_fake
def _(q: Tensor, i: Tensor, j: Tensor) -> Tensor:
    return q.new_empty(i.shape[0])


def _qdist_backward_impl(grad: Tensor, q: Tensor, i: Tensor, j: Tensor) -> Tensor:
    grad_q = torch.zeros_like(q)
    device, stream, threads = launch_args(q)
    _C.qdist_backward(
        q.data_ptr(), i.data_ptr(), j.data_ptr(), grad.data_ptr(), grad_q.data_ptr(), q.shape[0], i.shape[0],
        FLOAT_CODES[q.dtype], INDEX_CODES[i.dtype], device, stream, threads,
    )
    return grad_q


_qdist_backward = torch.library.custom_op("cryoorient::qdist_backward", _qdist_backward_impl, mutates_args=())


@_qdist_backward.register_fake
def _(grad: Tensor, q: Tensor, i: Tensor, j: Tensor) -> Tensor:
    return torch.empty_like(q)


def _setup_context(ctx, inputs, output):
    q, i, j = inputs
    ctx.save_for_backward(q, i, j)


def _backward(ctx, grad):
    q, i, j = ctx.saved_tensors
    backward = _qdist_backward_impl if in_direct_backward(ctx) else _qdist_backward
    return backward(grad.contiguous(), q, i, j), None, None


_qdist.register_autograd(_backward, setup_context=_setup_context)
_QDist = autograd_function("_QDist", _qdist_impl, _setup_context, _backward)
