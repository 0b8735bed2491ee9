"""Rotations as unit quaternions.

Conventions
-----------
* Quaternions are scalar-first, ``q = (w, x, y, z)``, stored in the last
  dimension of a tensor of shape ``(..., 4)``. ``q`` and ``-q`` are the same
  rotation; functions that pick a sign return ``w >= 0``.
* A quaternion ``q`` and its matrix ``R = quat_to_matrix(q)`` are *active*
  rotations of column vectors: ``x' = R x = q x q*``. ``quat_multiply(a, b)``
  is the rotation "apply ``b``, then ``a``" (matrix ``R_a R_b``).
* An orientation is the rotation that takes the map (reference) into the
  particle frame: RELION's matrix ``A`` (``euler_to_matrix``), which cryoDRGN
  stores as its ``rot``; ASPIRE stores ``Aᵀ``. ``euler_to_quat`` returns the
  quaternion of ``A``.
* Angles are in radians unless a name says ``_deg``; the Euler functions take
  and return degrees by default (``degrees=True``), like RELION's STAR files.
* All functions are batched over leading dimensions, keep the floating dtype
  and device of their input, and are plain PyTorch (CPU or CUDA).
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

__all__ = [
    "quat_normalize",
    "quat_conjugate",
    "quat_multiply",
    "quat_apply",
    "quat_to_matrix",
    "matrix_to_quat",
    "euler_to_matrix",
    "matrix_to_euler",
    "euler_to_quat",
    "quat_to_euler",
    "quat_distance",
    "symmetric_quat_distance",
    "random_quaternions",
    "random_euler",
    "symmetry_group",
    "to_asymmetric_unit",
    "asymmetric_unit_quaternions",
]

# RELION's Euler_matrix2angles treats |sin(tilt)| <= 16·FLT_EPSILON as gimbal lock.
_GIMBAL_EPS = 16 * 1.1920928955078125e-07


def _check_quat(q: Tensor, name: str = "q") -> None:
    if not isinstance(q, Tensor) or q.ndim == 0 or q.shape[-1] != 4:
        shape = tuple(q.shape) if isinstance(q, Tensor) else type(q).__name__
        raise ValueError(f"{name} must be a tensor of shape (..., 4) (w, x, y, z), got {shape}")
    if not q.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {q.dtype}")


def _check_matrix(R: Tensor, name: str = "R") -> None:
    if not isinstance(R, Tensor) or R.ndim < 2 or R.shape[-2:] != (3, 3):
        shape = tuple(R.shape) if isinstance(R, Tensor) else type(R).__name__
        raise ValueError(f"{name} must be a tensor of shape (..., 3, 3), got {shape}")
    if not R.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {R.dtype}")


def _positive_w(q: Tensor) -> Tensor:
    return torch.where(q[..., :1] < 0, -q, q)


def _sample(sampler, n: int, k: int, generator: torch.Generator | int | None, device) -> Tensor:
    """(n, k) float64 draws of ``torch.randn``/``torch.rand``; an int ``generator`` seeds a CPU generator."""
    if generator is not None and not isinstance(generator, torch.Generator):
        generator = torch.Generator().manual_seed(int(generator))
    where = generator.device if generator is not None else device
    return sampler(n, k, generator=generator, dtype=torch.float64, device=where)


def quat_normalize(q: Tensor) -> Tensor:
    """Scale ``q`` (..., 4) to unit norm (sign unchanged)."""
    _check_quat(q)
    return q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)


def quat_conjugate(q: Tensor) -> Tensor:
    """Conjugate ``(w, -x, -y, -z)``; the inverse rotation for a unit ``q``."""
    _check_quat(q)
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a·b`` (broadcast): the rotation "apply ``b``, then ``a``".

    ``quat_to_matrix(a·b) == quat_to_matrix(a) @ quat_to_matrix(b)``. No normalisation.
    """
    _check_quat(a, "a")
    _check_quat(b, "b")
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        dim=-1,
    )


