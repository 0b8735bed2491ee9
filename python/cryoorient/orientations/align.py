"""Alignment of recovered orientations to the truth: the orientation recovery error E_OR and the
physical error.

Recovered orientations are defined up to an isometry of the quaternion sphere, so the paper
(eq. 5) scores them after the best global alignment T ∈ O(4):
``E_OR = min_T (1/P) Σ_i d_q(q_i, T·q̂_i)``. O(4) covers every ambiguity of a recovery from
pairwise distances: a global rotation on either side (``q ↦ a·q·b``, proper) and ``q ↦ q̄``
(``R ↦ Rᵀ``, improper; the paper's reflection ``diag(-1, 1, 1, 1)`` maps q to -q̄, the same rotation).

Only part of that is an ambiguity of the images (:func:`physical_error`): a global rotation of
the map, ``A ↦ A·B`` (``q ↦ q·b``), and the map's mirror image V(x, y, -z), ``A ↦ J·A·J``
(J = diag(1, 1, -1); ``(w, x, y, z) ↦ (w, -x, -y, z)``, a proper element of O(4)). A left factor
``A ↦ C·A`` (the same turn of every particle frame) and ``A ↦ Aᵀ`` give other images, not those
of one map: E_OR forgives them, the physical error does not.

T follows the paper's eq. 6, ``T = diag(m, 1, 1, 1) · G01(θ0)·G02(θ1)·G03(θ2)·G12(θ3)·G13(θ4)·G23(θ5)``
with ``m = -1`` for an improper T and ``G_ij`` the rotation of the (x_i, x_j) plane of the
scalar-first quaternion (w, x, y, z): ``G[i][i] = G[j][j] = cos θ``, ``G[j][i] = -G[i][j] = sin θ``.
Angles and errors are in radians.
"""

from __future__ import annotations

import csv
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import ops
from ..geometry import (
    matrix_to_plane_rotations,
    matrix_to_quat,
    quat_distance,
    quat_multiply,
    plane_rotations_to_matrix,
    quat_to_matrix,
    symmetric_quat_distance,
    symmetry_group,
)
from ..ops._checks import check_quaternions


@dataclass
class Alignment:
    """Result of ``align_orientations``.

    transform: T (4, 4) float64 orthogonal, with ``q_true_i ≈ ±T·q_est_i`` (times a symmetry mate
    ``g`` on the right of ``q_true_i`` under a point group); ``angles`` (6,) float64 and
    ``reflected`` its eq. 6 parameters. ``reflected`` True means T is improper: it includes
    ``q̂ ↦ conj(q̂)`` (``R ↦ Rᵀ``). That is not the mirror image of the map (``A ↦ J·A·J`` is proper):
    :func:`physical_error` tells the map's hand.
    error: E_OR in radians; errors: (P,) float64 per-projection d_q (radians) after alignment.
    """

    transform: Tensor
    angles: Tensor
    reflected: bool
    error: float
    errors: Tensor
    symmetry: str | None = None

    @property
    def error_deg(self) -> float:
        return math.degrees(self.error)

    def apply(self, q_est: Tensor) -> Tensor:
        """Aligned estimates ``T·q̂`` (P, 4) in ``q_est``'s dtype."""
        return q_est @ self.transform.to(device=q_est.device, dtype=q_est.dtype).T


