"""Operations on 3D maps: rotation, translation and centring, mirror, low-pass filtering, box and voxel
size, particle extent and alignment to a reference.

Maps are cubic tensors indexed [z, y, x] with their centre at voxel n//2. A rotation
R (3×3, acting on (x, y, z) column vectors about the centre) turns V into
``V_R(r) = V(Rᵀ r)``: density at r moves to R r; orientations A of V are A·Rᵀ for V_R.
The mirror image is V(x, y, -z); orientations A of V are J·A·J (J = diag(1, 1, -1)) for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import quat_distance, quat_multiply, quat_to_matrix
from ..io.structure import centre_of_mass


def _as_map(v, device=None) -> Tensor:
    t = torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v)
    if t.dim() != 3 or len(set(t.shape)) != 1:
        raise ValueError(f"expected a cubic [z, y, x] map; got shape {tuple(t.shape)}")
    return t.to(device=device if device is not None else t.device, dtype=torch.float32)


def rotate_map(volume: Tensor, R: Tensor) -> Tensor:
    """V_R(r) = V(Rᵀ r) for one R (3, 3) or a batch (B, 3, 3) -> (n, n, n) or (B, n, n, n).

    Read trilinearly from V upsampled twice in Fourier space (:func:`_upsampled`): trilinear
    reading on the map's own grid would blur it (halving the amplitude near Nyquist between
    voxels), and blur noise far from the centre more than the particle.
    """
    v = _as_map(volume)
    n = v.shape[0]
    ax = torch.arange(n, device=v.device, dtype=torch.float32) - n // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    points = torch.stack([x, y, z], -1).reshape(-1, 3)
    out = _read(_upsampled(v), 2, n // 2, points, R.to(v).reshape(-1, 3, 3).transpose(1, 2)).view(-1, n, n, n)
    return out[0] if R.dim() == 2 else out


def _upsampled(v: Tensor) -> Tensor:
    """``v`` (n³) on a grid twice as fine, (2n)³ with voxel 2i at voxel i: its spectrum zero-padded
    (band-limited interpolation)."""
    n = v.shape[0]
    k = torch.arange(n, device=v.device)
    src, dst = k, torch.where(k <= n // 2, k, k + n)  # frequency f: index f mod n -> f mod 2n
    weight = torch.ones(n, device=v.device)
    if n % 2 == 0:  # the Nyquist bin holds frequencies +n/2 and -n/2: half to each
        weight[n // 2] = 0.5
        src, dst = torch.cat([src, k.new_tensor([n // 2])]), torch.cat([dst, k.new_tensor([3 * n // 2])])
        weight = torch.cat([weight, weight.new_tensor([0.5])])
    half = k[: n // 2 + 1]  # the rfft axis keeps its bins; a halved Nyquist bin meets its implicit conjugate
    w = weight[:, None, None] * weight[None, :, None] * weight[None, None, half]
    f = torch.fft.rfftn(v)
    out = f.new_zeros(2 * n, 2 * n, n + 1)
    out[dst[:, None, None], dst[None, :, None], half] = f[src[:, None, None], src[None, :, None], half] * w
    return torch.fft.irfftn(out, s=(2 * n,) * 3) * 8


def _read(volume: Tensor, step: int, centre: int, points: Tensor, S: Tensor) -> Tensor:
    """Values (B, P) of a map at S_b·p for points p (P, 3) (x, y, z voxels about voxel ``centre``),
    read trilinearly from ``volume``, the map on a grid ``step`` times finer (voxel step·i at voxel i)."""
    scale = 2 * step / (volume.shape[-1] - 1)  # grid_sample, align_corners=True: -1 at index 0, +1 at the last
    grid = torch.matmul(points, S.transpose(1, 2) * scale) + centre * scale - 1
    return F.grid_sample(volume[None, None], grid[None, :, :, None], align_corners=True,
                         padding_mode="zeros")[0, 0, :, :, 0]


def shift_map(volume: Tensor, t: Tensor) -> Tensor:
    """``volume`` [z, y, x] moved by t (x, y, z) voxels (Fourier phase ramp, periodic), in its dtype."""
    n = volume.shape[-1]
    f = torch.fft.rfftn(volume.double(), dim=(-3, -2, -1))
    k = torch.fft.fftfreq(n, dtype=torch.float64, device=volume.device)
    kx = torch.fft.rfftfreq(n, dtype=torch.float64, device=volume.device)
    t = torch.as_tensor(t).double().to(volume.device)
    phase = -2 * np.pi * (t[0] * kx[None, None, :] + t[1] * k[None, :, None] + t[2] * k[:, None, None])
    moved = torch.fft.irfftn(f * torch.polar(torch.ones_like(phase), phase), s=(n, n, n), dim=(-3, -2, -1))
    return moved.to(volume.dtype)


def density_centre(volume) -> Tensor:
    """Centre of mass (x, y, z) float64, voxels from the centre n//2, of the map's density above its mean
    plus one standard deviation (the particle, not the background's noise); zero for a flat map."""
    v = _as_map(volume).double()
    w = (v - v.mean() - v.std()).clamp(min=0)
    if not float(w.sum()) > 0:
        return torch.zeros(3, dtype=torch.float64)
    return torch.from_numpy(centre_of_mass(w.cpu().numpy(), 1.0))


def soft_sphere(size: int, radius: float, edge: float, device=None) -> Tensor:
    """A spherical mask (size³) float32 about voxel size//2: 1 within ``radius`` voxels, a cosine fall to 0
    over the next ``edge`` voxels."""
    ax = torch.arange(size, device=device, dtype=torch.float32) - size // 2
    r = torch.sqrt(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2)
    t = ((r - radius) / max(edge, 1e-6)).clamp(0, 1)
    return 0.5 * (1 + torch.cos(torch.pi * t))


def lowpass(volume: Tensor, voxel_size: float, resolution: float) -> Tensor:
    """Zero the Fourier components finer than ``resolution`` Å (soft cosine edge over 2 shells)."""
    v = _as_map(volume)
    n = v.shape[0]
    k = torch.fft.fftfreq(n, d=voxel_size, device=v.device)
    kr = torch.fft.rfftfreq(n, d=voxel_size, device=v.device)
    r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kr[None, None, :] ** 2)
    edge = 2.0 / (n * voxel_size)
    t = ((r - 1.0 / resolution) / edge).clamp(0, 1)
    mask = 0.5 * (1 + torch.cos(torch.pi * t))
    return torch.fft.irfftn(torch.fft.rfftn(v) * mask, s=v.shape)


