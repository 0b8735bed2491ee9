"""Seeded pair sampling inside the kernel: a sampled-pair epoch of L_OR needs no index tensors.

Pair n of the stream (seed, epoch) comes from a splitmix64 hash of (seed, epoch, n): i is
uniform over the P projections and j uniform over the other P - 1 (so i ≠ j); pairs are drawn
with replacement. The same stream is produced on the CPU and on CUDA and is reproduced by
``cryoorient.ops._torch_impl.sampled_pairs``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._ext import _C, launch_args
from .allpairs import (
    FEATURE_CODES,
    check_inputs,
    compute_dtypes,
    distance_code,
    feature_loss_autograd,
    unit_features,
    unit_quaternions,
    weight_cutoff,
)
from ._cupy import cupy_io
from ._direct import autograd_function, call, direct

_MAX_SEED = 2**63


def _check_stream(P: int, n_pairs: int, seed: int, epoch: int) -> None:
    for name, v in (("n_pairs", n_pairs), ("seed", seed), ("epoch", epoch)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < _MAX_SEED:
            raise ValueError(f"{name} must be an int in [0, 2^63); got {v!r}")
    if P < 2:
        raise ValueError(f"pair sampling needs at least 2 projections; got P = {P}")


@cupy_io
def sampled_pairs(
    num_projections: int, n_pairs: int, seed: int, epoch: int = 0, *, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """The first ``n_pairs`` pairs (i, j) (int64 tensors) of the stream (seed, epoch)."""
    if isinstance(num_projections, bool) or not isinstance(num_projections, int):
        raise ValueError(f"num_projections must be an int; got {num_projections!r}")
    _check_stream(num_projections, n_pairs, seed, epoch)
    pairs = _sampled_pairs_impl if direct() else _sampled_pairs
    return pairs(num_projections, n_pairs, seed, epoch, torch.device(device))


def _sampled_pairs_impl(P: int, n_pairs: int, seed: int, epoch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    i = torch.empty(n_pairs, dtype=torch.int64, device=device)
    j = torch.empty(n_pairs, dtype=torch.int64, device=device)
    dev, stream, threads = launch_args(i)
    _C.sampled_pairs(seed, epoch, P, n_pairs, i.data_ptr(), j.data_ptr(), dev, stream, threads)
    return i, j


_sampled_pairs = torch.library.custom_op("cryoorient::sampled_pairs", _sampled_pairs_impl, mutates_args=())


@_sampled_pairs.register_fake
def _(P, n_pairs, seed, epoch, device):
    return torch.empty(n_pairs, dtype=torch.int64, device=device), torch.empty(n_pairs, dtype=torch.int64, device=device)


@cupy_io
def sampled_feature_pair_loss(
    features: Tensor,
    q: Tensor,
    n_pairs: int,
    seed: int,
    epoch: int = 0,
    distance: str = "snn",
    weight=None,
    *,
    validate: bool = True,
) -> Tensor:
    """Σ over the sampled pairs of w(d_p)·(d_p(f_i, f_j) - d_q(q_i, q_j))² (radians²).

    Same distances, weights and dtypes as ``cryoorient.ops.allpairs_loss``; the pairs are those
    of ``sampled_pairs(P, n_pairs, seed, epoch)``, generated in the kernel. Differentiable w.r.t.
    q (computed in the same pass) and features.
    """
    features, q = check_inputs(features, q, validate)
    _check_stream(q.shape[0], n_pairs, seed, epoch)
    kind, cutoff = distance_code(distance), weight_cutoff(weight)
    fdtype, qdtype = compute_dtypes(features, q)
    f, qn = unit_features(features, fdtype), unit_quaternions(q, qdtype)
    args = (f, qn, n_pairs, seed, epoch, kind, cutoff)
    loss = call(_SampledLoss, *args)[0] if direct(f, qn) else _sampled_loss(*args)[0]
    return loss.to(q.dtype)


def _sampled_loss_impl(
    f: Tensor, q: Tensor, n_pairs: int, seed: int, epoch: int, distance: int, cutoff: float
) -> tuple[Tensor, Tensor]:
    loss = torch.zeros(1, dtype=torch.float64, device=q.device)
    grad = torch.zeros_like(q)
    device, stream, threads = launch_args(q)
    P, ld = f.shape
    _C.sampled_loss(
        f.data_ptr(), q.data_ptr(), P, ld, ld, FEATURE_CODES[f.dtype], distance, cutoff, seed, epoch, n_pairs,
        loss.data_ptr(), grad.data_ptr(), device, stream, threads,
    )
    return loss[0].to(q.dtype), grad


_sampled_loss = torch.library.custom_op("cryoorient::sampled_loss", _sampled_loss_impl, mutates_args=())


@_sampled_loss.register_fake
def _(f, q, n_pairs, seed, epoch, distance, cutoff):
    return q.new_empty(()), torch.empty_like(q)


def _sampled_grad_features_impl(
    f: Tensor, q: Tensor, n_pairs: int, seed: int, epoch: int, distance: int, cutoff: float
) -> Tensor:
    P, ld = f.shape
    gdtype = torch.float32 if f.device.type == "cuda" else f.dtype
    grad = torch.zeros(P, ld, dtype=gdtype, device=f.device)
    device, stream, threads = launch_args(q)
    _C.sampled_grad_features(
        f.data_ptr(), q.data_ptr(), P, ld, ld, FEATURE_CODES[f.dtype], distance, cutoff, seed, epoch, n_pairs, 1.0,
        grad.data_ptr(), device, stream, threads,
    )
    return grad.to(f.dtype)


_sampled_grad_features = torch.library.custom_op(
    "cryoorient::sampled_grad_features", _sampled_grad_features_impl, mutates_args=()
)


@_sampled_grad_features.register_fake
def _(f, q, n_pairs, seed, epoch, distance, cutoff):
    return torch.empty_like(f)


_setup, _backward = feature_loss_autograd(_sampled_grad_features_impl, _sampled_grad_features)
_sampled_loss.register_autograd(_backward, setup_context=_setup)
_SampledLoss = autograd_function("_SampledLoss", _sampled_loss_impl, _setup, _backward)
