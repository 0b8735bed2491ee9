"""Operations on 3D maps: rotation, low-pass filtering and alignment to a reference.

Maps are cubic tensors indexed [z, y, x] with their centre at voxel n//2. A rotation
R (3×3, acting on (x, y, z) column vectors about the centre) turns V into
``V_R(r) = V(Rᵀ r)``: density at r moves to R r.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import quat_multiply, quat_to_matrix, random_quaternions


def _as_map(v, device=None) -> Tensor:
    t = torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v)
    if t.dim() != 3 or len(set(t.shape)) != 1:
        raise ValueError(f"expected a cubic [z, y, x] map; got shape {tuple(t.shape)}")
    return t.to(device=device if device is not None else t.device, dtype=torch.float32)


def rotate_map(volume: Tensor, R: Tensor) -> Tensor:
    """V_R(r) = V(Rᵀ r) for one R (3, 3) or a batch (B, 3, 3) -> (n, n, n) or (B, n, n, n); trilinear."""
    v = _as_map(volume)
    n = v.shape[0]
    Rb = R.to(v).reshape(-1, 3, 3)
    ax = (torch.arange(n, device=v.device, dtype=torch.float32) - n // 2)
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    r = torch.stack([x, y, z], -1).reshape(-1, 3)  # (n³, 3) as (x, y, z)
    src = torch.einsum("bji,pj->bpi", Rb, r)  # Rᵀ r
    # grid_sample's normalised coordinates (align_corners=True): -1 at index 0, +1 at index n-1
    grid = (src + n // 2) / (n - 1) * 2 - 1
    out = F.grid_sample(
        v.expand(Rb.shape[0], 1, n, n, n), grid.view(Rb.shape[0], n, n, n, 3), align_corners=True, padding_mode="zeros"
    )
    out = out[:, 0]
    return out[0] if R.dim() == 2 else out


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


@dataclass
class MapAlignment:
    rotation: Tensor  # (3, 3): aligned = rotate_map(mirror(volume) if mirrored else volume, rotation)
    mirrored: bool  # the volume was the mirror image (opposite handedness) of the reference
    correlation: float  # real-space correlation of the aligned map with the reference
    aligned: Tensor  # the aligned map


def mirror(volume: Tensor) -> Tensor:
    """The mirror image through the centre plane z = 0 (flips handedness)."""
    v = _as_map(volume)
    n = v.shape[0]
    return torch.roll(torch.flip(v, dims=(0,)), shifts=1 - n % 2, dims=0)


def _corr(a: Tensor, b: Tensor) -> Tensor:
    a = a.flatten(-3) - a.flatten(-3).mean(-1, keepdim=True)
    b = b.flatten(-3) - b.flatten(-3).mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)


def align_map(volume, reference, *, n_search: int = 2000, search_size: int = 24, refine_size: int = 40,
              refine_steps: int = 60, seed: int = 0) -> MapAlignment:
    """Rotate (and if better, mirror) ``volume`` onto ``reference`` (both centred, same box).

    A global search over ``n_search`` random rotations of both hands on maps resampled
    to ``search_size``³, then Adam on a local rotation of the two best candidates of
    each hand at ``refine_size``³. Used to compare a map reconstructed from recovered
    orientations, which are known only up to a global rotation and reflection, with a
    ground-truth map.
    """
    v, ref = _as_map(volume), _as_map(reference)
    if v.shape != ref.shape:
        raise ValueError(f"map and reference differ in size: {tuple(v.shape)} vs {tuple(ref.shape)}")

    def resample(m, size):
        size = min(size, m.shape[0])
        return F.interpolate(m[None, None], size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0]

    q = random_quaternions(n_search, generator=seed, device=v.device)
    q[0] = torch.tensor([1.0, 0, 0, 0], device=v.device)
    one = torch.ones(1, device=v.device)
    results = []
    for hand, m in ((False, v), (True, mirror(v))):
        ms, ref_s = resample(m, search_size), resample(ref, search_size)
        with torch.no_grad():
            scores = torch.cat([_corr(rotate_map(ms, quat_to_matrix(qc)), ref_s) for qc in q.split(256)])
        mr, ref_r = resample(m, refine_size), resample(ref, refine_size)
        for q0 in q[torch.topk(scores, 2).indices]:
            dq = torch.zeros(3, device=v.device, requires_grad=True)
            opt = torch.optim.Adam([dq], lr=0.01)
            for _ in range(refine_steps):
                loss = -_corr(rotate_map(mr, quat_to_matrix(quat_multiply(torch.cat([one, dq]), q0))), ref_r)
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                R = quat_to_matrix(quat_multiply(torch.cat([one, dq]), q0))
                aligned = rotate_map(m, R)
                results.append(MapAlignment(R, hand, float(_corr(aligned, ref)), aligned))
    return max(results, key=lambda r: r.correlation)
