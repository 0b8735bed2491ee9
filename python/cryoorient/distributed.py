"""torch.distributed plumbing for runs launched by ``torchrun`` (one process per GPU).

Conventions
-----------
* ``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address) in each
  process's environment; :func:`init_from_env` joins that process group: NCCL for CUDA, with
  the process's GPU ``cuda:LOCAL_RANK``; gloo for the CPU. Outside ``torchrun`` nothing is
  initialised and every helper answers as a single process (rank 0 of 1).
* Ranks hold consecutive slices in rank order: rank 0 first.
* Row partition of P projections for all-pairs work (pairs i < j, counted on the row i):
  rank k owns the contiguous rows [start_k, stop_k) with Σ_(i in block) (P − 1 − i) pairs;
  the block ends are chosen so that each rank has as close to P(P − 1)/(2·world) pairs as whole
  rows allow (off by less than P). Rows near 0 have the most partners, so the first blocks
  are the shortest.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Optional, TypeVar, Union

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")

__all__ = [
    "init_from_env",
    "launched",
    "is_distributed",
    "rank",
    "world_size",
    "local_device",
    "barrier",
    "cleanup",
    "row_blocks",
    "row_block",
    "block_pairs",
    "all_gather_rows",
    "all_gather_autograd",
    "all_reduce_sum_",
]


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (WORLD_SIZE and RANK in the environment)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def is_distributed() -> bool:
    """Whether a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 outside a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def _device_type(device) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    if kind not in ("cuda", "cpu"):
        raise ValueError(f"device must be cuda or cpu, got {device!r}")
    return kind


DEVICE_HELP = "auto (the default: CUDA if available, else CPU), cpu, cuda or cuda:N"


def device_option(name: Optional[str]) -> Optional[str]:
    """A command's --device value for ``run`` / ``local_device``: None for "auto" (CUDA if
    available), else the name; a CUDA device on a machine without a usable GPU is refused."""
    if name in (None, "auto"):
        return None
    try:
        kind = torch.device(name).type
    except RuntimeError:
        raise ValueError(f"--device must be {DEVICE_HELP}; got {name!r}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} requested but no CUDA GPU is available")
    return name


