"""3D reconstruction from projections with known orientations: direct Fourier inversion.

Conventions (the same as :mod:`cryoorient.project`): a map is indexed [z, y, x] with
its centre at voxel n//2 on each axis; an image is [y, x] with its centre at pixel
n//2; the orientation of image i is RELION's matrix A_i (``geometry.euler_to_matrix``;
or a scalar-first quaternion q_i with A_i = ``quat_to_matrix(q_i)``), and the image is
the line integral ``p(x, y) = ∫ V(A_iᵀ (x, y, z)) dz``. By the Fourier-slice theorem
the 2D transform of p at (kx, ky) is the 3D transform of V at A_iᵀ (kx, ky, 0).

Each image is zero-padded by ``pad``, transformed, and its half-plane (kx ≥ 0) is
spread onto the padded 3D Fourier grid with trilinear weights; Hermitian symmetry
fills the other half. With a CTF, images are multiplied by their CTF before
insertion and the weights accumulate CTF², so the result is a Wiener-like estimate
V = Σ c·F / max(Σ c², floor). Finally the inverse transform is cropped and divided
by the trilinear gridding kernel's transform (sinc²).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..geometry import quat_to_matrix
from ..imaging.ctf import ctf_2d


def check_finite_images(images: Tensor, indices) -> None:
    """Refuse (one line) a batch of images (B, n, n) with NaN or infinite pixels; ``indices`` (B,): the
    images' numbers in their stack, for the message."""
    finite = torch.isfinite(images).flatten(1).all(1)
    if not bool(finite.all()):
        bad = torch.as_tensor(indices)[~finite.cpu()]
        raise ValueError(f"{len(bad)} of {len(images)} images contain NaN or infinite values "
                         f"(the first: image {int(bad[0])})")


def _as_rotations(orientations, device) -> Tensor:
    r = torch.as_tensor(np.asarray(orientations) if not torch.is_tensor(orientations) else orientations)
    r = r.to(device=device, dtype=torch.float32)
    if r.dim() == 2 and r.shape[1] == 4:
        return quat_to_matrix(r)
    if r.dim() == 3 and r.shape[1:] == (3, 3):
        return r
    raise ValueError(f"orientations must be (N, 4) quaternions or (N, 3, 3) matrices; got {tuple(r.shape)}")


