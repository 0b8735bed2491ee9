"""k nearest neighbours of every projection under the feature distance d_p (fused, no P×P matrix)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._ext import _C, launch_args
from ._checks import check_row_block
from ._cupy import cupy_io
from ._direct import direct
from .allpairs import check_inputs, compute_dtypes, distance_code, kernel_code, unit_features

MAX_K = 32


@cupy_io
def feature_knn(
    features: Tensor,
    k: int,
    distance: str = "snn",
    rows: tuple[int, int] | None = None,
    *,
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """The k projections nearest to each projection i (i in ``rows``, default all) under d_p.

    d_p is the feature distance of ``cryoorient.ops.allpairs_loss`` (``"snn"`` or ``"signless"``).
    Returns (distances, indices), each (n_rows, k), sorted nearest first; distances in radians
    (float32 on CUDA, the CPU compute dtype otherwise), indices int64, never i itself. Ties in
    d_p are ordered by the raw cosine (for snn, every c ≤ 0 is at d_p = π), then by index.
    1 ≤ k ≤ min(32, P - 1).
    """
    features, _ = check_inputs(features, None, validate)
    P = features.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(MAX_K, P - 1):
        raise ValueError(f"k must be an int in [1, min({MAX_K}, P - 1) = {min(MAX_K, P - 1)}]; got {k!r}")
    start, stop = check_row_block(rows, P)
    with torch.no_grad():
        f = unit_features(features, compute_dtypes(features, None)[0])
        return (_feature_knn_impl if direct(f) else _feature_knn)(f, k, distance_code(distance), start, stop)


def _dist_dtype(f: Tensor) -> torch.dtype:
    return torch.float32 if f.device.type == "cuda" else f.dtype


def _feature_knn_impl(f: Tensor, k: int, distance: int, start: int, stop: int) -> tuple[Tensor, Tensor]:
    P, ld = f.shape
    dist = torch.empty(stop - start, k, dtype=_dist_dtype(f), device=f.device)
    index = torch.empty(stop - start, k, dtype=torch.int64, device=f.device)
    device, stream, threads = launch_args(f)
    _C.allpairs_knn(
        f.data_ptr(), P, ld, ld, start, stop, kernel_code(f), distance, k, dist.data_ptr(), index.data_ptr(),
        device, stream, threads,
    )
    return dist, index


_feature_knn = torch.library.custom_op("cryoorient::feature_knn", _feature_knn_impl, mutates_args=())


@_feature_knn.register_fake
def _(f, k, distance, start, stop):
    return f.new_empty(stop - start, k, dtype=_dist_dtype(f)), f.new_empty(stop - start, k, dtype=torch.int64)