def align_orientations(
    q_true: Tensor,
    q_est: Tensor,
    symmetry: str | Tensor | None = None,
    restarts: int = 16,
    seed: int = 0,
    tol: float = 1e-8,
    max_steps: int = 1000,
    margin: float = 0.05,
    polish: int = 6,
) -> Alignment:
    """Best alignment T ∈ O(4) of ``q_est`` onto ``q_true`` and the error E_OR (paper eqs. 5-6).

    q_true, q_est: (P, 4) scalar-first quaternions (torch tensors or arrays), any sign and norm
    (non-zero). symmetry: point-group name (``cryoorient.geometry.symmetry_group``) or its (G, 4)
    quaternions: each projection then scores its nearest symmetry mate ``q_true_i·g``.

    Search, in three stages:

    1. Starts. Per handedness, a closed-form start: the least-squares fit ``R_i ≈ A·R̂_i·B`` of
       the rotation matrices (``R̂_iᵀ`` for the mirror), sign-invariant and exact for an exact
       O(4) image with P >= 9; plus ``restarts`` Haar-random elements of O(4). With a point
       group, also the best ``2·restarts + 2`` of the anchor starts (a global rotation or its
       mirror sending one projection onto each symmetry mate of its truth).
    2. Descent. All starts at once by Adam on their eq. 6 angles, one ``ops.align_loss`` kernel
       call (loss + gradient of every candidate) per step; the step halves whenever the best
       loss stalls (< 1e-4 rad gain in 10 steps) and the descent ends below 0.01 rad.
    3. Polish. The closed-form starts and the descended candidates within ``margin`` (rad) of
       the best (at most ``polish``) are refined by majorise-minimise: each d_q = 2·arccos|c|
       is concave in c on [0, 1], so its tangent bounds it from above and the bound's minimum
       over a component of O(4) is an orthogonal Procrustes problem. Monotone; it stops when
       the loss gains less than ``tol`` (rad) per step.

    The returned error and per-projection errors are recomputed exactly (float64) from the
    final T. Runs on q_true's device (float32 kernel on CUDA, float64 on the CPU); ``seed``
    fixes the random starts.
    """
    qt, qe = _validated_pair(q_true, q_est)
    group, name = _group(symmetry, qt)
    if restarts < 0:
        raise ValueError(f"restarts must be >= 0; got {restarts}")
    # On the CPU the bookkeeping runs on small tensors, where torch's per-op thread team costs
    # more than it gains (and stalls on a loaded machine); the kernel keeps the threads.
    kernel_threads = torch.get_num_threads()
    with _torch_threads(1 if qt.device.type == "cpu" else kernel_threads):
        return _align(qt, qe, group, name, restarts, seed, tol, max_steps, margin, polish, kernel_threads)


def _align(qt, qe, group, name, restarts, seed, tol, max_steps, margin, polish, kernel_threads) -> Alignment:
    work = torch.float32 if qt.device.type == "cuda" else torch.float64
    gen = torch.Generator().manual_seed(seed)

    closed = torch.cat([_closed_form(qt, qe, improper) for improper in (False, True)])
    starts = [closed, _haar_o4(restarts, False, gen).to(qt.device), _haar_o4(restarts, True, gen).to(qt.device)]
    if group is not None:
        anchored = _anchor_starts(qt, qe, group, gen)
        with _torch_threads(kernel_threads):
            screen = ops.align_loss(*matrix_to_plane_rotations(anchored), qt, qe, group, validate=False)
        starts.append(anchored[torch.argsort(screen)[: 2 * restarts + 2]])
    starts = torch.cat(starts)
    angles, reflect = matrix_to_plane_rotations(starts)
    best_angles, best_loss = _descend(
        angles.to(work), reflect, qt.to(work), qe.to(work), None if group is None else group.to(work), max_steps,
        kernel_threads,
    )
    # Polish the closed-form starts as they are and the descended candidates whose loss is within
    # `margin` of the best (at most `polish` of them, lowest first).
    pool_T = torch.cat([closed, plane_rotations_to_matrix(best_angles.double(), reflect)])
    pool_loss = torch.cat([_errors(closed, qt, qe, group).mean(-1), best_loss.double()])
    order = torch.argsort(pool_loss)
    keep = order[pool_loss[order] <= pool_loss[order[0]] + margin][:polish]
    T, errors = _polish(pool_T[keep], qt, qe, group, tol)
    k = int(torch.argmin(errors.mean(-1)))
    angles, reflected = matrix_to_plane_rotations(T[k])
    return Alignment(
        transform=T[k], angles=angles, reflected=bool(reflected), error=float(errors[k].mean()), errors=errors[k],
        symmetry=name,
    )


