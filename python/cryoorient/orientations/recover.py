"""Orientation recovery (step ii of the method): find unit quaternions q_k whose distances
d_q(q_i, q_j) match target distances d̂_ij, by minimising

    L_OR = mean over sampled pairs of w_ij·(d̂_ij − d_q(q_i, q_j))²      (paper eq. 4)

with Adam on unconstrained (P, 4) parameters, renormalised after every step. Several
random restarts run as one batched problem (restart r owns rows r·P .. r·P + P − 1 of a
(R·P, 4) parameter, and all restarts see the same pairs, so each target distance is
evaluated once per step); the restart with the lowest L_OR on a fixed set of evaluation
pairs is returned. The learning rate of each restart is multiplied by ``lr_decay`` whenever
its evaluation L_OR stops improving, and a restart stops when its learning rate falls under
``min_lr``; the run stops when the restart with the lowest L_OR has stopped.

Targets come from a :class:`DistanceSource`: exact distances from known orientations,
synthetic perturbed distances (paper §3.2), or any callable (i, j) -> d̂ such as the
Siamese network. Distances are radians.

Trusting only small distances (paper §3.3), for distance estimators that plateau and
underestimate large distances: with ``cutoff`` set, a pair whose target d̂ and current
distance d_q are both >= cutoff is ignored (both say "far"; the exact value is not
trusted). A pair with d̂ >= cutoff whose orientations are currently closer than the cutoff
is pushed apart towards d̂ with weight ``spread``: the spreading term that keeps the
orientations from collapsing or folding onto each other. Pairs with d̂ < cutoff are fitted
as usual. The rule selects on the current d_q rather than on d̂ alone, so noise in d̂ does
not bias which pairs are trusted at the true orientations (for a cutoff below the plateau).

Runs are deterministic for a seed on the CPU; on CUDA the gradient is accumulated with
atomics, so runs agree to rounding only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Protocol, runtime_checkable

import torch
from torch import Tensor

from .. import distributed, ops
from ..ops import DistanceCache
from ..ops.allpairs import check_inputs, distance_code, weight_cutoff

__all__ = [
    "DistanceSource",
    "ExactDistances",
    "PerturbedDistances",
    "DistanceFunction",
    "RecoveryHistory",
    "RecoveryResult",
    "recover_orientations",
    "recover_orientations_allpairs",
    "plot_loss_curve",
]


@runtime_checkable
class DistanceSource(Protocol):
    """Target distances between P projections.

    ``num_projections`` is P; ``sample(i, j)`` takes two (M,) int64 index tensors in
    [0, P) and returns the (M,) target distances d̂_ij in radians (any float dtype and
    device; they are moved to the recovery's). It must be symmetric in (i, j) and
    return the same value each time a pair is asked for.
    """

    num_projections: int

    def sample(self, i: Tensor, j: Tensor) -> Tensor: ...


def _as_quaternions(q: Tensor, name: str) -> Tensor:
    if not isinstance(q, Tensor) or q.dim() != 2 or q.shape[1] != 4 or not q.is_floating_point():
        shape = tuple(q.shape) if isinstance(q, Tensor) else type(q).__name__
        raise ValueError(f"{name} must be a float tensor of shape (P, 4); got {shape}")
    return q


class ExactDistances:
    """d̂_ij = d_q(q_i, q_j) from known orientations (P, 4)."""

    def __init__(self, orientations: Tensor):
        self.orientations = _as_quaternions(orientations, "orientations")
        self.num_projections = orientations.shape[0]

    def sample(self, i: Tensor, j: Tensor) -> Tensor:
        q = self.orientations
        return ops.qdist(q, i.to(q.device), j.to(q.device), validate=False)


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mixer on int64 tensors holding values in [0, 2³²) (products stay < 2⁶³)."""
    m = 0xFFFFFFFF
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & m
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & m
    return x ^ (x >> 16)


def pair_normal(i: Tensor, j: Tensor, seed: int) -> Tensor:
    """One N(0, 1) float64 draw per unordered pair {i, j}: a pure function of (min, max, seed)."""
    lo, hi = torch.minimum(i, j).long(), torch.maximum(i, j).long()
    h = _hash32(_hash32((lo & 0xFFFFFFFF) ^ _hash32(torch.full_like(lo, seed & 0xFFFFFFFF))) ^ (hi & 0xFFFFFFFF))
    h = _hash32(h ^ (lo >> 32) ^ ((hi >> 32) << 16))
    u1 = (_hash32(h ^ 0x68E31DA4).double() + 0.5) / 2.0**32
    u2 = (_hash32(h ^ 0x1B56C4E9).double() + 0.5) / 2.0**32
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


class PerturbedDistances:
    """Synthetic erroneous distances (paper §3.2): d̂_ij = min(d_q(q_i, q_j), plateau) + ε_ij.

    ε_ij ~ N(0, ``variance``) is fixed per unordered pair (a hash of the pair and ``seed``),
    so asking for a pair again gives the same d̂. As in the paper the error is added
    without clipping (d̂ may leave [0, π]); ``plateau`` (radians, default none) mimics a
    learned distance that saturates and underestimates the largest distances.
    """

    def __init__(self, orientations: Tensor, variance: float, seed: int = 0, plateau: float | None = None):
        if not variance >= 0:
            raise ValueError(f"variance must be >= 0; got {variance}")
        self.orientations = _as_quaternions(orientations, "orientations")
        self.num_projections = orientations.shape[0]
        self.std = math.sqrt(variance)
        self.seed = int(seed)
        self.plateau = plateau

    def sample(self, i: Tensor, j: Tensor) -> Tensor:
        q = self.orientations
        i, j = i.to(q.device), j.to(q.device)
        d = ops.qdist(q, i, j, validate=False)
        if self.plateau is not None:
            d = d.clamp(max=self.plateau)
        if self.std == 0:
            return d
        return d + (self.std * pair_normal(i, j, self.seed)).to(d.dtype)


class DistanceFunction:
    """Wraps a callable ``fn(i, j) -> d̂`` (e.g. a Siamese network over projections i and j)."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], num_projections: int):
        if not callable(fn):
            raise TypeError(f"fn must be callable; got {type(fn).__name__}")
        self.fn = fn
        self.num_projections = int(num_projections)

    def sample(self, i: Tensor, j: Tensor) -> Tensor:
        return self.fn(i, j)


@dataclass
class RecoveryHistory:
    """Loss curves. ``steps``: (E,) steps at which the evaluation L_OR was measured;
    ``eval_loss``: (E, R) that L_OR per restart; ``lr``: (E, R) learning rates then;
    ``train_loss``: (S,) mini-batch L_OR per step, averaged over restarts."""

    steps: Tensor
    eval_loss: Tensor
    lr: Tensor
    train_loss: Tensor


@dataclass
class RecoveryResult:
    """Recovered orientations (P, 4), unit, scalar part >= 0, of the restart with the lowest
    evaluation L_OR (``restart``, value ``loss``); every restart's orientations (R, P, 4) and
    final L_OR (R,); the loss history; the wall-clock seconds; the pair evaluations per
    orientation used (2·steps·pairs_per_step / P); and the steps taken."""

    orientations: Tensor
    loss: float
    restart: int
    restart_orientations: Tensor
    restart_losses: Tensor
    history: RecoveryHistory
    seconds: float
    pairs_per_orientation: float
    steps: int

    def plot(self, path: str) -> None:
        """Save the L_OR curves as a PNG (see :func:`plot_loss_curve`)."""
        plot_loss_curve(self, path)


def plot_loss_curve(result: RecoveryResult, path: str) -> None:
    """Plot the evaluation L_OR of every restart (the kept one bold) and the mini-batch
    L_OR against the step, log scale, into the PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = result.history
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(torch.arange(1, h.train_loss.numel() + 1), h.train_loss, color="0.8", lw=0.8, label="mini-batch (mean)")
    for r in range(h.eval_loss.shape[1]):
        kept = r == result.restart
        ax.plot(h.steps, h.eval_loss[:, r], lw=2 if kept else 1, label=f"restart {r}" + (" (kept)" if kept else ""))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("L_OR (rad²)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _random_pairs(P: int, M: int, gen: torch.Generator, device) -> tuple[Tensor, Tensor]:
    """M pairs (i, j), i ≠ j, uniform over ordered pairs."""
    i = torch.randint(0, P, (M,), generator=gen, device=device)
    j = (i + torch.randint(1, P, (M,), generator=gen, device=device)) % P
    return i, j


class _Pairs:
    """One batch of pairs replicated over the R restarts, with its targets and the cutoff rule."""

    def __init__(self, i: Tensor, j: Tensor, d: Tensor, R: int, P: int, cutoff: float | None, spread: float):
        itype = torch.int32 if R * P < 2**31 else torch.int64
        offset = (torch.arange(R, device=i.device) * P)[:, None]
        self.i = (i[None] + offset).reshape(-1).to(itype)
        self.j = (j[None] + offset).reshape(-1).to(itype)
        self.target = d.repeat(R)
        self.cutoff, self.spread = cutoff, spread

    def weight(self, q: Tensor) -> Tensor | None:
        """Cutoff rule: 0 where d̂ and the current d_q are both >= cutoff, ``spread`` where only
        d_q < cutoff <= d̂ (pushes the pair apart), 1 elsewhere."""
        if self.cutoff is None:
            return None
        with torch.no_grad():
            close = ops.qdist(q, self.i, self.j, validate=False) < self.cutoff
            return torch.where(self.target < self.cutoff, 1.0, self.spread * close.to(q.dtype)).to(q.dtype)


def _initial(init: Tensor, R: int, P: int) -> Tensor:
    if not isinstance(init, Tensor) or init.shape not in ((P, 4), (R, P, 4)) or not init.is_floating_point():
        got = tuple(init.shape) if isinstance(init, Tensor) else type(init).__name__
        raise ValueError(f"init must be a float tensor of shape ({P}, 4) or ({R}, {P}, 4); got {got}")
    if not torch.isfinite(init).all() or (torch.linalg.vector_norm(init, dim=-1) == 0).any():
        raise ValueError("init contains NaN, infinite or zero quaternions")
    return init.expand(R, P, 4)


def _check_source(source) -> int:
    if not isinstance(source, DistanceSource):
        raise TypeError(
            "source must provide num_projections and sample(i, j) (a DistanceSource); "
            f"got {type(source).__name__}"
        )
    P = int(source.num_projections)
    if P < 2:
        raise ValueError(f"need at least 2 projections; got {P}")
    return P


def _targets(source, i: Tensor, j: Tensor, dtype, device) -> Tensor:
    d = source.sample(i, j)
    if not isinstance(d, Tensor) or d.shape != i.shape:
        got = tuple(d.shape) if isinstance(d, Tensor) else type(d).__name__
        raise ValueError(f"source.sample returned {got}; expected a tensor of shape {tuple(i.shape)}")
    d = d.to(device=device, dtype=dtype)
    if not torch.isfinite(d).all():
        raise ValueError("source.sample returned NaN or infinite distances")
    return d


def recover_orientations(
    source: DistanceSource,
    *,
    restarts: int = 4,
    steps: int = 2000,
    pairs_per_step: int = 32768,
    lr: float = 0.3,
    lr_decay: float = 0.5,
    min_lr: float = 1e-3,
    patience: int = 3,
    tol: float = 1e-3,
    atol: float = 1e-10,
    eval_pairs: int = 65536,
    eval_every: int = 20,
    cutoff: float | None = None,
    spread: float = 1.0,
    seed: int = 0,
    init: Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> RecoveryResult:
    """Recover P orientations from target distances by minimising L_OR (paper eq. 4).

    source: a :class:`DistanceSource`. restarts: random initialisations run together.
    steps: maximum Adam steps; pairs_per_step: pairs per step (shared by the restarts).
    lr: initial Adam learning rate (per unit of the unit-norm quaternion); every
    ``eval_every`` steps the L_OR of each restart on ``eval_pairs`` fixed pairs is measured,
    and a restart whose L_OR has not dropped by a relative ``tol`` below its best for
    ``patience`` measurements gets its learning rate multiplied by ``lr_decay``; it has
    converged (and stops moving) once that falls below ``min_lr`` or its L_OR below ``atol``
    (rad²; exact distances); the run ends when the restart with the lowest L_OR has converged. cutoff, spread: trust only distances below ``cutoff`` (radians),
    with a spreading term of weight ``spread`` (see the module docstring); the L_OR then
    counts the pairs this rule keeps. seed: initialisation and pair
    sampling. init: starting orientations, (P, 4) for every restart or (R, P, 4) (default:
    uniform random). device/dtype of the optimisation (default: the device of the source's
    ``orientations`` if any, else CPU). progress: show a tqdm bar.
    """
    P = _check_source(source)
    for name, v in (("restarts", restarts), ("steps", steps), ("pairs_per_step", pairs_per_step),
                    ("eval_pairs", eval_pairs), ("eval_every", eval_every), ("patience", patience)):  # fmt: skip
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {v!r}")
    if not (lr > 0 and 0 < lr_decay < 1 and 0 < min_lr <= lr and tol >= 0 and atol >= 0 and spread >= 0):
        raise ValueError("need lr > 0, 0 < lr_decay < 1, 0 < min_lr <= lr, tol >= 0, atol >= 0 and spread >= 0")
    if cutoff is not None and not cutoff > 0:
        raise ValueError(f"cutoff must be > 0 radians; got {cutoff}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be float32 or float64; got {dtype}")
    if device is None:
        device = getattr(getattr(source, "orientations", None), "device", "cpu")
    device = torch.device(device)
    R = restarts
    start = time.perf_counter()

    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(R * P, 4, generator=gen, device=device, dtype=dtype)
    if init is not None:
        x = _initial(init, R, P).to(device=device, dtype=dtype).reshape(R * P, 4)
    x = (x / x.norm(dim=1, keepdim=True))
    m1, m2 = torch.zeros_like(x), torch.zeros_like(x)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    lrs = torch.full((R,), lr, dtype=torch.float64)
    best = torch.full((R,), math.inf, dtype=torch.float64)
    stale = torch.zeros(R, dtype=torch.int64)

    ei, ej = _random_pairs(P, eval_pairs, gen, device)
    evaluation = _Pairs(ei, ej, _targets(source, ei, ej, dtype, device), R, P, cutoff, spread)

    def eval_loss() -> Tensor:
        with torch.no_grad():
            w = evaluation.weight(x)
            per_pair = ops.pair_loss(x, evaluation.i, evaluation.j, evaluation.target, w, "none", validate=False)
            return per_pair.view(R, -1).mean(1).double().cpu()

    hist_steps, hist_eval, hist_lr, train = [], [], [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="recovering orientations", unit="step")
    step = 0
    while step < steps:
        i, j = _random_pairs(P, pairs_per_step, gen, device)
        batch = _Pairs(i, j, _targets(source, i, j, dtype, device), R, P, cutoff, spread)
        loss, grad = ops.pair_loss_and_grad(x, batch.i, batch.j, batch.target, batch.weight(x), "sum", validate=False)
        train.append(loss / (R * pairs_per_step))
        step += 1
        with torch.no_grad():  # Adam with one learning rate per restart; keep rows unit
            m1.mul_(beta1).add_(grad, alpha=1 - beta1)
            m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            rate = (lrs * math.sqrt(1 - beta2**step) / (1 - beta1**step)).to(device, dtype)
            upd = m1 / (m2.sqrt() + eps)
            x.view(R, P, 4).sub_(rate[:, None, None] * upd.view(R, P, 4))
            x.div_(x.norm(dim=1, keepdim=True))
        if step % eval_every == 0 or step == steps:
            e = eval_loss()
            hist_steps.append(step), hist_eval.append(e), hist_lr.append(lrs.clone())
            improved = e < best * (1 - tol)
            stale = torch.where(improved, 0, stale + 1)
            best = torch.minimum(best, e)
            decay = (stale >= patience) & (lrs >= min_lr)
            lrs = torch.where(decay, lrs * lr_decay, lrs)
            stale = torch.where(decay, 0, stale)
            lrs = torch.where((lrs < min_lr) | (e <= atol), 0.0, lrs)  # converged restarts stop moving
            if bar is not None:
                bar.set_postfix(L_OR=f"{e.min().item():.3g}", lr=f"{lrs.max().item():.2g}")
        if bar is not None:
            bar.update(1)
        if hist_steps and hist_steps[-1] == step and lrs[int(torch.argmin(hist_eval[-1]))] == 0:
            break  # the best restart has converged
    if bar is not None:
        bar.close()

    final = hist_eval[-1]  # measured at the last step
    keep = int(torch.argmin(final))
    q = x.detach().view(R, P, 4)
    q = torch.where(q[..., :1] < 0, -q, q)
    history = RecoveryHistory(
        steps=torch.tensor(hist_steps),
        eval_loss=torch.stack(hist_eval),
        lr=torch.stack(hist_lr),
        train_loss=torch.stack(train).double().cpu(),
    )
    return RecoveryResult(
        orientations=q[keep].clone(),
        loss=float(final[keep]),
        restart=keep,
        restart_orientations=q.clone(),
        restart_losses=final,
        history=history,
        seconds=time.perf_counter() - start,
        pairs_per_orientation=2.0 * step * pairs_per_step / P,
        steps=step,
    )


# -- full-batch mode: every pair every epoch (all-pairs kernels) ------------------------- #
# Full-batch orientation recovery: Adam over the quaternions on the all-pairs loss L_OR.
#
# Every epoch uses every pair i < j (paper eq. 4 without sampling), either with d_p computed from
# the projection features by the fused kernel (``cryoorient.ops.allpairs_loss``) or read from a
# 1-byte ``DistanceCache`` (``cryoorient.ops.allpairs_loss_cached``, ~4× less work per epoch).
# The pairs are split over the ranks of the torch.distributed process group by rows
# (``distributed.row_block``); one process is the world of size 1 and owns every row.
# The objective is the mean over pairs, L_OR / n_pairs (radians²). The learning rate follows a
# cosine decay from ``lr`` to ``lr·final_lr_ratio`` over ``max_epochs``; quaternions are
# renormalised after each step. Recovery stops early once the loss has dropped by less than a
# fraction ``tol`` over the last ``patience`` epochs, or reaches ``target_loss`` (default 1e-8 rad²:
# an RMS distance residual of 1e-4 rad).


@dataclass
class AllPairsRecovery:
    """Result of ``recover_orientations_allpairs``."""

    q: Tensor  # (P, 4) recovered unit quaternions (scalar-first), up to a global O(4) transform
    losses: list[float] = field(default_factory=list)  # mean loss per pair (radians²), per epoch
    converged: bool = False  # stopped by tol / target_loss rather than max_epochs
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        return len(self.losses)


def recover_orientations_allpairs(
    features: Tensor | None = None,
    *,
    cache: DistanceCache | bool = False,
    distance: str = "snn",
    weight=None,
    q0: Tensor | None = None,
    lr: float = 0.1,
    final_lr_ratio: float = 0.01,
    max_epochs: int = 300,
    tol: float = 1e-3,
    patience: int = 25,
    target_loss: float = 1e-8,
    seed: int = 0,
    callback=None,
) -> AllPairsRecovery:
    """Recover P orientations from all pairwise feature distances, in one process or split over
    the ranks of the torch.distributed process group (one process per GPU, e.g. under
    ``torchrun``); one process is the world of size 1.

    ``features``: this rank's consecutive rows of the (P, n_f) features, rank 0 first (any
    split, e.g. the images each rank embedded; in one process all of them), compared by
    ``distance`` ("snn" or "signless"); they are all-gathered once. Rank k owns the row block
    ``distributed.row_block(P)`` (equal pair counts): every epoch it computes the loss and the
    (P, 4) q-gradient of the pairs i < j with i in its block, by the fused kernel or, with
    ``cache=True``, from the 1-byte distance cache of its block (~P²/(2·world) bytes, built
    once, after which the features are dropped). Instead of features, ``cache`` may be a
    ``DistanceCache`` (``cryoorient.ops.allpairs_distance_cache``) of this rank's block (in
    one process: every row). Loss and gradient are summed over the ranks by one all-reduce
    and every rank takes the same Adam step on the full (P, 4) quaternions (16 bytes a
    projection, so they stay replicated) and returns the same result, which equals the
    one-process result to float rounding.

    ``weight`` as in ``allpairs_loss``. ``q0``: (P, 4) initial quaternions, the same on every
    rank (default: uniform random, from ``seed``). ``callback(epoch, q, loss)``, if given, runs
    after every epoch. On CUDA without a callback, each epoch's loss is read while the next
    epoch runs (no GPU idle time between epochs), so a stop takes effect one Adam step late.
    """
    if not isinstance(cache, (bool, DistanceCache)):
        raise TypeError(f"cache must be True, False or a DistanceCache; got {type(cache).__name__}")
    if (features is None) != isinstance(cache, DistanceCache):
        raise ValueError("give exactly one of features or cache (a DistanceCache)")
    if features is None:
        P, device = cache.num_projections, cache.codes.device
    else:
        if not isinstance(features, Tensor) or features.dim() != 2:
            raise ValueError(f"features must be a 2-D tensor (rows, n_f); got {getattr(features, 'shape', type(features))}")
        features, _ = check_inputs(distributed.all_gather_rows(features), None, validate=True)
        distance_code(distance)
        P, device = features.shape[0], features.device
    rows = distributed.row_block(P)
    if features is None and cache.rows != rows:
        raise ValueError(f"cache must cover every row of this process's block {rows}; got rows {cache.rows}")
    weight_cutoff(weight)
    if not (lr > 0 and 0 < final_lr_ratio <= 1 and max_epochs >= 1 and patience >= 1 and tol >= 0):
        raise ValueError("need lr > 0, 0 < final_lr_ratio <= 1, max_epochs >= 1, patience >= 1 and tol >= 0")
    if cache is True:
        cache, features = ops.allpairs_distance_cache(features, distance, rows, validate=False), None
    if features is None:
        block_loss = partial(ops.allpairs_loss_cached, cache, weight=weight, validate=False)
    else:
        block_loss = partial(ops.allpairs_loss, features, distance=distance, weight=weight, rows=rows, validate=False)
    return _allpairs_adam(block_loss, P, device, q0, lr, final_lr_ratio, max_epochs, tol, patience, target_loss,
                          seed, callback)


def _allpairs_adam(block_loss, P, device, q0, lr, final_lr_ratio, max_epochs, tol, patience, target_loss, seed,
                   callback) -> AllPairsRecovery:
    """The full-batch Adam loop: ``block_loss(q)`` is the loss sum over this process's pairs;
    in a world of several ranks, loss and q-gradient are summed over them before each step."""
    if q0 is None:
        g = torch.Generator().manual_seed(seed)
        q0 = torch.randn(P, 4, generator=g)
    if q0.shape != (P, 4):
        raise ValueError(f"q0 must have shape ({P}, 4); got {tuple(q0.shape)}")
    q = torch.nn.functional.normalize(q0.to(device=device, dtype=torch.float32), dim=1).requires_grad_(True)
    n_pairs = P * (P - 1) // 2
    opt = torch.optim.Adam([q], lr=lr)
    result = AllPairsRecovery(q=q.detach())

    def converged(epoch: int, value: float) -> bool:
        result.losses.append(value)
        if callback is not None:
            callback(epoch, q.detach(), value)
        window = result.losses[-patience - 1 :]
        return value <= target_loss or (len(window) > patience and window[0] - value < tol * window[0])

    # On CUDA (without a callback) each epoch's loss is copied to pinned memory and read once
    # the next epoch is queued, so the GPU never waits for the host between epochs; a stop then
    # takes effect one epoch late.
    lag = q.device.type == "cuda" and callback is None
    if lag:
        seen = torch.empty(2, dtype=torch.float32, pin_memory=True)
        done = [torch.cuda.Event(), torch.cuda.Event()]
    t0 = time.perf_counter()
    for epoch in range(max_epochs):
        for group in opt.param_groups:
            group["lr"] = lr * (final_lr_ratio + (1 - final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * epoch / max_epochs)))
        loss = block_loss(q) / n_pairs
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if distributed.world_size() > 1:  # one all-reduce of [gradient, loss]
            both = distributed.all_reduce_sum_(torch.cat((q.grad.reshape(-1), loss.detach().reshape(1))))
            q.grad.copy_(both[:-1].view_as(q.grad))
            loss = both[-1]
        opt.step()
        with torch.no_grad():
            q /= torch.linalg.vector_norm(q, dim=1, keepdim=True)
        if not lag:
            if converged(epoch, loss.item()):
                result.converged = True
                break
            continue
        seen[epoch % 2].copy_(loss.detach(), non_blocking=True)
        done[epoch % 2].record()
        if epoch > 0:
            done[(epoch - 1) % 2].synchronize()
            if converged(epoch - 1, seen[(epoch - 1) % 2].item()):
                result.converged = True
                break
    else:
        if lag and max_epochs > 0:
            done[(max_epochs - 1) % 2].synchronize()
            result.converged = converged(max_epochs - 1, seen[(max_epochs - 1) % 2].item())
    result.q = q.detach()
    result.seconds = time.perf_counter() - t0
    return result


DENSE_LIMIT = 8192  # up to this many projections d̂ is computed once for all pairs (≤ 256 MiB)


def recover_from_features(model, features: Tensor, **options) -> RecoveryResult:
    """Recover orientations with d̂_ij = model.distance(f_i, f_j) (options: see ``recover_orientations``).

    Up to ``DENSE_LIMIT`` projections the distance matrix is computed once (in row blocks)
    and looked up; beyond, d̂ is computed for each sampled batch of pairs.
    """
    f = features
    P = f.shape[0]
    if P <= DENSE_LIMIT:
        D = torch.cat([model.pairwise_distance(f[s : s + 1024], f) for s in range(0, P, 1024)])

        def distance(i: Tensor, j: Tensor) -> Tensor:
            return D[i.to(D.device), j.to(D.device)].to(i.device)
    else:

        def distance(i: Tensor, j: Tensor) -> Tensor:
            return model.distance(f[i.to(f.device)], f[j.to(f.device)]).to(i.device)

    return recover_orientations(DistanceFunction(distance, P), **options)