def quat_apply(q: Tensor, v: Tensor) -> Tensor:
    """Rotate vectors ``v`` (..., 3) by ``q`` (..., 4), broadcast: ``v' = R(q) v``.

    ``q`` need not be unit (it is normalised).
    """
    if not isinstance(v, Tensor) or v.ndim == 0 or v.shape[-1] != 3:
        raise ValueError(f"v must be a tensor of shape (..., 3), got {getattr(v, 'shape', v)}")
    q = quat_normalize(q)
    w, u = q[..., :1], q[..., 1:]
    u, v = torch.broadcast_tensors(u, v)
    t = 2.0 * torch.linalg.cross(u, v)
    return v + w * t + torch.linalg.cross(u, t)


def quat_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrix (..., 3, 3) of ``q`` acting on column vectors: ``x' = R x``.

    ``q`` need not be unit (it is normalised); ``q`` and ``-q`` give the same ``R``.
    """
    w, x, y, z = quat_normalize(q).unbind(-1)
    return torch.stack(
        (
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ),
        dim=-1,
    ).unflatten(-1, (3, 3))


def matrix_to_quat(R: Tensor) -> Tensor:
    """Unit quaternion (..., 4) with ``quat_to_matrix(q) == R``, sign chosen so ``w >= 0``.

    Shepperd's method: solves from whichever of ``4w², 4x², 4y², 4z²`` is largest,
    so it is accurate for every rotation (including 180° turns). ``R`` should be a
    rotation matrix; the result is normalised either way.
    """
    _check_matrix(R)
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = R.flatten(-2).unbind(-1)
    # Row k is 4·q_k·(w, x, y, z); its k-th entry is 4·q_k².
    candidates = torch.stack(
        (
            torch.stack((1 + r00 + r11 + r22, r21 - r12, r02 - r20, r10 - r01), -1),
            torch.stack((r21 - r12, 1 + r00 - r11 - r22, r01 + r10, r02 + r20), -1),
            torch.stack((r02 - r20, r01 + r10, 1 - r00 + r11 - r22, r12 + r21), -1),
            torch.stack((r10 - r01, r02 + r20, r12 + r21, 1 - r00 - r11 + r22), -1),
        ),
        dim=-2,
    )
    best = torch.diagonal(candidates, dim1=-2, dim2=-1).argmax(-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    return _positive_w(quat_normalize(q))


def _angles(rot, tilt, psi, degrees: bool) -> list[Tensor]:
    ref = next((a for a in (rot, tilt, psi) if isinstance(a, Tensor) and a.is_floating_point()), None)
    kw = {"dtype": torch.get_default_dtype()} if ref is None else {"dtype": ref.dtype, "device": ref.device}
    angles = torch.broadcast_tensors(*(torch.as_tensor(a, **kw) for a in (rot, tilt, psi)))
    return [torch.deg2rad(a) if degrees else a for a in angles]


def euler_to_matrix(rot: Tensor, tilt: Tensor, psi: Tensor, degrees: bool = True) -> Tensor:
    """RELION's ``Euler_angles2matrix``: the matrix ``A`` (..., 3, 3) that rotates the reference
    into the particle frame (angles broadcast; floats accepted).

    ``A = Rz(psi) Ry(tilt) Rz(rot)`` with RELION's (passive) ``Rz(a) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]``,
    ``Ry(b) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``; equivalently
    ``A = scipy Rotation.from_euler('ZYZ', [rot, tilt, psi]).as_matrix().T``.
    cryoDRGN's ``rot`` is this ``A``; ASPIRE's rotation is ``Aᵀ``.
    """
    rot, tilt, psi = _angles(rot, tilt, psi, degrees)
    ca, sa = torch.cos(rot), torch.sin(rot)
    cb, sb = torch.cos(tilt), torch.sin(tilt)
    cg, sg = torch.cos(psi), torch.sin(psi)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return torch.stack(
        (
            cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb,
            -sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb,
            sc, ss, cb,
        ),
        dim=-1,
    ).unflatten(-1, (3, 3))


def matrix_to_euler(A: Tensor, degrees: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """RELION's ``Euler_matrix2angles``: ``(rot, tilt, psi)`` with ``euler_to_matrix(rot, tilt, psi) == A``.

    ``A`` is RELION's reference-to-particle matrix (see ``euler_to_matrix``).
    ``tilt`` is in [0, 180]°, ``rot`` and ``psi`` in (-180, 180]°. At gimbal lock
    (``|sin tilt| <= 16·FLT_EPSILON``) ``rot = 0``, ``tilt`` is 0 or 180 and the whole
    in-plane angle goes into ``psi``, as in RELION. Not meant for autograd (NaN gradients at gimbal lock).
    """
    _check_matrix(A, "A")
    abs_sb = torch.hypot(A[..., 0, 2], A[..., 1, 2])
    regular = abs_sb > _GIMBAL_EPS
    up = A[..., 2, 2] >= 0
    zero = torch.zeros_like(abs_sb)
    # RELION's sign_sb is always +1 (psi is chosen so that sin(tilt) >= 0).
    rot = torch.where(regular, torch.atan2(A[..., 2, 1], A[..., 2, 0]), zero)
    tilt = torch.where(regular, torch.atan2(abs_sb, A[..., 2, 2]), torch.where(up, zero, zero + math.pi))
    psi = torch.where(
        regular,
        torch.atan2(A[..., 1, 2], -A[..., 0, 2]),
        torch.where(up, torch.atan2(-A[..., 1, 0], A[..., 0, 0]), torch.atan2(A[..., 1, 0], -A[..., 0, 0])),
    )
    if degrees:
        return torch.rad2deg(rot), torch.rad2deg(tilt), torch.rad2deg(psi)
    return rot, tilt, psi


def euler_to_quat(rot: Tensor, tilt: Tensor, psi: Tensor, degrees: bool = True) -> Tensor:
    """Quaternion (w >= 0) of RELION's matrix ``A = euler_to_matrix(rot, tilt, psi)``.

    This is the conjugate of scipy's ``from_euler('ZYZ', [rot, tilt, psi])`` quaternion.
    """
    return matrix_to_quat(euler_to_matrix(rot, tilt, psi, degrees))


def quat_to_euler(q: Tensor, degrees: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """RELION ``(rot, tilt, psi)`` of the matrix ``A = quat_to_matrix(q)`` (see ``matrix_to_euler``)."""
    return matrix_to_euler(quat_to_matrix(q), degrees)


def quat_distance(qa: Tensor, qb: Tensor) -> Tensor:
    """Geodesic distance d_q = 2·arccos|<a, b>| on SO(3) (paper eq. 2), radians in [0, π].

    Inputs need not be unit: both are normalised first. Computed as
    ``4·atan2(|a - s·b|, |a + s·b|)`` with ``s = sign<a, b>`` (``s = 1`` at 0), which
    keeps full precision near d = 0 where arccos does not. The gradient is finite
    everywhere: of magnitude 2 (per unit of angle) away from d = 0 and defined
    as 0 at d = 0 exactly.
    """
    a = qa / torch.linalg.vector_norm(qa, dim=-1, keepdim=True)
    b = qb / torch.linalg.vector_norm(qb, dim=-1, keepdim=True)
    dot = (a * b).sum(-1, keepdim=True)
    s = torch.where(dot < 0, -1.0, 1.0).to(a.dtype)
    v = torch.linalg.vector_norm(a - s * b, dim=-1)
    w = torch.linalg.vector_norm(a + s * b, dim=-1)
    return 4.0 * torch.atan2(v, w)


def _as_group(group: Tensor | str, like: Tensor) -> Tensor:
    if isinstance(group, str):
        return symmetry_group(group, dtype=like.dtype, device=like.device)
    _check_quat(group, "group")
    if group.ndim != 2:
        raise ValueError(f"group must have shape (G, 4), got {tuple(group.shape)}")
    return group.to(dtype=like.dtype, device=like.device)


def symmetric_quat_distance(qa: Tensor, qb: Tensor, group: Tensor | str) -> Tensor:
    """``min_g d_q(qa, qb·g)`` over the point group (radians, broadcast over leading dims).

    ``group`` is a name for ``symmetry_group`` or its quaternions (G, 4). The group
    acts on the map, i.e. on the right of the orientation: if ``g`` maps a symmetric
    map onto itself, orientations ``R`` and ``R·g`` give identical projections.
    """
    _check_quat(qa, "qa")
    _check_quat(qb, "qb")
    g = _as_group(group, qb)
    return quat_distance(qa[..., None, :], quat_multiply(qb[..., None, :], g)).amin(-1)


def random_quaternions(
    n: int,
    generator: torch.Generator | int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` rotations uniform (Haar) on SO(3), (n, 4) with ``w >= 0``.

    Normalised 4D Gaussians. ``generator`` is a ``torch.Generator`` (samples are drawn
    on its device), an int seed (a CPU generator: same values on every device and
    dtype), or None (global RNG).
    """
    q = _positive_w(quat_normalize(_sample(torch.randn, n, 4, generator, device)))
    return q.to(dtype=dtype or torch.get_default_dtype(), device=device)