def orientation_error(
    q_true: Tensor, q_est: Tensor, symmetry: str | Tensor | None = None, **kwargs
) -> float:
    """E_OR in radians: the mean d_q after the best O(4) alignment (see ``align_orientations``)."""
    return align_orientations(q_true, q_est, symmetry=symmetry, **kwargs).error


def aligned_errors(q_true: Tensor, q_est: Tensor, T: Tensor, symmetry: str | Tensor | None = None) -> Tensor:
    """Per-projection d_q(q_true_i, T·q_est_i) (radians, float64) for a given T, min over the group."""
    qt, qe = _validated_pair(q_true, q_est)
    group, _ = _group(symmetry, qt)
    return _errors(T.to(device=qt.device, dtype=torch.float64)[None], qt, qe, group)[0]


@dataclass
class PhysicalAlignment:
    """Result of ``physical_error``: the estimates as orientations of the true map, turned and in one hand.

    ``q_true_i ≈ ±h(q_est_i)·b`` (times a symmetry mate ``g`` on the right of ``q_true_i``) with h
    the identity (``hand == "same"``) or the mirror ``A ↦ J·A·J``, ``(w, x, y, z) ↦ (w, -x, -y, z)``
    (``hand == "mirror"``): the estimates describe ``rotate_map(truth, rotation)`` or its mirror
    image (:mod:`cryoorient.maps.transforms`). rotation: B = matrix of b (3, 3) float64;
    transform: the same map on quaternions, T (4, 4) with ``T·q̂ = h(q̂)·b``, as in ``Alignment``.
    error (rad) and errors (P,) float64: d_q after it; error_other_hand: the best error in the
    other hand, so that a near-tie is visible.
    """

    transform: Tensor
    rotation: Tensor
    hand: str
    error: float
    errors: Tensor
    error_other_hand: float
    symmetry: str | None = None


_HANDS = {"same": (1.0, 1.0, 1.0, 1.0), "mirror": (1.0, -1.0, -1.0, 1.0)}  # h: q ↦ q, or A ↦ J·A·J
_CONJ = (1.0, -1.0, -1.0, -1.0)


def physical_error(
    q_true: Tensor, q_est: Tensor, symmetry: str | Tensor | None = None, anchors: int = 8, screen: int = 2000,
    seed: int = 0, tol: float = 1e-9, max_iter: int = 50,
) -> PhysicalAlignment:
    """The error left after the ambiguities of the images alone: a global rotation of the map and its hand.

    ``min over b ∈ SO(3), h ∈ {identity, mirror} of (1/P) Σ_i d_q(q_i, h(q̂_i)·b)`` (see
    ``PhysicalAlignment``); never below E_OR (these maps are elements of O(4)). q_true, q_est,
    symmetry as in ``align_orientations``. Per hand, with ``u_i = h(q̂_i)⁻¹·q_i`` (each a
    candidate b): starts are the least-squares fit (the top eigenvector of Σ u_i u_iᵀ,
    sign-invariant, exact for an exact image) and ``anchors`` of the u_i (times every
    symmetry mate), screened on ``screen`` projections; the best few are polished by Newton
    steps on the sphere of b (halved until the mean error drops) until it gains less than
    ``tol`` (rad) or after ``max_iter`` steps.
    """
    qt, qe = _validated_pair(q_true, q_est)
    group, name = _group(symmetry, qt)
    gen = torch.Generator().manual_seed(seed)
    fits = {hand: _fit_right_factor(qt, qe * qe.new_tensor(h), group, anchors, screen, gen, tol, max_iter)
            for hand, h in _HANDS.items()}
    hand, other = sorted(fits, key=lambda h: float(fits[h][1].mean()))
    b, errors = fits[hand]
    eye = torch.eye(4, dtype=torch.float64, device=qt.device)
    T = quat_multiply(eye * eye.new_tensor(_HANDS[hand]), b).T  # column j: h(e_j)·b
    return PhysicalAlignment(
        transform=T, rotation=quat_to_matrix(b), hand=hand, error=float(errors.mean()), errors=errors,
        error_other_hand=float(fits[other][1].mean()), symmetry=name,
    )


