"""pair_loss: the orientation-recovery loss L_OR over index pairs, as a PyTorch op (CPU and CUDA kernels)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._ext import FLOAT_CODES, INDEX_CODES, _C, launch_args
from ._checks import (
    FLOATS,
    INDICES,
    check_pair_indices,
    check_quaternions,
    check_same_device,
    check_same_dtype,
    check_tensor,
    check_values,
)
from ._cupy import cupy_io
from ._direct import autograd_function, call, direct, in_direct_backward

REDUCTIONS = ("mean", "sum", "none")


@cupy_io
def pair_loss(
    q: Tensor,
    i: Tensor,
    j: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    *,
    validate: bool = True,
) -> Tensor:
    """L_OR terms w_m·(d_q(q[i_m], q[j_m]) − target_m)² for M index pairs (paper eq. 4).

    q: (P, 4) scalar-first quaternions, float32/float64, need not be unit (normalised
    inside, and differentiated through the normalisation). i, j: (M,) int32/int64
    (i = j is allowed: d_q = 0). target: (M,) distances in radians, dtype of q.
    weight: optional (M,) non-negative weights, dtype of q. reduction: "mean" (over
    the M pairs, weights not renormalised), "sum" or "none" (per-pair losses, (M,)).

    Differentiable w.r.t. q, target and weight. The gradient of d_q is finite
    everywhere and defined as 0 at d = 0 (see ``cryoorient.geometry.quat_distance``).
    With "mean"/"sum" nothing of size M is stored: when q requires a gradient the
    kernel scatters ∂L/∂q while it sums the loss, and the backward pass only scales it.
    ``validate=False`` skips the value checks (index range, zero/NaN quaternions,
    NaN targets, negative weights), which cost device synchronisations on CUDA.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")
    q, i, j, target, weight = _checked(q, i, j, target, weight, validate)
    fuse = reduction != "none" and q.requires_grad and torch.is_grad_enabled()
    if direct(q, i, j, target, weight):
        return call(_PairLoss, q, i, j, target, weight, reduction, fuse)[0]
    return _pair_loss(q, i, j, target, weight, reduction, fuse)[0]