def random_euler(
    n: int,
    rot_range: tuple[float, float] = (-180.0, 180.0),
    tilt_range: tuple[float, float] = (0.0, 180.0),
    psi_range: tuple[float, float] = (-180.0, 180.0),
    generator: torch.Generator | int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """RELION angles ``(rot, tilt, psi)`` in degrees, each (n,), independent and uniform in its range.

    Uniform in the angles, *not* on SO(3) (use ``random_quaternions`` for that).
    ``generator`` as in ``random_quaternions``.
    """
    u = _sample(torch.rand, n, 3, generator, device)
    lo = u.new_tensor([rot_range[0], tilt_range[0], psi_range[0]])
    hi = u.new_tensor([rot_range[1], tilt_range[1], psi_range[1]])
    angles = (lo + (hi - lo) * u).to(dtype=dtype or torch.get_default_dtype(), device=device)
    return angles[:, 0], angles[:, 1], angles[:, 2]


def _axis_angle(axis: tuple[float, float, float], angle: float) -> Tensor:
    """Unit quaternion (float64) of a rotation by ``angle`` radians about ``axis``."""
    u = torch.tensor(axis, dtype=torch.float64)
    return torch.cat((u.new_tensor([math.cos(angle / 2)]), math.sin(angle / 2) * u / u.norm()))


def _closure(rot_axes: list[tuple[tuple[float, float, float], int]], tol: float = 1e-9) -> Tensor:
    """Group (float64 quaternions, identity first, each once up to sign) generated by
    rotations of 2π/fold about each axis, like RELION's ``rot_axis fold x y z`` lines."""
    elems = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    fresh = torch.stack([_axis_angle(axis, 2 * math.pi / fold) for axis, fold in rot_axes])
    while True:
        fresh = fresh[(fresh @ elems.T).abs().amax(-1) < 1 - tol]
        if not len(fresh):
            return elems
        fresh = fresh[~torch.tril((fresh @ fresh.T).abs() > 1 - tol, -1).any(-1)]
        elems = torch.cat((elems, fresh))
        fresh = quat_multiply(elems[:, None], elems[None, :]).reshape(-1, 4)


_PHI = (1 + math.sqrt(5)) / 2
# Angle between an icosahedral 5-fold and its nearest 2-fold: atan(1/φ) ≈ 31.72°.
_I_TILT = math.atan(1 / _PHI)
# RELION's I1..I4 are I2 turned about y by these angles (maps I2's 2-fold z to theirs).
_I_FRAMES = {"I": 0.0, "I1": math.pi / 2, "I2": 0.0, "I3": -_I_TILT, "I4": _I_TILT}
_GROUP_RE = re.compile(r"^(?:([CD])([0-9]+)|(T|O|I[1-4]?))$")


def symmetry_group(
    name: str, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> Tensor:
    """Rotations of a point group as unit quaternions (G, 4), identity first, ``w >= 0``.

    Names and axes follow RELION (case-insensitive): ``Cn`` (order n, n-fold about z),
    ``Dn`` (2n; n-fold about z, 2-fold about x), ``T`` (12; 3-fold about z, 2-fold about
    (0, √(2/3), √(1/3))), ``O`` (24; 4-folds about x, y, z, 3-fold about (1, 1, 1)),
    ``I`` = ``I2`` (60; 2-fold about z, 5-fold about (1, 0, φ), 3-fold about (0, 1/φ, φ)),
    and RELION's other icosahedral settings ``I1``, ``I3``, ``I4``.
    """
    m = _GROUP_RE.match(name.strip().upper()) if isinstance(name, str) else None
    if m is None or (m.group(2) is not None and int(m.group(2)) < 1):
        raise ValueError(
            f"unknown symmetry group {name!r}: expected 'Cn' or 'Dn' (n >= 1), 'T', 'O', 'I' or 'I1'..'I4'"
        )
    kind, order, poly = m.groups()
    if kind is not None:
        n = int(order)
        group = torch.stack([_axis_angle((0, 0, 1), 2 * math.pi * k / n) for k in range(n)])
        if kind == "D":
            group = torch.cat((group, quat_multiply(group, _axis_angle((1, 0, 0), math.pi))))
    elif poly == "T":
        group = _closure([((0, 0, 1), 3), ((0, math.sqrt(2), 1), 2)])
    elif poly == "O":
        group = _closure([((1, 1, 1), 3), ((0, 0, 1), 4)])
    else:
        group = _closure([((0, 0, 1), 2), ((1, 0, _PHI), 5), ((0, 1 / _PHI, _PHI), 3)])
        frame = _axis_angle((0, 1, 0), _I_FRAMES[poly])
        group = quat_multiply(quat_multiply(frame, group), quat_conjugate(frame))
    group = _positive_w(torch.where(group.abs() < 1e-12, 0.0, group))
    return group.to(dtype=dtype or torch.get_default_dtype(), device=device)


def to_asymmetric_unit(q: Tensor, group: Tensor | str) -> Tensor:
    """Canonical representative (w >= 0) of the coset ``{q·g : g in group}`` of each ``q`` (..., 4).

    The representative is the coset member closest to the identity (largest ``|w|``;
    ties go to the earlier group element). The asymmetric unit is thus the Dirichlet
    domain ``{q : |w(q)| >= |w(q·g)| for all g}``; the map is idempotent and constant
    on cosets. ``group`` as in ``symmetric_quat_distance`` (acts on the right).
    """
    _check_quat(q)
    g = _as_group(group, q)
    mates = quat_multiply(quat_normalize(q)[..., None, :], g)
    best = mates[..., 0].abs().argmax(-1)
    rep = torch.gather(mates, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    return _positive_w(rep)


def asymmetric_unit_quaternions(
    n: int,
    group: Tensor | str,
    generator: torch.Generator | int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` rotations (n, 4) uniform on the asymmetric unit of ``to_asymmetric_unit``.

    Uniform SO(3) samples (``random_quaternions``) mapped to their coset representatives.
    """
    return to_asymmetric_unit(random_quaternions(n, generator, dtype, device), group)


# O(4) transforms of quaternion sets (eq. 6): a reflection flag and six plane rotations.
PLANES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def plane_rotations_to_matrix(angles: Tensor, reflect: Tensor | bool) -> Tensor:
    """T (..., 4, 4) of eq. 6 from the angles (..., 6) and the reflection flags (...,) bool."""
    reflect = torch.as_tensor(reflect, device=angles.device)
    eye = torch.eye(4, dtype=angles.dtype, device=angles.device)
    m = torch.where(reflect, -1.0, 1.0).to(angles.dtype)
    T = eye.expand(*angles.shape[:-1], 4, 4).clone()
    T[..., 0, 0] = m
    for p, (i, j) in enumerate(PLANES):
        c, s = torch.cos(angles[..., p]), torch.sin(angles[..., p])
        G = eye.expand(*angles.shape[:-1], 4, 4).clone()
        G[..., i, i] = c
        G[..., j, j] = c
        G[..., j, i] = s
        G[..., i, j] = -s
        T = T @ G
    return T


def matrix_to_plane_rotations(T: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of ``plane_rotations_to_matrix`` for orthogonal T (..., 4, 4): (angles float64, reflect).

    The reflection is ``det T < 0``. Column ``c`` of the remaining rotation is ``e_c`` turned by
    its planes (c, j), j > c, which gives their angles by atan2; those rotations are then peeled off.
    """
    T = T.to(torch.float64)
    reflect = torch.linalg.det(T) < 0
    S = T.clone()
    S[..., 0, :] = torch.where(reflect[..., None], -T[..., 0, :], T[..., 0, :])
    angles = torch.zeros(*T.shape[:-2], 6, dtype=torch.float64, device=T.device)
    for c in range(3):
        x = S[..., :, c]
        for j in range(c + 1, 4):
            p = PLANES.index((c, j))
            base = x[..., c] if j == c + 1 else torch.linalg.vector_norm(x[..., c:j], dim=-1)
            angles[..., p] = torch.atan2(x[..., j], base)
        mask = torch.tensor([a == c for a, _ in PLANES], device=T.device)
        G = plane_rotations_to_matrix(torch.where(mask, angles, 0.0), torch.zeros_like(reflect))
        S = G.transpose(-1, -2) @ S
    return angles, reflect