def local_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` for CUDA under ``torchrun``, else ``device``
    (None: cuda if available, else cpu). Under ``torchrun`` a CUDA index other than
    LOCAL_RANK is refused."""
    if not launched():
        return torch.device(device) if device is not None else torch.device(_device_type(None))
    if _device_type(device) == "cpu":
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is not None and torch.device(device).index not in (None, local):
        raise ValueError(f"under torchrun each process uses cuda:LOCAL_RANK (cuda:{local}); got {device!r}")
    if local >= torch.cuda.device_count():
        raise ValueError(f"torchrun started process LOCAL_RANK {local} but this machine has "
                         f"{torch.cuda.device_count()} GPU(s): launch at most one process per GPU, or pass --device cpu")
    return torch.device("cuda", local)


def init_from_env(device: Union[str, torch.device, None] = None) -> int:
    """Join the process group described by torchrun's environment; returns the world size.

    ``device`` ("cuda", "cpu" or None for cuda if available) picks the backend: NCCL with the
    current CUDA device set to ``cuda:LOCAL_RANK``, or gloo. Outside ``torchrun``: a no-op
    returning 1. An already initialised group is kept (its size is returned).
    """
    if is_distributed():
        return world_size()
    if not launched():
        return 1
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; cannot run under torchrun")
    dev = local_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA requested under torchrun but no CUDA GPU is available")
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", device_id=dev)
    else:
        dist.init_process_group("gloo")
    return world_size()


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (nothing in a single process)."""
    if is_distributed():
        dist.destroy_process_group()


def run(fn: Callable[[torch.device], T], device: Union[str, torch.device, None] = None) -> T:
    """``fn(local device)`` inside the process group of torchrun's environment (``init_from_env``;
    alone outside torchrun), then a barrier (rank 0 has written its files) and ``cleanup``."""
    init_from_env(device)
    try:
        result = fn(local_device(device))
        barrier()
        return result
    finally:
        cleanup()


# --------------------------------------------------------------------------- #
# row partition of the pair triangle
# --------------------------------------------------------------------------- #
def _pairs_before(row: int, P: int) -> int:
    """Pairs (i, j), i < j < P, with i < row: Σ_(i < row) (P − 1 − i)."""
    return row * (2 * P - 1 - row) // 2


def block_pairs(P: int, start: int, stop: int) -> int:
    """Pairs i < j < P with start <= i < stop."""
    return _pairs_before(stop, P) - _pairs_before(start, P)


def row_blocks(P: int, world: int) -> list[tuple[int, int]]:
    """Contiguous row blocks ``[(start, stop)]`` of P projections, one per rank, covering
    0..P with equal pair counts up to one row (see the module docstring). Blocks may be
    empty when world > P."""
    if P < 0 or world < 1:
        raise ValueError(f"need P >= 0 and world >= 1, got P = {P}, world = {world}")
    total = _pairs_before(P, P)
    ends = [0]
    for k in range(1, world):
        target = (total * k + world // 2) // world
        # smallest root of a(2P − 1 − a)/2 = target, then the closest whole row
        disc = (2 * P - 1) ** 2 - 8 * target
        guess = ((2 * P - 1) - math.isqrt(max(disc, 0))) // 2
        cands = [a for a in range(guess - 1, guess + 3) if ends[-1] <= a <= P]
        ends.append(min(cands, key=lambda a: (abs(_pairs_before(a, P) - target), a)))
    ends.append(P)
    return list(zip(ends[:-1], ends[1:]))


def row_block(P: int, rank_: Optional[int] = None, world: Optional[int] = None) -> tuple[int, int]:
    """This rank's block of :func:`row_blocks` (default: the current process group)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    if not 0 <= rank_ < world:
        raise ValueError(f"rank {rank_} outside 0..{world - 1}")
    return row_blocks(P, world)[rank_]


# --------------------------------------------------------------------------- #
# collectives
# --------------------------------------------------------------------------- #
def all_gather_rows(t: Tensor) -> Tensor:
    """Concatenation along dim 0, in rank order, of every rank's ``t`` (any number of rows,
    possibly 0; the other dimensions and the dtype must agree). No gradient. Sent as bytes,
    so any dtype works on every backend. A single process gets ``t`` back."""
    if not is_distributed():
        return t
    world = world_size()
    width = math.prod(t.shape[1:]) * t.element_size()
    meta = torch.tensor([t.shape[0], width], dtype=torch.int64, device=t.device)
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta)
    rows = [int(m[0]) for m in metas]
    if any(int(m[1]) != width for m in metas):
        raise ValueError(f"ranks hold rows of different sizes: {[int(m[1]) for m in metas]} bytes")
    pad = t.new_zeros((max(rows), width), dtype=torch.uint8)
    pad[: t.shape[0]] = t.contiguous().view(torch.uint8).reshape(t.shape[0], width)
    parts = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(parts, pad)
    out = torch.cat([p[:r] for p, r in zip(parts, rows)])
    return out.view(t.dtype).reshape(sum(rows), *t.shape[1:])


class _AllGather(torch.autograd.Function):
    """All-gather along dim 0 of equal-shaped tensors; backward: the sum over ranks of the
    gradients of this rank's rows (the adjoint of the gather, i.e. a reduce-scatter)."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        parts = [torch.empty_like(t) for _ in range(world_size())]
        dist.all_gather(parts, t.contiguous())
        ctx.rows = (rank() * t.shape[0], (rank() + 1) * t.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rows[0]:ctx.rows[1]]


def all_gather_autograd(t: Tensor) -> Tensor:
    """Every rank's ``t`` (same shape on all ranks) concatenated along dim 0, in rank order,
    differentiable: the gradient of this rank's rows is summed over the ranks' losses. A
    single process gets ``t`` back."""
    return _AllGather.apply(t) if is_distributed() else t


def all_reduce_sum_(t: Tensor) -> Tensor:
    """Sum ``t`` over the ranks, in place (identical on every rank); returns ``t``."""
    if is_distributed():
        dist.all_reduce(t)
    return t