@cupy_io
def pair_loss_and_grad(
    q: Tensor,
    i: Tensor,
    j: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    *,
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """(L, ∂L/∂q) of ``pair_loss`` with reduction "mean" or "sum", in one kernel pass.

    The same loss as ``pair_loss`` (same arguments and conventions) and its gradient w.r.t. q
    (P, 4), computed together without autograd: for optimisers that set the gradient themselves,
    where an autograd step would cost more host time than the kernel. No O(M) temporaries.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")
    q, i, j, target, weight = _checked(q, i, j, target, weight, validate)
    P, M = q.shape[0], i.shape[0]
    buffer = q.new_zeros(4 * P + 1)  # ∂L/∂q, then L: one allocation and one fill
    loss, grad_q = buffer[-1], buffer[:-1].view(P, 4)
    if M == 0:
        return (loss if reduction == "sum" else loss.fill_(math.nan)), grad_q
    device, stream, threads = launch_args(q)
    _C.pair_loss_sum(
        q.data_ptr(), i.data_ptr(), j.data_ptr(), target.data_ptr(), _ptr(weight), _scale(reduction, M),
        loss.data_ptr(), grad_q.data_ptr(), P, M, FLOAT_CODES[q.dtype], INDEX_CODES[i.dtype], device, stream, threads,
    )  # fmt: skip
    return loss, grad_q


def _checked(q, i, j, target, weight, validate: bool):
    """Shape, dtype and device checks (and, if ``validate``, value checks) of pair_loss's inputs."""
    q = check_tensor("q", q, FLOATS, (None, 4))
    i = check_tensor("i", i, INDICES, (None,))
    j = check_tensor("j", j, INDICES, (None,))
    target = check_tensor("target", target, FLOATS, (i.shape[0],))
    if weight is not None:
        weight = check_tensor("weight", weight, FLOATS, (i.shape[0],))
    check_same_device(q=q, i=i, j=j, target=target, weight=weight)
    check_same_dtype("q", q, target=target, weight=weight)
    if i.dtype != j.dtype:
        j = j.to(i.dtype)
    if validate and not torch.compiler.is_compiling():
        check_pair_indices(i, j, q.shape[0])
        check_quaternions(q)
        check_values("target", target)
        if weight is not None:
            check_values("weight", weight, nonnegative=True)
    return q, i, j, target, weight


def _scale(reduction: str, M: int) -> float:
    if reduction != "mean":
        return 1.0
    return 1.0 / M if M > 0 else math.nan


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _pair_loss_impl(
    q: Tensor, i: Tensor, j: Tensor, target: Tensor, weight: Tensor | None, reduction: str, fuse: bool
) -> tuple[Tensor, Tensor]:
    """(loss, ∂loss/∂q if fuse else an empty tensor)."""
    P, M = q.shape[0], i.shape[0]
    device, stream, threads = launch_args(q)
    codes = (P, M, FLOAT_CODES[q.dtype], INDEX_CODES[i.dtype], device, stream, threads)
    ptrs = (q.data_ptr(), i.data_ptr(), j.data_ptr(), target.data_ptr(), _ptr(weight))
    if reduction == "none":
        out = q.new_empty(M)
        _C.pair_loss_none(*ptrs, out.data_ptr(), *codes)
        return out, q.new_empty(0)
    scale = _scale(reduction, M)
    out = q.new_zeros(()) if M > 0 else q.new_full((), 0.0 if reduction == "sum" else math.nan)
    grad_q = q.new_zeros(q.shape) if fuse else q.new_empty(0)
    _C.pair_loss_sum(*ptrs, scale, out.data_ptr(), grad_q.data_ptr() if fuse else 0, *codes)
    return out, grad_q


_pair_loss = torch.library.custom_op("cryoorient::pair_loss", _pair_loss_impl, mutates_args=())


@_pair_loss.register_fake
def _(q, i, j, target, weight, reduction, fuse):
    out = q.new_empty(i.shape[0]) if reduction == "none" else q.new_empty(())
    return out, q.new_empty(q.shape) if fuse else q.new_empty(0)


def _pair_loss_backward_impl(
    grad: Tensor,
    q: Tensor,
    i: Tensor,
    j: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: str,
    need_q: bool,
    need_target: bool,
    need_weight: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(∂/∂q, ∂/∂target, ∂/∂weight) for upstream grad; empty tensors where not needed."""
    P, M = q.shape[0], i.shape[0]
    grad_q = q.new_zeros(q.shape) if need_q else q.new_empty(0)
    grad_t = q.new_empty(M) if need_target else q.new_empty(0)
    grad_w = q.new_empty(M) if need_weight else q.new_empty(0)
    device, stream, threads = launch_args(q)
    _C.pair_loss_backward(
        q.data_ptr(), i.data_ptr(), j.data_ptr(), target.data_ptr(), _ptr(weight), grad.data_ptr(),
        reduction == "none", _scale(reduction, M),
        grad_q.data_ptr() if need_q else 0, grad_t.data_ptr() if need_target else 0,
        grad_w.data_ptr() if need_weight else 0,
        P, M, FLOAT_CODES[q.dtype], INDEX_CODES[i.dtype], device, stream, threads,
    )  # fmt: skip
    return grad_q, grad_t, grad_w


_pair_loss_backward = torch.library.custom_op(
    "cryoorient::pair_loss_backward", _pair_loss_backward_impl, mutates_args=()
)


@_pair_loss_backward.register_fake
def _(grad, q, i, j, target, weight, reduction, need_q, need_target, need_weight):
    M = i.shape[0]
    return (
        q.new_empty(q.shape) if need_q else q.new_empty(0),
        q.new_empty(M) if need_target else q.new_empty(0),
        q.new_empty(M) if need_weight else q.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    q, i, j, target, weight, reduction, fuse = inputs
    ctx.reduction, ctx.fuse = reduction, fuse
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(q, i, j, target, weight, output[1])


def _backward(ctx, grad, _grad_fused):
    q, i, j, target, weight, grad_fused = ctx.saved_tensors
    need_q, need_target, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]
    grad_q = grad_t = grad_w = None
    if need_q and ctx.fuse:
        grad_q, need_q = grad_fused * grad, False
    if need_q or need_target or need_weight:
        backward = _pair_loss_backward_impl if in_direct_backward(ctx) else _pair_loss_backward
        gq, gt, gw = backward(
            grad.contiguous(), q, i, j, target, weight, ctx.reduction, need_q, need_target, need_weight
        )
        grad_q = gq if need_q else grad_q
        grad_t = gt if need_target else None
        grad_w = gw if need_weight else None
    return grad_q, None, None, grad_t, grad_w, None, None


_pair_loss.register_autograd(_backward, setup_context=_setup_context)
_PairLoss = autograd_function("_PairLoss", _pair_loss_impl, _setup_context, _backward)
