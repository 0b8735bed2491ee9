"""All-pairs orientation-recovery loss from projection features, and its 1-byte distance cache.

L_OR = Σ_(i<j) w(d_p)·(d_p(f_i, f_j) - d_q(q_i, q_j))² (paper eq. 4) over every pair, tile by
tile in a fused kernel: no P×P matrix is ever stored. Feature distances (radians, [0, π]):

* ``"snn"``: d_p = 2·arccos(clamp(cos(f_i, f_j), 0, 1)), the SNN's cosine-feature distance;
* ``"signless"``: d_p = 2·arccos(|cos(f_i, f_j)|); with f = quaternions (any zero padding)
  this is exactly d_q, so it gives exact targets for testing recovery.

Weights: ``weight=None`` (w = 1) or ``weight=("cutoff", c)``: w = 1 if d_p ≤ c else 0 (c in
radians), which keeps only the short, reliable distances. ``rows=(start, stop)`` restricts the
sum to pairs whose i is in [start, stop) (all j > i): row blocks add up to the full loss, so
the work can be split over GPUs.

The CUDA kernels use tensor cores for bfloat16/float16 features (wgmma on Hopper with the default
sm_90a build, mma.sync elsewhere or with ``CRYOORIENT_NO_WGMMA`` set; ``cryoorient info`` says
which). float32 features get an exact fp32 SIMT product (slow: cast to bfloat16 for speed), or
TF32 tensor cores when ``torch.backends.cuda.matmul.allow_tf32`` is True (cosines then carry
~1e-3 errors). The CPU
kernels take float32/float64 (bfloat16/float16 features are normalised in their own precision,
then computed in float32). Quaternions are scalar-first and need not be unit; gradients flow to
``q`` and, when it requires grad, to ``features``.
Near-coincident pairs (d < ~2e-3 rad in float32) get a damped gradient; see
``csrc/allpairs/allpairs_math.h``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._ext import _C, launch_args
from ._checks import (
    FLOATS,
    check_features,
    check_quaternions,
    check_row_block,
    check_same_device,
    check_tensor,
)
from ._cupy import cupy_io
from ._direct import autograd_function, call, direct, in_direct_backward

# Must match csrc/allpairs/allpairs_math.h.
DISTANCES = {"snn": 0, "signless": 1}
FEATURE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
FEATURE_DTYPES = tuple(FEATURE_CODES)
TF32_CODE = 4  # float32 features multiplied with TF32 tensor-core operands (CUDA only)
CACHE_TILE = 128
# d = code·CODE_STEP, in float32 exactly as the kernels decode it.
CODE_STEP = float(torch.tensor(math.pi, dtype=torch.float32) / 255)
_CUDA_ROW_MULTIPLE = 32  # CUDA kernels read feature rows in zero-padded slices of 32


def distance_code(distance: str) -> int:
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {sorted(DISTANCES)}; got {distance!r}")
    return DISTANCES[distance]


def weight_cutoff(weight) -> float:
    """The kernels' weight parameter: None -> +inf (w = 1); ("cutoff", c) -> c."""
    if weight is None:
        return math.inf
    if isinstance(weight, tuple) and len(weight) == 2 and weight[0] == "cutoff":
        c = float(weight[1])
        if not c >= 0:
            raise ValueError(f"weight cutoff must be a non-negative number of radians; got {weight[1]!r}")
        return c
    raise ValueError(f"weight must be None or ('cutoff', c) with c in radians; got {weight!r}")


def check_inputs(features: Tensor, q: Tensor | None, validate: bool) -> tuple[Tensor, Tensor | None]:
    """Type/shape/device checks shared by the feature ops; value checks when ``validate``."""
    features = check_tensor("features", features, FEATURE_DTYPES, (None, None))
    P, nf = features.shape
    if nf == 0:
        raise ValueError("features must have at least one column (n_f = 0)")
    if P < 2:
        raise ValueError(f"need at least 2 projections; got P = {P}")
    if features.device.type == "cuda" and features.dtype == torch.float64:
        raise TypeError("float64 features are supported on the CPU only; use float32, bfloat16 or float16 on CUDA")
    if q is not None:
        q = check_tensor("q", q, FLOATS, (None, 4))
        if q.shape[0] != P:
            raise ValueError(f"features and q must have the same number of rows P; got {P} and {q.shape[0]}")
        check_same_device(features=features, q=q)
    if validate and not torch.compiler.is_compiling():
        check_features(features)
        if q is not None:
            check_quaternions(q)
    return features, q