class FourierInserter:
    """Accumulates images into a padded 3D Fourier grid; :meth:`volume` gives the map."""

    def __init__(self, size: int, pad: int = 2, device="cpu", weight_floor: float = 1.0):
        if size < 2:
            raise ValueError(f"map size must be at least 2 voxels; got {size}")
        if pad < 1:
            raise ValueError(f"pad must be a positive integer; got {pad}")
        self.n, self.p, self.device, self.floor = size, pad * size, torch.device(device), weight_floor
        p = self.p
        self.data = torch.zeros(2, p * p * p, dtype=torch.float32, device=self.device)  # real, imag
        self.weight = torch.zeros(p * p * p, dtype=torch.float32, device=self.device)
        ky = torch.fft.fftfreq(p, device=self.device) * p
        kx = torch.fft.rfftfreq(p, device=self.device) * p
        KY, KX = torch.meshgrid(ky, kx, indexing="ij")
        keep = (KX**2 + KY**2) <= (p // 2 - 1) ** 2
        self._pix = torch.nonzero(keep.flatten()).squeeze(1)
        self._k2 = torch.stack([KX.flatten()[self._pix], KY.flatten()[self._pix]], 1)  # (Npix, 2): kx, ky

    def insert(self, images: Tensor, rotations: Tensor, ctf: Optional[Tensor] = None,
               weights: Optional[Tensor] = None) -> None:
        """Add a batch: images (B, n, n) real, rotations (B, 3, 3) RELION A, ctf (B, n_pad, n_pad//2+1) or None,
        and optional non-negative weights (B,) scaling each image's contribution (data and weight alike,
        e.g. the probability of that orientation in a soft assignment; default 1)."""
        B, n = images.shape[0], self.n
        p, off = self.p, self.p // 2 - self.n // 2  # centre n//2 -> p//2 (odd n too)
        padded = torch.zeros(B, p, p, dtype=torch.float32, device=self.device)
        padded[:, off : off + n, off : off + n] = images.to(self.device, torch.float32)
        # Centre pixel n//2 sits at p//2 after padding; move it to index 0 before the FFT.
        f = torch.fft.rfft2(torch.fft.ifftshift(padded, dim=(-2, -1))).flatten(1)[:, self._pix]
        w_img = None
        if ctf is not None:
            c = ctf.to(self.device, torch.float32).flatten(1)[:, self._pix]
            f = f * c
            w_img = c * c
        if weights is not None:
            if tuple(weights.shape) != (B,) or not bool(torch.isfinite(weights).all() and (weights >= 0).all()):
                raise ValueError(f"weights must be {B} finite non-negative numbers (one per image); "
                                 f"got shape {tuple(weights.shape)}")
            w = weights.to(self.device, torch.float32)[:, None]
            f = f * w
            w_img = w.expand(-1, f.shape[1]) if w_img is None else w_img * w
        # 3D coordinates A^T (kx, ky, 0): (B, Npix, 3) as (x, y, z)
        k3 = torch.einsum("pc,bcd->bpd", self._k2, rotations[:, :2, :].to(self.device, torch.float32))
        g = k3 + p // 2  # grid coordinates, centre at p//2
        # Lower corners; clamped so that a sample exactly on the last plane (an axis-aligned
        # view at the cut-off radius) puts its full weight on it instead of indexing past it.
        g0 = torch.floor(g).clamp(0, p - 2)
        t = (g - g0).flatten(0, 1).T.contiguous()  # (3, B·Npix): x, y, z within the cell
        g0 = g0.long().flatten(0, 1).T
        base = (g0[2] * p + g0[1]) * p + g0[0]
        values = (f.real.flatten(), f.imag.flatten(), None if w_img is None else w_img.flatten())
        sums = (self.data[0], self.data[1], self.weight)
        for dz in (0, 1):
            for dy in (0, 1):
                wzy = (t[2] if dz else 1 - t[2]) * (t[1] if dy else 1 - t[1])
                for dx in (0, 1):
                    w = wzy * (t[0] if dx else 1 - t[0])
                    idx = base + ((dz * p + dy) * p + dx)
                    for acc, v in zip(sums, values):
                        acc.index_add_(0, idx, w if v is None else w * v)

    def translate(self, t: Tensor) -> None:
        """Move the map accumulated so far by t (x, y, z) voxels: a phase ramp on the Fourier sums (the
        weights stay), as if every image had been inserted moved by the projection of t."""
        p = self.p
        k = torch.arange(p, device=self.device, dtype=torch.float64) - p // 2
        t = torch.as_tensor(t, dtype=torch.float64, device=self.device)
        phase = (-2 * torch.pi / p) * (t[2] * k[:, None, None] + t[1] * k[None, :, None] + t[0] * k[None, None, :])
        c, s = torch.cos(phase).flatten().float(), torch.sin(phase).flatten().float()
        re, im = self.data[0].clone(), self.data[1]
        self.data[0] = re * c - im * s
        self.data[1] = re * s + im * c

    def volume(self) -> Tensor:
        """The reconstructed map (n, n, n), [z, y, x], centre at n//2."""
        p, n = self.p, self.n
        re, im, w = (x.view(p, p, p) for x in (self.data[0], self.data[1], self.weight))
        # Hermitian completion: V(k) += conj(V(-k)); index i <-> p - i around the centre p//2.
        flip = lambda x: torch.roll(torch.flip(x, dims=(0, 1, 2)), shifts=(1, 1, 1), dims=(0, 1, 2))  # noqa: E731
        re_f, im_f, w_f = re + flip(re), im - flip(im), w + flip(w)
        spec = torch.complex(re_f, im_f) / w_f.clamp_min(self.floor)
        vol = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(spec)).real)
        off = p // 2 - n // 2
        vol = vol[off : off + n, off : off + n, off : off + n]
        x = (torch.arange(n, device=vol.device, dtype=torch.float32) - n // 2) / p
        s = torch.sinc(x) ** 2
        return vol / (s[:, None, None] * s[None, :, None] * s[None, None, :])


def reconstruct(
    images,
    orientations,
    *,
    ctf: Optional[Callable[[slice], Tensor]] = None,
    pad: int = 2,
    batch_size: int = 512,
    device="cpu",
    weight_floor: float = 1.0,
    progress: bool = True,
) -> Tensor:
    """Reconstruct a map from centred images (N, n, n) and orientations (RELION A or quaternions).

    ``images`` may be a numpy memmap: batches are read and moved to ``device`` one at a
    time. ``ctf(batch_slice)`` returns the CTF of those images on the padded rfft grid
    (B, pad·n, pad·n//2+1), or leave it None for CTF-free images. Returns a float32
    tensor (n, n, n) on ``device``.
    """
    N = len(images)
    if N == 0:
        raise ValueError("no images to reconstruct from")
    n = images.shape[-1]
    if images.shape[-2] != n or len(images.shape) != 3:
        raise ValueError(f"images must be a stack of square images (N, n, n); got {tuple(images.shape)}")
    rot = _as_rotations(orientations, device)
    if rot.shape[0] != N:
        raise ValueError(f"{N} images but {rot.shape[0]} orientations")
    ins = FourierInserter(n, pad=pad, device=device, weight_floor=weight_floor)
    for s in tqdm(range(0, N, batch_size), desc="reconstruct", unit="batch", disable=not progress):
        sl = slice(s, min(N, s + batch_size))
        batch = torch.as_tensor(np.asarray(images[sl]) if not torch.is_tensor(images) else images[sl])
        check_finite_images(batch, torch.arange(sl.start, sl.stop))
        ins.insert(batch, rot[sl], None if ctf is None else ctf(sl))
    return ins.volume()


def _column(particles, name: str, default: float) -> np.ndarray:
    v = getattr(particles, name)
    return np.full(len(particles), default) if v is None else np.asarray(v, dtype=np.float64)


class ParticleCTF:
    """``ctf(indices, size)``: CTFs (B, size, size//2+1) on the rfft grid of images of edge ``size`` for
    the particles ``indices`` (array or tensor) of a RELION particle set, computed on ``device``.

    Uses rlnDefocusU/V (Å), rlnDefocusAngle (°), rlnPhaseShift (°, 0 where absent) and each
    particle's optics (kV, mm, amplitude contrast; RELION defaults 300 kV, 2.7 mm, 0.1 where
    absent). The columns are read once, here; each call computes one ``ctf_2d`` per optics group
    (and phase shift) among its particles, on ``device``.
    """

    def __init__(self, particles, device="cpu"):
        self.device = torch.device(device)
        du = _column(particles, "defocus_u", np.nan)
        dv = _column(particles, "defocus_v", np.nan)
        dv = np.where(np.isnan(dv), du, dv)
        optics = np.stack([_column(particles, "pixel_size", np.nan), _column(particles, "voltage", 300.0),
                           _column(particles, "spherical_aberration", 2.7),
                           _column(particles, "amplitude_contrast", 0.1), _column(particles, "phase_shift", 0.0)], 1)
        self.optics, group = np.unique(optics, axis=0, return_inverse=True)
        self.group = torch.as_tensor(group.reshape(-1), device=self.device)
        self.defocus = torch.as_tensor(np.stack([du, dv, _column(particles, "defocus_angle", 0.0)], 1),
                                       dtype=torch.float32, device=self.device)

    def to(self, device) -> "ParticleCTF":
        """The same CTFs computed on ``device``."""
        out = object.__new__(ParticleCTF)
        out.device, out.optics = torch.device(device), self.optics
        out.group, out.defocus = self.group.to(device), self.defocus.to(device)
        return out

    def _ctf(self, k: int, d: Tensor, size: int) -> Tensor:
        pixel, kv, cs, ac, phase = (float(v) for v in self.optics[k])
        return ctf_2d(size, pixel, d[:, 0], d[:, 1], d[:, 2], voltage=kv, cs=cs, amplitude_contrast=ac,
                      phase_shift=phase, device=self.device)

    def __call__(self, indices, size: int) -> Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long).to(self.device)
        d = self.defocus[idx]
        if len(self.optics) == 1:
            return self._ctf(0, d, size)
        out = torch.empty(len(idx), size, size // 2 + 1, device=self.device)
        g = self.group[idx]
        for k in torch.unique(g).tolist():
            sel = (g == k).nonzero().flatten()
            out[sel] = self._ctf(k, d[sel], size)
        return out


def particle_batches(particles, *, batch_size: int = 512, pad: int = 2, device="cpu", with_ctf: bool = True):
    """Yield (slice, centred images, RELION matrices A, CTF on the padded rfft grid or None) from a STAR file.

    Images are read in batches from their (memory-mapped) stacks and re-centred by the
    particles' origins (RELION: the image is the projection moved by -origin, so it is
    shifted by +origin / pixel size). The CTF, when the STAR file has defocus values and
    ``with_ctf``, is sampled on the grid of the ``pad``-fold padded image.
    """
    from ..geometry import euler_to_matrix
    from ..io import read_particle_images
    from ..imaging.shift import shift_images

    if particles.angles is None:
        raise ValueError("the particles have no orientations (rlnAngleRot/Tilt/Psi)")
    pixel = _column(particles, "pixel_size", np.nan)
    if np.isnan(pixel).any():
        raise ValueError("the particles have no pixel size (rlnImagePixelSize)")
    angles = torch.as_tensor(np.asarray(particles.angles, dtype=np.float64))
    A = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2]).float()
    origins = np.stack([_column(particles, "origin_x_angst", 0.0), _column(particles, "origin_y_angst", 0.0)], 1)
    origins = origins / pixel[:, None]
    ctf_of = ParticleCTF(particles, device) if with_ctf and particles.defocus_u is not None else None
    for s in range(0, len(particles), batch_size):
        sl = slice(s, min(len(particles), s + batch_size))
        idx = np.arange(sl.start, sl.stop)
        img = torch.from_numpy(read_particle_images(particles, idx)).to(device)
        if np.any(origins[sl] != 0):
            img = shift_images(img, torch.as_tensor(origins[sl], dtype=torch.float32, device=device))
        ctf = None if ctf_of is None else ctf_of(idx, pad * img.shape[-1])
        yield sl, img, A[sl].to(device), ctf


def reconstruct_particles(particles, *, pad: int = 2, batch_size: int = 512, device="cpu",
                          with_ctf: bool = True, weight_floor: float = 1.0, progress: bool = True) -> Tensor:
    """Reconstruct the map of a RELION particle set (STAR + stacks) with its orientations, origins and CTF."""
    if len(particles) == 0:
        raise ValueError("no particles to reconstruct from")
    ins = None
    batches = particle_batches(particles, batch_size=batch_size, pad=pad, device=device, with_ctf=with_ctf)
    for sl, img, A, ctf in tqdm(batches, total=-(-len(particles) // batch_size), desc="reconstruct",
                                unit="batch", disable=not progress):
        if ins is None:
            n = img.shape[-1]
            ins = FourierInserter(n, pad=pad, device=device, weight_floor=weight_floor)
        check_finite_images(img, torch.arange(sl.start, sl.stop))
        ins.insert(img, A, ctf)
    return ins.volume()
