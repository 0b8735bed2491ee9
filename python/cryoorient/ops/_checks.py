"""Input validation shared by the op wrappers: one clear error per mistake."""

from __future__ import annotations

import torch
from torch import Tensor

FLOATS = (torch.float32, torch.float64)
INDICES = (torch.int32, torch.int64)


def check_tensor(name: str, t: object, dtypes, shape: tuple) -> Tensor:
    """Check type, dtype and shape (None = any size) of an op input; return it contiguous."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {names}; got {str(t.dtype).replace('torch.', '')}")
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
        want = "×".join("N" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must have shape {want}; got {tuple(t.shape)}")
    return t.contiguous()


def check_same_device(**tensors: Tensor) -> torch.device:
    first = None
    for t in tensors.values():
        if t is None:
            continue
        if first is None:
            first = t.device
        elif t.device != first:
            listing = ", ".join(f"{n} on {t.device}" for n, t in tensors.items() if t is not None)
            raise ValueError(f"all inputs must be on one device; got {listing}")
    return first


def check_pair_indices(i: Tensor, j: Tensor, P: int) -> None:
    """Pair indices must have equal length and lie in [0, P). Syncs once on CUDA."""
    if i.shape != j.shape:
        raise ValueError(f"i and j must have the same length; got {i.shape[0]} and {j.shape[0]}")
    if i.numel() == 0:
        return
    lo = torch.minimum(i.min(), j.min())
    hi = torch.maximum(i.max(), j.max())
    lo, hi = (int(v) for v in torch.stack([lo, hi]).tolist())
    if lo < 0 or hi >= P:
        raise IndexError(f"pair index out of range: indices span [{lo}, {hi}] but there are P = {P} orientations")


def check_quaternions(q: Tensor, name: str = "q") -> None:
    """Quaternions must be finite and non-zero (they are normalised by the ops). Syncs once on CUDA."""
    norms = torch.linalg.vector_norm(q, dim=-1)
    bad_finite, bad_zero = torch.stack([(~torch.isfinite(q)).any(), (norms == 0).any()]).tolist()
    if bad_finite:
        raise ValueError(f"{name} contains NaN or infinite values")
    if bad_zero:
        raise ValueError(f"{name} contains zero quaternions, which are not rotations")


def check_same_dtype(reference: str, t_ref: Tensor, **tensors: Tensor) -> None:
    """Every tensor given must have the dtype of ``t_ref`` (named ``reference``)."""
    for name, t in tensors.items():
        if t is not None and t.dtype != t_ref.dtype:
            raise TypeError(
                f"{name} must have the dtype of {reference} ({str(t_ref.dtype).replace('torch.', '')}); "
                f"got {str(t.dtype).replace('torch.', '')}"
            )


def check_values(name: str, t: Tensor, *, nonnegative: bool = False) -> None:
    """Values must be finite (and >= 0 if ``nonnegative``). Syncs once on CUDA."""
    if t.numel() == 0:
        return
    negative = (t < 0).any() if nonnegative else torch.zeros((), dtype=torch.bool, device=t.device)
    bad_finite, bad_sign = torch.stack([(~torch.isfinite(t)).any(), negative]).tolist()
    if bad_finite:
        raise ValueError(f"{name} contains NaN or infinite values")
    if bad_sign:
        raise ValueError(f"{name} contains negative values")


def check_features(f: Tensor) -> None:
    """Features must be finite with no all-zero row (cosines need a norm). Syncs once on CUDA."""
    bad_finite = (~torch.isfinite(f)).any()
    bad_zero = (f == 0).all(dim=1).any()
    bad_finite, bad_zero = torch.stack([bad_finite, bad_zero]).tolist()
    if bad_finite:
        raise ValueError("features contain NaN or infinite values")
    if bad_zero:
        raise ValueError("features contain an all-zero row, whose cosine similarity is undefined")


def check_row_block(rows, P: int) -> tuple[int, int]:
    """rows = None (all) or (start, stop) with 0 <= start <= stop <= P; returns (start, stop)."""
    if rows is None:
        return 0, P
    try:
        start, stop = (int(r) for r in rows)
    except (TypeError, ValueError):
        raise TypeError(f"rows must be None or a (start, stop) pair of ints; got {rows!r}") from None
    if not 0 <= start <= stop <= P:
        raise IndexError(f"rows = ({start}, {stop}) must satisfy 0 <= start <= stop <= P = {P}")
    return start, stop
