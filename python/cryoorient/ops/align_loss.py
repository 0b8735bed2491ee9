"""align_loss: mean orientation error of K candidate alignments T_k ∈ O(4), as a PyTorch op.

The transform of candidate k follows the paper's eq. 6,
``T = diag(m, 1, 1, 1) · G01(θ0) · G02(θ1) · G03(θ2) · G12(θ3) · G13(θ4) · G23(θ5)``
(``m = -1`` if reflected; ``G_ij`` rotates the (x_i, x_j) plane of the scalar-first quaternion
(w, x, y, z)); see ``cryoorient.geometry.plane_rotations_to_matrix``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._ext import FLOAT_CODES, _C, launch_args
from ._checks import FLOATS, check_quaternions, check_same_device, check_tensor, check_values
from ._cupy import cupy_io
from ._direct import autograd_function, call, direct


@cupy_io
def align_loss(
    angles: Tensor,
    reflect: Tensor,
    q_true: Tensor,
    q_est: Tensor,
    group: Optional[Tensor] = None,
    *,
    validate: bool = True,
) -> Tensor:
    """``loss_k = (1/P) Σ_i min_g d_q(q_true_i·g, T_k·q_est_i)`` in radians, for K candidates.

    angles: (K, 6) plane-rotation angles θ01, θ02, θ03, θ12, θ13, θ23 in radians. reflect: (K,)
    bool, True for an improper T (m = -1). q_true, q_est: (P, 4) scalar-first quaternions, P > 0,
    non-zero (the op normalises them; sign-invariant like d_q). group: optional (G, 4) point-group
    quaternions acting on the right of q_true (``cryoorient.geometry.symmetry_group``); each pair
    then takes its nearest symmetry mate. All float tensors share one dtype (float32/float64) and
    device. Returns (K,). Differentiable w.r.t. ``angles`` only; the kernel computes the value and
    the gradient in one pass over the pairs. ``validate=False`` skips the value checks (NaN,
    zero quaternions), which cost a device synchronisation on CUDA.
    """
    angles, reflect, q_true, q_est, group = _checked(angles, reflect, q_true, q_est, group, validate)
    need_grad = angles.requires_grad and torch.is_grad_enabled()
    if direct(angles, reflect, q_true, q_est, group):
        return call(_AlignLoss, angles, reflect, q_true, q_est, group, need_grad)[0]
    return _align_loss(angles, reflect, q_true, q_est, group, need_grad)[0]


@cupy_io
def align_loss_and_grad(
    angles: Tensor,
    reflect: Tensor,
    q_true: Tensor,
    q_est: Tensor,
    group: Optional[Tensor] = None,
    *,
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """(loss (K,), ∂loss/∂angles (K, 6)) of ``align_loss`` in one kernel pass, without autograd.

    Same arguments and conventions as ``align_loss``; for optimisers that set the gradient
    themselves (``cryoorient.align`` does), where an autograd step costs more host time than the
    kernel. ``angles`` need not require a gradient.
    """
    angles, reflect, q_true, q_est, group = _checked(angles, reflect, q_true, q_est, group, validate)
    K, P = angles.shape[0], q_true.shape[0]
    launch, ws = _workspace_elems(P, K, 0 if group is None else group.shape[0], q_true)
    buffer = angles.new_empty(7 * K + ws)  # gradient, loss and the kernel's workspace: one allocation
    grad, loss = buffer[: 6 * K].view(K, 6), buffer[6 * K : 7 * K]
    _launch(angles, reflect, q_true, q_est, group, loss, grad, buffer[7 * K :] if ws else None, launch)
    return loss, grad


def _checked(angles, reflect, q_true, q_est, group, validate: bool):
    """Shape, dtype and device checks (and, if ``validate``, value checks) of align_loss's inputs;
    returns them contiguous."""
    angles = check_tensor("angles", angles, FLOATS, (None, 6))
    reflect = check_tensor("reflect", reflect, (torch.bool,), (angles.shape[0],))
    q_true = check_tensor("q_true", q_true, FLOATS, (None, 4))
    q_est = check_tensor("q_est", q_est, FLOATS, (None, 4))
    if group is not None:
        group = check_tensor("group", group, FLOATS, (None, 4))
        if group.shape[0] == 0:
            raise ValueError("group must hold at least one rotation (pass group=None for no symmetry)")
    check_same_device(angles=angles, reflect=reflect, q_true=q_true, q_est=q_est, group=group)
    dtypes = {t.dtype for t in (angles, q_true, q_est, group) if t is not None}
    if len(dtypes) > 1:
        raise TypeError(f"angles, q_true, q_est and group must share one dtype; got {sorted(map(str, dtypes))}")
    if q_true.shape[0] != q_est.shape[0]:
        raise ValueError(
            f"q_true and q_est must hold the same number of orientations; got {q_true.shape[0]} and {q_est.shape[0]}"
        )
    if q_true.shape[0] == 0:
        raise ValueError("q_true and q_est are empty: at least one orientation is needed")
    if q_true.requires_grad or q_est.requires_grad or (group is not None and group.requires_grad):
        raise ValueError("align_loss is differentiable w.r.t. angles only; detach q_true, q_est and group")
    if validate and not torch.compiler.is_compiling():
        check_values("angles", angles)
        check_quaternions(q_true, "q_true")
        check_quaternions(q_est, "q_est")
        if group is not None:
            check_quaternions(group, "group")
    return angles, reflect, q_true, q_est, group


_workspace_bytes: dict[tuple, int] = {}


def _workspace_elems(P: int, K: int, G: int, q: Tensor) -> tuple[int, int, int]:
    """(device, stream, threads) of q and the kernel's workspace size in elements of q's dtype."""
    device, stream, threads = launch_args(q)
    key = (P, K, G, FLOAT_CODES[q.dtype], device)
    nbytes = _workspace_bytes.get(key)
    if nbytes is None:
        nbytes = _workspace_bytes[key] = _C.align_loss_workspace(*key)
    return (device, stream, threads), nbytes // q.element_size()


def _launch(angles, reflect, q_true, q_est, group, loss: Tensor, grad: Tensor | None, workspace: Tensor | None,
            launch: tuple[int, int, int]) -> None:
    K, P = angles.shape[0], q_true.shape[0]
    G = 0 if group is None else group.shape[0]
    _C.align_loss(
        q_true.data_ptr(), q_est.data_ptr(), angles.data_ptr(), reflect.data_ptr(),
        0 if group is None else group.data_ptr(), loss.data_ptr(), 0 if grad is None else grad.data_ptr(),
        0 if workspace is None else workspace.data_ptr(), P, K, G, FLOAT_CODES[q_true.dtype], *launch,
    )


def _align_loss_impl(
    angles: Tensor, reflect: Tensor, q_true: Tensor, q_est: Tensor, group: Optional[Tensor], need_grad: bool
) -> tuple[Tensor, Tensor]:
    K, P = angles.shape[0], q_true.shape[0]
    launch, ws = _workspace_elems(P, K, 0 if group is None else group.shape[0], q_true)
    loss = angles.new_empty(K)
    grad = angles.new_empty(K if need_grad else 0, 6)
    workspace = angles.new_empty(ws) if ws else None
    _launch(angles, reflect, q_true, q_est, group, loss, grad if need_grad else None, workspace, launch)
    return loss, grad


_align_loss = torch.library.custom_op("cryoorient::align_loss", _align_loss_impl, mutates_args=())


@_align_loss.register_fake
def _(angles, reflect, q_true, q_est, group, need_grad):
    K = angles.shape[0]
    return angles.new_empty(K), angles.new_empty(K if need_grad else 0, 6)


def _setup_context(ctx, inputs, output):
    ctx.need_grad = inputs[5]
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_loss, _grad_unused):
    (grad_angles,) = ctx.saved_tensors
    if not ctx.need_grad:
        raise RuntimeError("align_loss was evaluated without its gradient (angles did not require grad)")
    if torch.is_grad_enabled():
        raise RuntimeError("align_loss is differentiable once: double backward (create_graph=True) is not supported")
    return grad_loss[:, None] * grad_angles, None, None, None, None, None


_align_loss.register_autograd(_backward, setup_context=_setup_context)
_AlignLoss = autograd_function("_AlignLoss", _align_loss_impl, _setup_context, _backward)