def _physical_errors(b: Tensor, qt: Tensor, p: Tensor, group: Tensor | None) -> Tensor:
    """(N, P) d_q(q_i (·g), p_i·b_n) for right factors b (N, 4)."""
    aligned = quat_multiply(p[None], b[:, None])
    return quat_distance(qt, aligned) if group is None else symmetric_quat_distance(aligned, qt, group)


def _fit_right_factor(qt, p, group, anchors, screen, gen, tol, max_iter, keep: int = 4):
    """(b (4,), errors (P,)): the right factor minimising the mean d_q(q_i (·g), p_i·b)."""
    P = qt.shape[0]
    p_inv = p * p.new_tensor(_CONJ)
    u = quat_multiply(p_inv, qt)  # p_i·u_i = q_i
    starts = [torch.linalg.eigh(u.T @ u).eigenvectors[:, -1][None]]
    picked = u[torch.randperm(P, generator=gen)[:anchors].to(u.device)]
    starts.append(picked if group is None else quat_multiply(picked[:, None], group).reshape(-1, 4))
    b = torch.cat(starts)
    sub = torch.randperm(P, generator=gen)[:screen].to(u.device)
    chunk = max(1, (1 << 22) // (sub.numel() * (1 if group is None else group.shape[0])))
    screened = torch.cat([_physical_errors(bc, qt[sub], p[sub], group).mean(-1) for bc in b.split(chunk)])
    b = b[torch.argsort(screened)[:keep]]
    errors = _physical_errors(b, qt, p, group)
    loss = errors.mean(-1)
    active = torch.ones(b.shape[0], dtype=torch.bool, device=b.device)
    for _ in range(max_iter):
        # Newton on the sphere: with c_i = <u_i, b> and t_i the unit tangent at b towards s_i·u_i
        # (s_i = sign c_i), d_i = 2·arccos|c_i| has gradient -2·t_i and Hessian
        # 2|c_i|/sin(d_i/2)·(I - b bᵀ - t_i t_iᵀ) in the tangent space (b bᵀ is added to solve there).
        aligned = quat_multiply(p[None], b[:, None])
        mates = qt.expand_as(aligned) if group is None else _nearest_mates(qt, aligned, group)
        ub = quat_multiply(p_inv[None], mates) * torch.sign((aligned * mates).sum(-1, keepdim=True))
        c = (ub * b[:, None]).sum(-1)
        sin_half = torch.sqrt((1 - c * c).clamp_min(1e-18))
        t = (ub - c[..., None] * b[:, None]) / sin_half[..., None]
        eye = torch.eye(4, dtype=b.dtype, device=b.device)
        H = (2 * c / sin_half).sum(-1)[:, None, None] * (eye - b[:, :, None] * b[:, None, :])
        H = H - torch.einsum("np,npi,npj->nij", 2 * c / sin_half, t, t) + b[:, :, None] * b[:, None, :]
        step = torch.linalg.solve(H, 2 * t.sum(1))
        moved = torch.zeros_like(active)
        for scale in (1.0, 0.5, 0.25, 0.125):
            trial = b + scale * step
            trial = trial / trial.norm(dim=-1, keepdim=True)
            err_new = _physical_errors(trial, qt, p, group)
            loss_new = err_new.mean(-1)
            take = active & ~moved & (loss_new < loss)
            b = torch.where(take[:, None], trial, b)
            errors = torch.where(take[:, None], err_new, errors)
            moved |= take & (loss - loss_new > tol)
            loss = torch.where(take, loss_new, loss)
            if bool((moved | ~active).all()):
                break
        active = moved
        if not bool(active.any()):
            break
    k = int(torch.argmin(loss))
    return b[k], errors[k]


def save_errors_csv(path, errors: Tensor | Alignment) -> None:
    """Write per-projection errors as CSV: columns ``index, error_rad, error_deg``."""
    errors = errors.errors if isinstance(errors, Alignment) else torch.as_tensor(errors)
    e = errors.detach().double().cpu().flatten()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "error_rad", "error_deg"])
        for i, v in enumerate(e.tolist()):
            w.writerow([i, repr(v), repr(math.degrees(v))])