def resize_map(volume, box: int) -> Tensor:
    """The map in a ``box``³ box: zero-padded or cropped about its centre (voxel n//2 -> box//2)."""
    v = _as_map(volume)
    if isinstance(box, bool) or int(box) != box or box < 1:
        raise ValueError(f"box must be a positive number of voxels; got {box!r}")
    n, box = v.shape[0], int(box)
    src, dst = max(0, n // 2 - box // 2), max(0, box // 2 - n // 2)
    k = min(n - src, box - dst)
    out = v.new_zeros(box, box, box)
    out[dst : dst + k, dst : dst + k, dst : dst + k] = v[src : src + k, src : src + k, src : src + k]
    return out


def resample_map(volume, voxel_size: float, new_voxel_size: float) -> tuple[Tensor, float]:
    """The map on a grid of about ``new_voxel_size`` (units of ``voxel_size``) over the same extent.

    Its spectrum is cropped (frequencies beyond the new Nyquist dropped) or zero-padded to
    m = round(n·voxel_size / new_voxel_size) voxels per edge, so the voxel is exactly
    n·voxel_size / m (returned with the map; it differs from the request when m must round, as
    RELION's rescaling). Values are kept (band-limited interpolation, not integrals), and the
    centre stays at voxel m//2.
    """
    v = _as_map(volume)
    for name, size in (("voxel_size", voxel_size), ("new_voxel_size", new_voxel_size)):
        if not (math.isfinite(size) and size > 0):
            raise ValueError(f"{name} must be a positive number; got {size!r}")
    n = v.shape[0]
    m = max(1, round(n * voxel_size / new_voxel_size))
    out = torch.roll(v.double(), (-(n // 2),) * 3, dims=(0, 1, 2))  # the centre to index 0, the DFT's origin
    for dim in range(3):
        out = _resample_axis(out, dim, m)
    return torch.roll(out, (m // 2,) * 3, dims=(0, 1, 2)).float(), n * voxel_size / m


def _resample_axis(x: Tensor, dim: int, m: int) -> Tensor:
    """``x`` band-limited-resampled to ``m`` samples along ``dim`` (sample 0 fixed, same period)."""
    n = x.shape[dim]
    if m == n:
        return x
    f = torch.fft.rfft(x, dim=dim).movedim(dim, -1)
    keep = min(n, m) // 2 + 1
    g = f.new_zeros(*f.shape[:-1], m // 2 + 1)
    g[..., :keep] = f[..., :keep]
    if m > n and n % 2 == 0:  # the old Nyquist bin holds +n/2 and -n/2: half to each
        g[..., n // 2] *= 0.5
    elif m < n and m % 2 == 0:  # the new Nyquist bin stands for +m/2 and -m/2 both
        g[..., m // 2] *= 2
    return torch.fft.irfft(g * (m / n), n=m, dim=-1).movedim(-1, dim)


def particle_radius(volume, fraction: float = 0.98) -> float:
    """Radius (voxels, about the box centre) of the sphere holding ``fraction`` of the particle's density.

    The map is low-passed to 4 voxels; its background level and noise σ are the median and
    MAD of the box corners (outside the inscribed sphere), and the density counted is the
    excess over the larger of 4 σ and 5 % of the peak. A map with nothing above that gives n/2.
    """
    v = lowpass(_as_map(volume), 1.0, 4.0)
    n = v.shape[0]
    ax = torch.arange(n, device=v.device, dtype=torch.float32) - n // 2
    r = torch.sqrt(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2).flatten()
    corners = v.flatten()[r > n / 2]
    background = corners.median()
    sigma = 1.4826 * (corners - background).abs().median()
    excess = v.flatten() - background
    mass = (excess - torch.maximum(4 * sigma, 0.05 * excess.max())).clamp_min(0)
    if not bool(mass.sum() > 0):
        return n / 2
    r, order = torch.sort(r)
    cum = torch.cumsum(mass[order].double(), 0)
    return float(r[torch.searchsorted(cum, fraction * cum[-1]).clamp_max(r.numel() - 1)])


@dataclass
class MapAlignment:
    """Result of :func:`align_map`: ``aligned = rotate_map(mirror(volume) if mirrored else volume, rotation)``.

    ``correlation`` is the real-space correlation of ``aligned`` with the reference (whole box);
    ``correlation_same`` and ``correlation_mirror`` are the best of each hand, so a near-tie
    (a hand the data cannot tell) is visible. ``mirrored`` is True when the mirror hand
    correlates better: the volume is the mirror image (opposite hand) of the reference.
    Orientations A of ``volume`` are A·Rᵀ (J·A·J·Rᵀ when mirrored; R = ``rotation``,
    J = diag(1, 1, -1)) in the reference's frame.
    """

    rotation: Tensor  # (3, 3)
    mirrored: bool
    correlation: float
    aligned: Tensor
    correlation_same: float
    correlation_mirror: float


def mirror(volume: Tensor) -> Tensor:
    """The mirror image V(x, y, -z) through the centre plane z = 0 (flips the hand).

    Orientations A of V and J·A·J (J = diag(1, 1, -1)) of its mirror give the same images.
    """
    v = _as_map(volume)
    n = v.shape[0]
    return torch.roll(torch.flip(v, dims=(0,)), shifts=1 - n % 2, dims=0)


def correlation(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two maps of one shape over the whole box."""
    a = a.flatten() - a.mean()
    b = b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-30))


def _rotation_grid(n: int) -> Tensor:
    """``n`` rotations (n, 4) float64 spread evenly over SO(3): the super-Fibonacci spiral (Alexa, CVPR 2022)."""
    s = torch.arange(n, dtype=torch.float64) + 0.5
    r, rc = torch.sqrt(s / n), torch.sqrt(1 - s / n)
    a, b = 2 * math.pi * s / math.sqrt(2), 2 * math.pi * s / 1.533751168755204288118041
    return torch.stack([r * torch.sin(a), r * torch.cos(a), rc * torch.sin(b), rc * torch.cos(b)], -1)


class _Level:
    """One sampling of the search: both maps low-passed to ``lowpass_to`` voxels and read at the
    points of a grid of ``spacing`` voxels inside a sphere of ``radius`` voxels (from their
    :func:`_upsampled` copies when the spacing is below 2 voxels). A candidate (q, mirrored)
    reads the volume at S·p, S = M(q) or J·M(q): the aligned map is
    ``rotate_map(volume or its mirror, M(q)ᵀ)``."""

    def __init__(self, volume: Tensor, reference: Tensor, radius: float, spacing: float, lowpass_to: float):
        self.step, self.centre = (2 if spacing < 2 else 1), volume.shape[0] // 2
        maps = [lowpass(m, 1.0, lowpass_to) for m in (volume, reference)]
        self.volume, reference = [_upsampled(m) for m in maps] if self.step == 2 else maps
        m = int(radius / spacing)
        ax = torch.arange(-m, m + 1, device=volume.device, dtype=torch.float32) * spacing
        z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
        p = torch.stack([x, y, z], -1).reshape(-1, 3)
        self.points = p[p.norm(dim=-1) <= radius]
        b = _read(reference, self.step, self.centre, self.points, torch.eye(3, device=volume.device)[None])[0]
        b = b - b.mean()
        self.reference = b / b.norm().clamp_min(1e-30)

    def score(self, q: Tensor, mirrored: Tensor) -> Tensor:
        """Scores (B,) of the candidates q (B, 4) (float64), mirrored (B,): the volume's values times
        the normalised, zero-mean reference. Not divided by the values' own norm, which in a
        continuous map is the same at every rotation: read from a grid, it is smaller where
        interpolation smooths the noise, which would pull the search there."""
        chunk = max(1, (1 << 21) // self.points.shape[0])
        S = _reading(q, mirrored)
        return torch.cat([_read(self.volume, self.step, self.centre, self.points, Sc) @ self.reference
                          for Sc in S.split(chunk)])


def _reading(q: Tensor, mirrored: Tensor) -> Tensor:
    """Where candidates (q (B, 4), mirrored (B,)) read the volume: S = M(q), or J·M(q) when mirrored."""
    S = quat_to_matrix(q).float()
    S[:, 2] = torch.where(mirrored[:, None], -S[:, 2], S[:, 2])
    return S


_SAMPLES = (6, 12, 24)  # particle radius in samples at each level of the search
_COMPASS = torch.cat([torch.zeros(1, 3), torch.eye(3), -torch.eye(3)]).double()  # stay, ±x, ±y, ±z


def _best_per_hand(q, mirrored, score, keep: int, separation: float):
    """The ``keep`` best candidates of each hand, at least ``separation`` rad apart."""
    chosen = []
    for hand in (False, True):
        idx = torch.nonzero(mirrored == hand).flatten()
        taken = []
        for i in idx[torch.argsort(score[idx], descending=True)][: 50 * keep].tolist():
            if all(float(quat_distance(q[i], q[j])) > separation for j in taken):
                taken.append(i)
                if len(taken) == keep:
                    break
        chosen += taken
    chosen = torch.tensor(chosen, device=q.device)
    return q[chosen], mirrored[chosen]


def _compass(level: _Level, q, mirrored, step, min_step: float, steps: int):
    """Compass search of each candidate: move to the best of its rotations by ±step about x, y
    or z, or halve its step when it is already the best; until every step is below ``min_step``."""
    rows = torch.arange(q.shape[0], device=q.device)
    for _ in range(steps):
        angle = _COMPASS.to(q.device)[None] * step[:, None, None]  # (C, 7, 3)
        half = angle.norm(dim=-1, keepdim=True) / 2
        axis = _COMPASS.to(q.device)[None].expand_as(angle)
        delta = torch.cat([torch.cos(half), torch.sin(half) * axis], -1)
        trial = quat_multiply(delta, q[:, None])
        scores = level.score(trial.reshape(-1, 4), mirrored.repeat_interleave(7)).view(-1, 7)
        best = scores.argmax(1)
        q, score = trial[rows, best], scores[rows, best]
        step = torch.where(best == 0, step / 2, step)
        if bool((step < min_step).all()):
            break
    return q, score


def align_map(volume, reference, *, voxel_size: float = 1.0, resolution: float | None = None,
              radius: float | None = None, n_search: int = 2000, candidates: int = 4,
              refine_steps: int = 30) -> MapAlignment:
    """Rotate (and if better, mirror) ``volume`` onto ``reference`` (both centred, same box).

    The search samples the particle, not the box. ``radius`` (voxels; default the larger
    :func:`particle_radius` of the two maps) bounds it: both maps are cropped to it plus a
    margin and read inside that sphere at three levels, the radius spanning 6, 12 and 24
    samples, low-passed to 2.5 samples. Samples are never finer than a voxel; given the maps'
    ``resolution`` (in the units of ``voxel_size``), they are low-passed to it too, and samples
    are no finer than a third of it once the radius spans 12 of them. The first level scores
    ``n_search`` rotations spread evenly over SO(3) in both hands and keeps the best
    ``candidates`` of each hand (distinct basins); each level polishes its candidates by a
    compass search (at most ``refine_steps`` moves, down to a fraction of a sample at the
    particle's edge) and keeps fewer, the last the best of each hand. The hand is the one
    whose aligned map correlates better with the reference; both correlations are returned.
    """
    v, ref = _as_map(volume), _as_map(reference)
    if v.shape != ref.shape:
        raise ValueError(f"map and reference differ in size: {tuple(v.shape)} vs {tuple(ref.shape)}")
    if n_search < 1 or candidates < 1:
        raise ValueError(f"n_search and candidates must be >= 1; got {n_search} and {candidates}")
    n = v.shape[0]
    radius = max(particle_radius(v), particle_radius(ref)) if radius is None else float(radius)
    radius = min(max(radius, 2.0), (n - 1) / 2)
    finest = 1.0 if resolution is None else max(1.0, min(resolution / voxel_size / 3, radius / 12))
    spacings = sorted({round(max(radius / k, finest), 6) for k in _SAMPLES}, reverse=True)
    crop = min(math.ceil(radius + 2 * spacings[0]) + 2, (n - 1) // 2)  # the particle and a margin
    box = slice(n // 2 - crop, n // 2 + crop + 1)
    v_box, ref_box = v[box, box, box], ref[box, box, box]
    grid_step = 2 * (3 * math.pi / (4 * n_search)) ** (1 / 3)  # rad: SO(3) shared evenly by n_search balls

    q = _rotation_grid(n_search).to(v.device).repeat(2, 1)
    mirrored = torch.arange(2 * n_search, device=v.device) >= n_search
    step = torch.full((2 * candidates,), grid_step / 2, dtype=torch.float64, device=v.device)
    with torch.no_grad():
        for k, spacing in enumerate(spacings):
            blur = 2.5 * spacing if resolution is None else max(2.5 * spacing, resolution / voxel_size)
            level = _Level(v_box, ref_box, min(radius + spacing, crop), spacing, blur)
            if k == 0:
                q, mirrored = _best_per_hand(q, mirrored, level.score(q, mirrored), candidates, 2 * grid_step)
            last = k == len(spacings) - 1
            min_step = (0.05 if last else 0.5) * spacing / radius
            q, score = _compass(level, q, mirrored, step[: q.shape[0]], min_step, refine_steps)
            q, mirrored = _best_per_hand(q, mirrored, score, 1 if last else max(1, candidates >> (k + 1)), min_step)
            step = torch.full((q.shape[0],), 2 * min_step, dtype=torch.float64, device=v.device)
        hands = {}
        for R, hand in zip(quat_to_matrix(q).float().transpose(1, 2), mirrored.tolist()):
            aligned = rotate_map(mirror(v) if hand else v, R)
            hands[hand] = (correlation(aligned, ref), R, aligned)
    best = max(hands, key=lambda hand: hands[hand][0])
    corr, R, aligned = hands[best]
    return MapAlignment(R, best, corr, aligned, correlation_same=hands[False][0], correlation_mirror=hands[True][0])