def compute_dtypes(features: Tensor, q: Tensor | None) -> tuple[torch.dtype, torch.dtype]:
    """(feature dtype, quaternion dtype) the kernels take on this device."""
    if features.device.type == "cuda":
        return features.dtype, torch.float32
    wide = features.dtype == torch.float64 or (q is not None and q.dtype == torch.float64)
    t = torch.float64 if wide else torch.float32
    return t, t


def unit_features(features: Tensor, dtype: torch.dtype) -> Tensor:
    """Rows normalised as ``dtype``; 16-bit features are normalised in float32 and rounded back to
    their own dtype first (so CPU and CUDA see the same values). On CUDA also zero-padded to a
    multiple of 32 columns. Differentiable."""
    half = features.dtype in (torch.bfloat16, torch.float16)
    work = features.float() if half else features.to(dtype)
    f = work / torch.linalg.vector_norm(work, dim=1, keepdim=True)
    f = (f.to(features.dtype) if half else f).to(dtype)
    if features.device.type == "cuda":
        pad = -f.shape[1] % _CUDA_ROW_MULTIPLE
        if pad:
            f = torch.nn.functional.pad(f, (0, pad))
    return f.contiguous()


def kernel_code(f: Tensor) -> int:
    """Feature code for the tile kernels: float32 on CUDA uses TF32 tensor cores when
    ``torch.backends.cuda.matmul.allow_tf32`` is set (PyTorch's switch for float32 matmuls),
    otherwise an exact fp32 product."""
    if f.dtype == torch.float32 and f.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return TF32_CODE
    return FEATURE_CODES[f.dtype]


def unit_quaternions(q: Tensor, dtype: torch.dtype) -> Tensor:
    q = q.to(dtype)
    return (q / torch.linalg.vector_norm(q, dim=1, keepdim=True)).contiguous()


@cupy_io
def allpairs_loss(
    features: Tensor,
    q: Tensor,
    distance: str = "snn",
    weight=None,
    rows: tuple[int, int] | None = None,
    *,
    validate: bool = True,
) -> Tensor:
    """L_OR = Σ_(i<j, start ≤ i < stop) w(d_p)·(d_p(f_i, f_j) - d_q(q_i, q_j))², radians².

    features: (P, n_f) float32/bfloat16/float16 (float64 on the CPU); q: (P, 4) float32/float64.
    Returns a 0-dim tensor of q's dtype, differentiable w.r.t. q and features. The q-gradient
    is always computed in the same pass as the loss (the backward pass only scales it).
    ``validate=False`` skips the value checks (finite features, no zero rows, valid quaternions),
    which cost one device synchronisation on CUDA.
    """
    features, q = check_inputs(features, q, validate)
    kind, cutoff = distance_code(distance), weight_cutoff(weight)
    start, stop = check_row_block(rows, q.shape[0])
    fdtype, qdtype = compute_dtypes(features, q)
    f, qn = unit_features(features, fdtype), unit_quaternions(q, qdtype)
    if direct(features, q):
        loss = call(_AllPairsLoss, f, qn, kind, cutoff, start, stop)[0]
    else:
        loss = _allpairs_loss(f, qn, kind, cutoff, start, stop)[0]
    return loss.to(q.dtype)