def plot_error_histogram(path, errors: Tensor | Alignment, bins: int = 60, title: str | None = None) -> None:
    """Save a histogram (PNG, matplotlib Agg) of per-projection errors in degrees, E_OR marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    errors = errors.errors if isinstance(errors, Alignment) else torch.as_tensor(errors)
    deg = torch.rad2deg(errors.detach().double().cpu().flatten()).numpy()
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.add_subplot()
    ax.hist(deg, bins=bins, color="tab:blue", alpha=0.85)
    ax.axvline(deg.mean(), color="tab:red", label=f"E_OR = {deg.mean():.3g}°")
    ax.set_xlabel("orientation error after alignment (degrees)")
    ax.set_ylabel("projections")
    ax.set_title(title or f"{len(deg)} projections")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


# ---------------------------------------------------------------------------------------------


def _validated_pair(q_true, q_est) -> tuple[Tensor, Tensor]:
    """(P, 4) float64 unit quaternions on q_true's device; clear errors for bad input."""
    out = []
    for name, q in (("q_true", q_true), ("q_est", q_est)):
        q = torch.as_tensor(q)
        if not (q.is_floating_point() or q.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must hold real numbers; got dtype {q.dtype}")
        if q.ndim != 2 or q.shape[1] != 4:
            raise ValueError(f"{name} must have shape P×4 (w, x, y, z); got {tuple(q.shape)}")
        out.append(q)
    qt, qe = out
    if qt.shape[0] != qe.shape[0]:
        raise ValueError(f"q_true and q_est must hold the same number of orientations; got {qt.shape[0]} and {qe.shape[0]}")
    if qt.shape[0] == 0:
        raise ValueError("q_true and q_est are empty: at least one orientation is needed")
    qe = qe.to(qt.device)
    for name, q in (("q_true", qt), ("q_est", qe)):
        check_quaternions(q, name)
    qt, qe = qt.double(), qe.double()
    return qt / qt.norm(dim=-1, keepdim=True), qe / qe.norm(dim=-1, keepdim=True)


def _group(symmetry, like: Tensor) -> tuple[Tensor | None, str | None]:
    if symmetry is None:
        return None, None
    if isinstance(symmetry, str):
        group = symmetry_group(symmetry, dtype=torch.float64, device=like.device)
        name = symmetry.strip().upper()
    else:
        group = torch.as_tensor(symmetry).to(device=like.device, dtype=torch.float64)
        if group.ndim != 2 or group.shape[1] != 4 or group.shape[0] == 0:
            raise ValueError(f"symmetry group must have shape G×4 (G >= 1); got {tuple(group.shape)}")
        check_quaternions(group, "symmetry group")
        group = group / group.norm(dim=-1, keepdim=True)
        name = f"{group.shape[0]} rotations"
    return (None, None) if group.shape[0] == 1 else (group, name)


def _basis_map(f) -> Tensor:
    """Matrix (4, 4) of the linear map f on quaternions (columns = images of the basis)."""
    return torch.stack([f(e) for e in torch.eye(4, dtype=torch.float64)], -1)


def _closed_form(qt: Tensor, qe: Tensor, improper: bool) -> Tensor:
    """T (1, 4, 4) from the least-squares fit R_i ≈ A·R̂_i·B (R̂_iᵀ if improper) of rotation matrices.

    vec(A X B) = (A ⊗ Bᵀ) vec(X) (row-major), so the 9×9 least-squares map is rearranged into
    vec(A)·vec(Bᵀ)ᵀ and its top singular pair gives A and B, projected onto SO(3). Exact when
    q̂ is an exact O(4) image of q (P >= 9); sign-invariant in both sets.
    """
    R = quat_to_matrix(qt).flatten(-2)
    X = quat_to_matrix(qe)
    X = (X.transpose(-1, -2) if improper else X).flatten(-2)
    fit = (R.T @ X).cpu() @ torch.linalg.pinv((X.T @ X).cpu(), hermitian=True)
    re = fit.reshape(3, 3, 3, 3).permute(0, 2, 1, 3).reshape(9, 9)  # [(a,c),(b,d)] = fit[3a+b, 3c+d]
    U, _, Vh = torch.linalg.svd(re)
    A, Bt = U[:, 0].reshape(3, 3), Vh[0].reshape(3, 3)
    if torch.linalg.det(A) < 0:
        A, Bt = -A, -Bt
    a, b = matrix_to_quat(_nearest_rotation(A)), matrix_to_quat(_nearest_rotation(Bt.T))
    conj = torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
    T = _basis_map(lambda e: quat_multiply(a, quat_multiply(e * conj if improper else e, b)))
    return T[None].to(qt.device)


def _anchor_starts(qt: Tensor, qe: Tensor, group: Tensor, gen: torch.Generator, anchors: int = 3) -> Tensor:
    """Starts (anchors·G·3, 4, 4) for a symmetric set: for a few anchor projections i and every
    mate g, the T sending q̂_i onto q_i·g among the ambiguities of a symmetric recovery: a global
    rotation ``T·q = a·q`` and the mirrored sets ``T·q = a·q̄`` and ``T·q = q̄·a``. Random starts
    rarely hit these basins when the group is large."""
    idx = torch.randperm(qt.shape[0], generator=gen)[:anchors].to(qt.device)
    conj = qt.new_tensor([1.0, -1.0, -1.0, -1.0])
    mates = quat_multiply(qt[idx][:, None, :], group).reshape(-1, 4)  # (anchors·G, 4)
    est = qe[idx].repeat_interleave(group.shape[0], 0)
    eye = torch.eye(4, dtype=qt.dtype, device=qt.device)[:, None, :]
    maps = (
        lambda e: quat_multiply(quat_multiply(mates, est * conj), e),  # a·q, a = q_i·g·q̂_i⁻¹
        lambda e: quat_multiply(quat_multiply(mates, est), e * conj),  # a·q̄, a = q_i·g·q̂_i
        lambda e: quat_multiply(e * conj, quat_multiply(est, mates)),  # q̄·a, a = q̂_i·q_i·g
    )
    return torch.cat([torch.stack([f(e) for e in eye], -1) for f in maps])


def _nearest_rotation(M: Tensor) -> Tensor:
    U, _, Vh = torch.linalg.svd(M)
    D = torch.ones(M.shape[-1], dtype=M.dtype)
    D[-1] = torch.sign(torch.linalg.det(U @ Vh))
    return U @ torch.diag(D) @ Vh


def _haar_o4(n: int, improper: bool, gen: torch.Generator) -> Tensor:
    """n Haar-random elements (n, 4, 4) of SO(4) (improper: times diag(-1, 1, 1, 1))."""
    Q, Rr = torch.linalg.qr(torch.randn(n, 4, 4, generator=gen, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(Rr, dim1=-2, dim2=-1))[:, None, :]
    flip = (torch.linalg.det(Q) < 0) != improper
    Q[flip, :, 0] = -Q[flip, :, 0]
    return Q


def _descend(angles, reflect, qt, qe, group, max_steps, threads, lr=0.1, lr_min=0.01, window=10, stall=1e-4):
    """Adam over all candidates at once (one kernel call per step). The step is halved when the
    best loss has improved by less than `stall` (rad) over `window` steps; the descent stops once
    the step is below `lr_min` (the polish takes over from there) or after max_steps.
    Returns the best angles and loss seen per candidate."""
    angles = angles.clone()
    angles.grad = torch.zeros_like(angles)
    opt = torch.optim.Adam([angles], lr=lr)
    best_loss = torch.full((angles.shape[0],), math.inf, dtype=angles.dtype, device=angles.device)
    best_angles = angles.clone()
    mark = math.inf
    for step in range(1, max_steps + 1):
        with _torch_threads(threads):
            loss, grad = ops.align_loss_and_grad(angles, reflect, qt, qe, group, validate=False)
        better = loss < best_loss
        best_loss = torch.where(better, loss, best_loss)
        best_angles = torch.where(better[:, None], angles, best_angles)
        angles.grad.copy_(grad)
        opt.step()
        if step % window == 0:
            now = float(best_loss.min())
            if now > mark - stall:
                for g in opt.param_groups:
                    g["lr"] *= 0.5
                if opt.param_groups[0]["lr"] < lr_min:
                    break
            mark = now
    return best_angles, best_loss


@contextmanager
def _torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _errors(T: Tensor, qt: Tensor, qe: Tensor, group: Tensor | None) -> Tensor:
    """(N, P) exact d_q(q_true_i (·g), T_n·q_est_i), float64."""
    b = torch.einsum("nij,pj->npi", T, qe)
    if group is None:
        return quat_distance(qt, b)
    return symmetric_quat_distance(b, qt, group)


def _polish(T: Tensor, qt: Tensor, qe: Tensor, group: Tensor | None, tol: float, max_iter: int = 1000):
    """Majorise-minimise each T_n (N, 4, 4) within its component of O(4) (float64).

    With c_i = <a_i, T q̂_i> (a_i = q_i or its nearest symmetry mate) and s_i = sign c_i, the
    tangent of 2·arccos|c| at the current |c_i| bounds it from above on [-1, 1], so
    T ← argmax_T Σ w_i s_i <a_i, T q̂_i>, w_i = 1/sin(d_i/2), never increases the loss:
    T = U·diag(1, 1, 1, ±1)·Vᵀ from the SVD of M = Σ w_i s_i a_i q̂_iᵀ. Steps that fail to lower
    the exact loss (rounding, clamped weights) end the iteration.
    """
    T = T.to(device=qt.device, dtype=torch.float64)
    det = torch.sign(torch.linalg.det(T))
    errors = _errors(T, qt, qe, group)
    loss = errors.mean(-1)
    active = torch.ones(T.shape[0], dtype=torch.bool, device=T.device)
    for _ in range(max_iter):
        b = torch.einsum("nij,pj->npi", T, qe)
        a = qt.expand_as(b) if group is None else _nearest_mates(qt, b, group)
        c = (a * b).sum(-1)
        w = torch.sign(c) / torch.sin(errors / 2).clamp_min(1e-9)
        M = torch.einsum("np,npi,pj->nij", w, a, qe).cpu()
        U, _, Vh = torch.linalg.svd(M)
        D = torch.ones(T.shape[0], 4, dtype=torch.float64)
        D[:, -1] = torch.sign(torch.linalg.det(U @ Vh)) * det.cpu()
        T_new = (U * D[:, None, :] @ Vh).to(T.device)
        err_new = _errors(T_new, qt, qe, group)
        loss_new = err_new.mean(-1)
        take = active & (loss_new < loss)
        T = torch.where(take[:, None, None], T_new, T)
        errors = torch.where(take[:, None], err_new, errors)
        active = take & (loss - loss_new > tol)
        loss = torch.where(take, loss_new, loss)
        if not bool(active.any()):
            break
    return T, errors


def _nearest_mates(qt: Tensor, b: Tensor, group: Tensor) -> Tensor:
    """q_t·g with g maximising |<q_t·g, b>| per pair: (N, P, 4)."""
    mates = quat_multiply(qt[:, None, :], group)  # (P, G, 4)
    best = torch.einsum("pgi,npi->npg", mates, b).abs().argmax(-1)
    return mates[torch.arange(qt.shape[0], device=qt.device)[None, :], best]