def _allpairs_loss_impl(f: Tensor, q: Tensor, distance: int, cutoff: float, start: int, stop: int) -> tuple[Tensor, Tensor]:
    loss = torch.zeros(1, dtype=torch.float64, device=q.device)
    grad = torch.zeros_like(q)
    device, stream, threads = launch_args(q)
    _C.allpairs_loss(
        f.data_ptr(), q.data_ptr(), q.shape[0], f.shape[1], f.shape[1], start, stop, kernel_code(f),
        distance, cutoff, loss.data_ptr(), grad.data_ptr(), device, stream, threads,
    )
    return loss[0].to(q.dtype), grad


_allpairs_loss = torch.library.custom_op("cryoorient::allpairs_loss", _allpairs_loss_impl, mutates_args=())


@_allpairs_loss.register_fake
def _(f, q, distance, cutoff, start, stop):
    return q.new_empty(()), torch.empty_like(q)


def _strip_rows(device: torch.device, P: int, width: int) -> int:
    """Rows per gradient strip: at most 2^29 entries (2 GiB of float32) on CUDA, 2^26 on the CPU."""
    budget = 2**29 if device.type == "cuda" else 2**26
    return max(1, min(P, budget // max(width, 1)))


def _allpairs_grad_features_impl(f: Tensor, q: Tensor, distance: int, cutoff: float, start: int, stop: int) -> Tensor:
    """∂L/∂f (unit rows): per strip of rows k, a kernel writes G[k, j] = ∂L/∂cos_kj, then G·f."""
    P, ld = f.shape
    out = torch.zeros_like(f)
    n = P - start
    if stop <= start:
        return out
    ldg = -(-n // 4) * 4
    gdtype = torch.float32 if f.device.type == "cuda" else f.dtype
    rows = _strip_rows(f.device, P, ldg)
    device, stream, threads = launch_args(q)
    tail = f[start:]
    for k0 in range(start, P, rows):
        k1 = min(P, k0 + rows)
        G = torch.empty(k1 - k0, ldg, dtype=gdtype, device=f.device)
        _C.allpairs_grad_strip(
            f.data_ptr(), q.data_ptr(), P, ld, ld, start, stop, kernel_code(f), distance, cutoff, k0, k1,
            G.data_ptr(), ldg, device, stream, threads,
        )
        out[k0:k1] = G[:, :n].to(f.dtype) @ tail
    return out


_allpairs_grad_features = torch.library.custom_op(
    "cryoorient::allpairs_grad_features", _allpairs_grad_features_impl, mutates_args=()
)


@_allpairs_grad_features.register_fake
def _(f, q, distance, cutoff, start, stop):
    return torch.empty_like(f)


def feature_loss_autograd(grad_features_impl, grad_features_op):
    """(setup_context, backward) of a feature loss op ``(f, q, *args) -> (loss, ∂loss/∂q)``: the
    q-gradient comes from the forward pass; the feature gradient is ``grad_features(f, q, *args)``,
    the implementation ``grad_features_impl`` in a direct backward, else the op ``grad_features_op``."""

    def setup_context(ctx, inputs, output):
        f, q, *args = inputs
        ctx.save_for_backward(f, q, output[1])
        ctx.args = tuple(args)

    def backward(ctx, grad_loss, _grad_grad):
        f, q, grad_q = ctx.saved_tensors
        gf = gq = None
        if ctx.needs_input_grad[1]:
            gq = grad_loss.to(grad_q.dtype) * grad_q
        if ctx.needs_input_grad[0]:
            grad_features = grad_features_impl if in_direct_backward(ctx) else grad_features_op
            gf = grad_loss.to(f.dtype) * grad_features(f, q, *ctx.args)
        return (gf, gq) + (None,) * len(ctx.args)

    return setup_context, backward


_loss_setup, _loss_backward = feature_loss_autograd(_allpairs_grad_features_impl, _allpairs_grad_features)
_allpairs_loss.register_autograd(_loss_backward, setup_context=_loss_setup)
_AllPairsLoss = autograd_function("_AllPairsLoss", _allpairs_loss_impl, _loss_setup, _loss_backward)


# ---------------------------------------------------------------------------------------
# 1-byte distance cache


@dataclass(frozen=True)
class DistanceCache:
    """d_p of every pair i < j with start ≤ i < stop, quantised to one byte: d = code·π/255.

    ``codes`` (uint8, on the features' device) holds the upper triangle of the pair matrix of
    the row block in 128 × 128 tiles (t, u), u ≥ t, of rows start + 128t.. and columns
    start + 128u..; tile (t, u) starts at 16 KiB × (t·Tc - t(t-1)/2 + u - t),
    Tc = ⌈(P - start)/128⌉, its bytes in the order the CUDA loss kernel reads them
    (``byte_offsets`` gives the offset of any pair). About P²/2 bytes (5 GB for P = 10⁵); bytes
    outside the triangle are 0.
    """

    codes: Tensor
    num_projections: int
    rows: tuple[int, int]
    distance: str

    def __post_init__(self):
        distance_code(self.distance)
        start, stop = check_row_block(self.rows, self.num_projections)
        expected = cache_bytes(self.num_projections, start, stop)
        if not (
            isinstance(self.codes, Tensor)
            and self.codes.dtype == torch.uint8
            and self.codes.dim() == 1
            and self.codes.numel() == expected
            and self.codes.is_contiguous()
        ):
            raise ValueError(f"codes must be a contiguous 1-D uint8 tensor of {expected} bytes for this cache")

    def byte_offsets(self, i: Tensor, j: Tensor) -> Tensor:
        """Offsets into ``codes`` of the unordered pairs {i, j} (i ≠ j, min(i, j) in the row block)."""
        lo, hi = torch.minimum(i, j).long(), torch.maximum(i, j).long()
        start, stop = self.rows
        if lo.numel() and (
            bool((lo == hi).any()) or int(lo.min()) < start or int(lo.max()) >= stop or int(hi.max()) >= self.num_projections
        ):
            raise IndexError(
                f"pairs must have i != j, min(i, j) in rows [{start}, {stop}) and max(i, j) < P = {self.num_projections}"
            )
        Tc = -(-(self.num_projections - start) // CACHE_TILE)
        t, r = torch.div(lo - start, CACHE_TILE, rounding_mode="floor"), (lo - start) % CACHE_TILE
        u, c = torch.div(hi - start, CACHE_TILE, rounding_mode="floor"), (hi - start) % CACHE_TILE
        tile = t * Tc - t * (t - 1) // 2 + (u - t)
        return tile * CACHE_TILE**2 + _code_offset(r, c)

    def decode(self, i: Tensor, j: Tensor) -> Tensor:
        """Cached d_p (float32 radians) of the pairs (i[m], j[m])."""
        return self.codes[self.byte_offsets(i, j)].float() * CODE_STEP


def _code_offset(r: Tensor, c: Tensor) -> Tensor:
    """Byte of pair (r, c) within a 128 × 128 tile: the order of the CUDA kernel's mma.sync
    accumulators (csrc/allpairs/allpairs_math.h, code_offset)."""
    w, n, t, e = c // 16, (c // 8) % 2, (c // 2) % 4, c % 2
    m, h, g = r // 16, (r // 8) % 2, r % 8
    return w * 2048 + (m // 2) * 512 + (4 * g + t) * 16 + (m % 2) * 8 + n * 4 + h * 2 + e


@cupy_io
def allpairs_distance_cache(
    features: Tensor, distance: str = "snn", rows: tuple[int, int] | None = None, *, validate: bool = True
) -> DistanceCache:
    """Quantise d_p of every pair of the row block to 1 byte (one fused pass, no P×P floats)."""
    features, _ = check_inputs(features, None, validate)
    kind = distance_code(distance)
    P = features.shape[0]
    start, stop = check_row_block(rows, P)
    with torch.no_grad():
        f = unit_features(features, compute_dtypes(features, None)[0])
        build = _allpairs_cache_build_impl if direct(f) else _allpairs_cache_build
        codes = build(f, kind, start, stop)
    return DistanceCache(codes, P, (start, stop), distance)


def cache_bytes(P: int, start: int, stop: int) -> int:
    Tr, Tc = -(-(stop - start) // CACHE_TILE), -(-(P - start) // CACHE_TILE)
    return (Tr * Tc - Tr * (Tr - 1) // 2) * CACHE_TILE**2


def _allpairs_cache_build_impl(f: Tensor, distance: int, start: int, stop: int) -> Tensor:
    P, ld = f.shape
    codes = torch.zeros(cache_bytes(P, start, stop), dtype=torch.uint8, device=f.device)
    device, stream, threads = launch_args(f)
    _C.allpairs_cache_build(
        f.data_ptr(), P, ld, ld, start, stop, kernel_code(f), distance, codes.data_ptr(), device, stream,
        threads,
    )
    return codes


_allpairs_cache_build = torch.library.custom_op(
    "cryoorient::allpairs_cache_build", _allpairs_cache_build_impl, mutates_args=()
)


@_allpairs_cache_build.register_fake
def _(f, distance, start, stop):
    return f.new_empty(cache_bytes(f.shape[0], start, stop), dtype=torch.uint8)


@cupy_io
def allpairs_loss_cached(cache: DistanceCache, q: Tensor, weight=None, *, validate: bool = True) -> Tensor:
    """``allpairs_loss`` with d_p read from a ``DistanceCache`` (same pairs, rows and weights).

    Streams 1 byte per pair per call; differentiable w.r.t. q (gradient computed in the same pass).
    On CUDA (compute capability ≥ 8.0) the gradient sums run on tensor cores with each pair's
    weight rounded to float16: ~2e-4 relative to the float64 CPU sum, far below the effect of
    quantising d_p to 1 byte.
    """
    if not isinstance(cache, DistanceCache):
        raise TypeError(f"cache must be a DistanceCache; got {type(cache).__name__}")
    q = check_tensor("q", q, FLOATS, (None, 4))
    if q.shape[0] != cache.num_projections:
        raise ValueError(f"q has {q.shape[0]} rows but the cache is for P = {cache.num_projections}")
    check_same_device(codes=cache.codes, q=q)
    if validate and not torch.compiler.is_compiling():
        check_quaternions(q)
    cutoff = weight_cutoff(weight)
    qdtype = torch.float32 if q.device.type == "cuda" else q.dtype
    qn = unit_quaternions(q, qdtype)
    args = (cache.codes, qn, cache.rows[0], cache.rows[1], cutoff)
    loss = call(_AllPairsCacheLoss, *args)[0] if direct(cache.codes, q) else _allpairs_cache_loss(*args)[0]
    return loss.to(q.dtype)


def _allpairs_cache_loss_impl(codes: Tensor, q: Tensor, start: int, stop: int, cutoff: float) -> tuple[Tensor, Tensor]:
    loss = torch.zeros(1, dtype=torch.float64, device=q.device)
    grad = torch.zeros_like(q)
    device, stream, threads = launch_args(q)
    scratch = torch.empty(_C.allpairs_cache_scratch_bytes(q.shape[0], start, device), dtype=torch.uint8, device=q.device)
    _C.allpairs_cache_loss(
        codes.data_ptr(), q.data_ptr(), q.shape[0], start, stop, FEATURE_CODES[q.dtype], cutoff, scratch.data_ptr(),
        loss.data_ptr(), grad.data_ptr(), device, stream, threads,
    )
    return loss[0].to(q.dtype), grad


_allpairs_cache_loss = torch.library.custom_op(
    "cryoorient::allpairs_cache_loss", _allpairs_cache_loss_impl, mutates_args=()
)


@_allpairs_cache_loss.register_fake
def _(codes, q, start, stop, cutoff):
    return q.new_empty(()), torch.empty_like(q)


def _cache_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _cache_backward(ctx, grad_loss, _grad_grad):
    (grad_q,) = ctx.saved_tensors
    return None, grad_loss.to(grad_q.dtype) * grad_q, None, None, None


_allpairs_cache_loss.register_autograd(_cache_backward, setup_context=_cache_setup)
_AllPairsCacheLoss = autograd_function("_AllPairsCacheLoss", _allpairs_cache_loss_impl, _cache_setup, _cache_backward)
