"""Ab-initio orientations from the images alone: no trained network, no reference map.

The Siamese network learns d_q for the proteins it was trained on; for a protein it never saw
its per-image features carry no usable orientation (bench/README.md, "Unseen protein"). This
module estimates orientations from the images themselves, after Singer, Zhao, Shkolnisky and
Hadani, "Viewing angle classification of cryo-electron microscopy images using eigenvectors",
SIAM J. Imaging Sci. 4 (2011):

0. **CTF and centring** (:mod:`cryoorient.orientations.preprocess`). Given CTF parameters, each
   image is phase-flipped by its own CTF, then centred (:func:`~.preprocess.centre_particles`).
1. **In-plane-invariant comparison.** Each image's Fourier transform is sampled on ``n_rings``
   rings (radii 1, 2, … Fourier pixels) × ``n_angles`` angles and Fourier transformed along the
   angle. Per angular frequency, a Wiener filter over the rings (data covariance minus noise
   covariance; the noise covariance from white-noise images of the variance measured in the
   image corners) removes most of the noise (steerable-PCA denoising). The normalised
   cross-correlation of two images, maximised over the in-plane rotation of one of them (FFT over
   the angle, parabolic peak), gives a score and an angle α_ij for every pair.
2. **Mirrors.** The projection along −v is the mirror image of the projection along v, so every
   image enters twice, as itself and as its mirror image (2P nodes; node P + i is the mirror
   p_i(x, −y) of image i, whose orientation is diag(1, −1, −1)·A_i). Two images that match only
   after mirroring are then true neighbours (one and the other's mirror), not antipodal outliers.
3. **Hubs.** Scores are corrected as 2·s_ij − r_i − r_j, r_i the mean of node i's ``hub_k`` best
   scores, so that featureless images that resemble everything do not become everyone's
   neighbour (cross-domain similarity local scaling).
4. **Graph.** Each node keeps its ``neighbors`` best corrected scores; the graph is symmetrised
   (weight 2 where both ends chose each other). For neighbours A_j ≈ Rz(−α_ij)·A_i, so the frame
   vectors z_i = a_i1 + i·a_i2 (a_ik the k-th row of A_i) obey z_j ≈ e^{−iα_ij} z_i, and the three
   components of z over the nodes are the top eigenvectors of the degree-normalised Hermitian
   matrix H_ij = w_ij·e^{iα_ij}.
5. **Frames.** The eigenvectors V (2P × 3) give z = V·X for an unknown complex 3 × 3 X, found by
   alternating least squares so that every row is an orthonormal frame and every mirror node
   carries the mirror frame conj(z_i) (random restarts, the best fit kept). A_i has rows Re z_i,
   Im z_i and their cross product. Projected power iterations then polish the frames against the
   measured angles directly (the synchronisation objective).
6. **Landmarks.** Beyond ``landmarks`` images, steps 3–5 run on that many random images and
   their mirrors only; every other image then takes the frame its neighbours among them imply.

Output: scalar-first quaternions of RELION's A (map → image frame), defined up to a global
rotation of the map and its hand (the fit fixes the image frame up to a half turn R_z(π)·A, the
projections of the mirror-image map); they reconstruct a map and can be refined as they are
(:func:`cryoorient.maps.refine.refine`).

**Diagnostics**, computed from the data: the solution is ``determined`` when (a) the third
eigenvalue of the normalised matrix exceeds the largest of a null model, the same graph with
random in-plane angles (:func:`null_edge`), and (b) the gap λ3 − λ4 exceeds the spread λ1 − λ3:
for views that cover the sphere the top three are one degenerate group, the three coordinates
of the frames. It says the angles hold one consistent set of views, not how accurate: (b) split
E_OR below and above 0.3 rad on 32²–64² phantoms (0 to −10 dB), noise fails it, but 5j0n (128²,
CTF, shifts, −12 dB) passed at 0.43 rad.

Assumptions, checked where the data allow: at least :func:`minimum_images` images; finite pixel
values; the particle inside the inscribed circle (:func:`~.preprocess.corner_signal`; refused unless
``accept`` names ``"corners"``); white noise; views that cover the sphere; CTF-free or
phase-flipped images when no CTF is given. Cost: the pair comparison O(P·L·n_rings·n_angles), a
dense eigendecomposition in 2L, L = min(P, ``landmarks``) (bench/README.md has timings).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..geometry import matrix_to_quat
from .preprocess import (_corner_variance, _hub_corrected_best, _parabolic_peak, _row_candidates, as_images,
                         prepare_images)

__all__ = ["AbInitioResult", "minimum_images", "check_counts", "polar_spectra", "rotational_neighbors",
           "frames_from_neighbors", "null_edge", "estimate_orientations"]

#: Largest angle (degrees) between an image's viewing direction and those of its ``neighbors``
#: nearest views that the minimum number of images (uniform views) keeps.
NEIGHBOUR_CAP_DEG = 25.0


@dataclass
class AbInitioResult:
    """Orientations estimated by :func:`estimate_orientations`.

    ``quaternions`` (P, 4) float64, RELION A; ``shifts`` (P, 2) float64, pixels (x, y), the
    centring of step 0 (image content moved by +t; zeros without centring). ``landmarks`` the L
    images the graph was built on (None: all P). ``neighbors``
    (2P, K): for image i (row i) and its mirror image (row P + i), the nearest landmark nodes (node
    r < L: landmark r, the image ``landmarks[r]`` or image r; node L + r: its mirror image);
    ``angles`` (2P, K) their in-plane angles α (radians: rotating the neighbour's image by α matches
    the row's) and ``scores`` (2P, K) the hub-corrected scores. ``eigenvalues``: the six largest of
    the normalised class-averaging matrix (descending); ``null_edge`` the largest eigenvalue of the
    null model (module docstring, "Diagnostics"); ``frame_residual`` the mean squared distance of the
    eigenvector fit from the nearest exact frames (0 = exact); ``phase_flipped`` whether a CTF was
    applied; ``warnings`` one line per assumption violated but accepted; ``seconds``.
    """

    quaternions: Tensor
    shifts: Tensor
    landmarks: Tensor | None
    neighbors: Tensor
    angles: Tensor
    scores: Tensor
    eigenvalues: Tensor
    null_edge: float
    frame_residual: float
    phase_flipped: bool
    warnings: list[str]
    seconds: float

    @property
    def spectral_gap(self) -> float:
        """λ3 − λ4 of the normalised matrix."""
        return float(self.eigenvalues[2] - self.eigenvalues[3])

    @property
    def spread(self) -> float:
        """λ1 − λ3: how far the top three are from one degenerate group."""
        return float(self.eigenvalues[0] - self.eigenvalues[2])

    @property
    def determined(self) -> bool:
        """The data's verdict: λ3 above the null model's largest eigenvalue and λ3 − λ4 > λ1 − λ3."""
        return float(self.eigenvalues[2]) > self.null_edge and self.spectral_gap > self.spread

    def summary(self) -> str:
        """One line: the verdict and the numbers it rests on."""
        ev = self.eigenvalues.tolist()
        above = ">" if ev[2] > self.null_edge else "<="
        group = ">" if self.spectral_gap > self.spread else "<="
        verdict = "determined" if self.determined else "NOT determined"
        return (f"ab initio: {self.quaternions.shape[0]} orientations {verdict} in {self.seconds:.1f} s "
                f"(eigenvalues {ev[0]:.4f} {ev[1]:.4f} {ev[2]:.4f} {ev[3]:.4f}: λ3 {above} {self.null_edge:.4f}, "
                f"the largest with random in-plane angles on the same graph; gap λ3-λ4 {self.spectral_gap:.4f} "
                f"{group} spread λ1-λ3 {self.spread:.4f}; frame residual "
                f"{self.frame_residual:.3f}{'; phase-flipped' if self.phase_flipped else ''})")


def minimum_images(neighbors: int) -> int:
    """Fewest images for ``neighbors`` neighbours per image: the method takes an image's nearest
    neighbours for views from nearly its direction, and of P uniform views (2P nodes with the
    mirrors) the nearest ``neighbors`` lie within NEIGHBOUR_CAP_DEG only if neighbors <= P·(1 − cos cap)."""
    return math.ceil(neighbors / (1 - math.cos(math.radians(NEIGHBOUR_CAP_DEG))))


def check_counts(images: int, *, neighbors: int = 10, landmarks: int | None = 5000) -> None:
    """Refuse (ValueError, one line) fewer than :func:`minimum_images` ``images`` or ``landmarks``
    (None: no landmarks), as :func:`estimate_orientations` does before any work."""
    need = minimum_images(neighbors)
    if images < need:
        raise ValueError(f"need at least {need} images for {neighbors} neighbours per image; got {images}: with "
                         f"fewer, even uniformly spread views put an image's nearest neighbours more than "
                         f"{NEIGHBOUR_CAP_DEG:.0f}° away, and the method takes them for views from its own direction")
    if landmarks is not None and (isinstance(landmarks, bool) or int(landmarks) != landmarks or landmarks < need):
        raise ValueError(f"landmarks must be an integer >= {need} (minimum_images({neighbors})) or None; "
                         f"got {landmarks!r}")


def polar_spectra(images: Tensor, n_rings: int, n_angles: int, chunk: int = 512) -> Tensor:
    """Angular Fourier coefficients of the images' Fourier transforms on a polar grid.

    ``images`` (N, n, n) float32, centre at pixel n//2. Returns (n_angles, N, n_rings) complex64:
    entry [m, i, r] is the m-th angular DFT coefficient (divided by n_angles) of image i's 2D DFT
    sampled bilinearly at radius r + 1 Fourier pixels, times sqrt(r + 1) (the ring's share of the
    area). Rotating an image by α multiplies coefficient m by e^{−imα}.
    """
    N, n = images.shape[0], images.shape[-1]
    dev = images.device
    r = torch.arange(1, n_rings + 1, device=dev, dtype=torch.float32)
    theta = torch.arange(n_angles, device=dev, dtype=torch.float32) * (2 * math.pi / n_angles)
    to_grid = lambda k: (k + n // 2) * (2.0 / (n - 1)) - 1.0  # noqa: E731 - align_corners=True pixel coordinates
    grid = torch.stack([to_grid(r[:, None] * torch.cos(theta)), to_grid(r[:, None] * torch.sin(theta))], -1)
    out = torch.empty(n_angles, N, n_rings, dtype=torch.complex64, device=dev)
    for s in range(0, N, chunk):
        x = images[s : s + chunk]
        F = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1))), dim=(-2, -1))
        ri = torch.nn.functional.grid_sample(torch.stack([F.real, F.imag], 1), grid.expand(x.shape[0], -1, -1, -1),
                                             mode="bilinear", align_corners=True)
        pol = torch.complex(ri[:, 0], ri[:, 1]) * r.sqrt()[None, :, None]
        out[:, s : s + chunk] = (torch.fft.fft(pol, dim=-1) / n_angles).permute(2, 0, 1)
    return out


def _noise_covariance(n: int, n_rings: int, n_angles: int, sigma2: float, samples: int, seed: int, device) -> Tensor:
    """E[g gᴴ] (n_angles, n_rings, n_rings) of the ring vectors of white-noise images of variance
    ``sigma2``, by Monte Carlo (the polar resampling correlates the noise between rings)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    acc = torch.zeros(n_angles, n_rings, n_rings, dtype=torch.complex128, device=device)
    for s in range(0, samples, 1000):
        noise = torch.randn((min(1000, samples - s), n, n), generator=gen, device=device) * math.sqrt(sigma2)
        g = polar_spectra(noise, n_rings, n_angles).to(torch.complex128)
        acc += g.transpose(1, 2) @ g.conj()
    return acc / samples


def _wiener(G: Tensor, noise_cov: Tensor, chunk: int = 4096) -> Tensor:
    """Per angular frequency m, the Wiener estimate of the signal part of each ring vector G[m, i]."""
    n_angles, N, R = G.shape
    C = torch.zeros(n_angles, R, R, dtype=torch.complex128, device=G.device)
    for s in range(0, N, chunk):
        g = G[:, s : s + chunk].to(torch.complex128)
        C += g.transpose(1, 2) @ g.conj()  # Σ g gᴴ of the ring vectors g = G[m, i]
    C /= N
    eye = torch.eye(R, dtype=C.dtype, device=C.device)
    Nc = noise_cov + 1e-6 * noise_cov.diagonal(dim1=1, dim2=2).real.mean(-1)[:, None, None] * eye
    L = torch.linalg.cholesky(Nc)
    Li = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)
    lam, U = torch.linalg.eigh(Li @ C @ Li.mH)  # whitened covariance: 1 = noise only
    gain = ((lam - 1).clamp(min=0) / lam.clamp(min=1e-12)).to(U.dtype)
    Ft = (L @ (U * gain[:, None, :]) @ U.mH @ Li).transpose(1, 2).to(G.dtype)  # g -> F·g, for row vectors
    out = torch.empty_like(G)
    for s in range(0, N, chunk):
        out[:, s : s + chunk] = G[:, s : s + chunk] @ Ft
    return out


def rotational_neighbors(images, *, neighbors: int = 10, n_rings: int | None = None, n_angles: int = 128,
                         hub_k: int = 10, candidates: int = 64, noise_samples: int = 8000, reference=None,
                         seed: int = 0, device="cpu", progress: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest neighbours of every image and mirror image under in-plane rotation (steps 1–3 above).

    ``images`` (P, n, n) centred particle images (array, memmap or tensor). The candidates are the
    L ``reference`` images (distinct indices into ``images``; default all P) and their mirror
    images: reference node r < L is image ``reference[r]``, node L + r its mirror, and no node is its
    own neighbour. Returns ``(index, angle, score)``, each (2P, neighbors): rows are the P images
    and then their mirror images (row P + i: the mirror of image i), ``index`` holds reference
    nodes, ``angle[u, k]`` (radians) rotates node ``index[u, k]``'s image onto row u's, and
    ``score`` is the hub-corrected normalised cross-correlation, best first. ``n_rings`` defaults
    to n//2 − 1 (the inscribed circle); ``candidates`` best raw scores per row are kept for the hub
    correction; the noise covariance of the Wiener filter comes from ``noise_samples`` white-noise
    images.
    """
    x = as_images(images, device)
    P, n = x.shape[0], x.shape[-1]
    n_rings = n // 2 - 1 if n_rings is None else int(n_rings)
    if not 1 <= n_rings <= n // 2 - 1:
        raise ValueError(f"n_rings must be in [1, {n // 2 - 1}] for {n}² images; got {n_rings}")
    if n_angles < 8 or n_angles % 2:
        raise ValueError(f"n_angles must be an even number >= 8; got {n_angles}")
    for name, k in (("neighbors", neighbors), ("hub_k", hub_k), ("candidates", candidates),
                    ("noise_samples", noise_samples)):
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"{name} must be a positive integer; got {k!r}")
    if neighbors > candidates or hub_k > candidates:
        raise ValueError(f"neighbors ({neighbors}) and hub_k ({hub_k}) must not exceed candidates ({candidates})")
    ref = torch.arange(P) if reference is None else torch.as_tensor(reference).long().flatten().cpu()
    L = ref.numel()
    if L and (int(ref.min()) < 0 or int(ref.max()) >= P or ref.unique().numel() != L):
        raise ValueError(f"reference must hold distinct image indices in [0, {P})")
    if candidates > 2 * L - 2:
        raise ValueError(f"{L} reference images give {2 * L - 2} candidate neighbours per node; "
                         f"candidates={candidates}")

    G = polar_spectra(x, n_rings, n_angles)
    G = _wiener(G, _noise_covariance(n, n_rings, n_angles, _corner_variance(x), noise_samples, seed, x.device))
    G = G / (G.abs() ** 2).sum(dim=(0, 2)).sqrt().clamp(min=1e-30)[None, :, None]
    ref_d = ref.to(x.device)
    m_neg = (-torch.arange(n_angles, device=x.device)) % n_angles
    nodes = torch.cat([G[:, ref_d], G[m_neg][:, ref_d]], 1)  # mirror p(x, −y): coefficient m -> −m
    own = torch.full((P,), -1, dtype=torch.long, device=x.device)
    own[ref_d] = torch.arange(L, device=x.device)

    # Rows of the P images only: by symmetry, score(mirror i, mirror r; α) = score(i, r; −α) and
    # score(mirror i, r; α) = score(i, mirror r; −α).
    C = int(candidates)
    top_s = torch.empty(P, C, device=x.device)
    top_a = torch.empty(P, C, device=x.device)
    top_i = torch.empty(P, C, dtype=torch.long, device=x.device)
    rows = max(1, int(2**28 // (n_angles * 2 * L * 8)))  # ≈ 256 MB of correlations per chunk
    conj_t = nodes.conj().transpose(1, 2)
    chunks = range(0, P, rows)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="rotational alignment", unit="chunk")
    for s in chunks:
        e = min(P, s + rows)
        cc = torch.fft.ifft(G[:, s:e] @ conj_t, dim=0).real * n_angles  # (angle, rows, 2L)
        v, k = _parabolic_peak(cc)
        del cc
        top_s[s:e], top_i[s:e], top_a[s:e] = _row_candidates(v, k, own[s:e], L, C, 2 * math.pi / n_angles)
    score = torch.cat([top_s, top_s])
    index = torch.cat([top_i, (top_i + L) % (2 * L)])
    angle = torch.cat([top_a, -top_a])
    return _hub_corrected_best(score, index, angle, hub_k, torch.cat([ref_d, ref_d]), int(neighbors))


def _nearest_frames(Z: Tensor) -> Tensor:
    """Rows a + ib of Z (…, 3) complex -> nearest a' + ib' with a', b' orthonormal (polar factor)."""
    a, b = Z.real, Z.imag
    s11, s22, s12 = (a * a).sum(-1), (b * b).sum(-1), (a * b).sum(-1)
    det = (s11 * s22 - s12 * s12).clamp(min=1e-30).sqrt()  # √det S, S = MᵀM for M = [a b]
    t = (s11 + s22 + 2 * det).clamp(min=1e-30).sqrt()  # S^½ = (S + √det·I)/t
    # (S^½)⁻¹ = t/(√det·(s11 + s22 + 2√det)) · [[s22 + √det, −s12], [−s12, s11 + √det]]
    f = t / (det * t * t)
    a2 = f[..., None] * ((s22 + det)[..., None] * a - s12[..., None] * b)
    b2 = f[..., None] * (-s12[..., None] * a + (s11 + det)[..., None] * b)
    return torch.complex(a2, b2)


def _mirror_frames(Z: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest node frames (R, 2P, 3) in which node P + i is the mirror of image i, and the image frames.

    The mirror of image i has frame conj(z_i); in a fit z = V·X the nodes carry one global phase
    e^{iφ} besides, so z_plus ⊙ z_minus sums to e^{2iφ}·Σ|z|², which gives φ.
    """
    P = Z.shape[-2] // 2
    phase = torch.exp(0.5j * torch.angle((Z[..., :P, :] * Z[..., P:, :]).sum((-2, -1))))[..., None, None]
    w = _nearest_frames(Z[..., :P, :] / phase + (Z[..., P:, :] / phase).conj())
    return torch.cat([w * phase, w.conj() * phase], -2), w


def _class_matrix(index: Tensor, angle: Tensor, device) -> tuple[Tensor, Tensor]:
    """H (2P, 2P) complex128, H_uj = e^{iα_uj} summed over both ends' choices, and deg^{-1/2}."""
    n_nodes = index.shape[0]
    rows = torch.arange(n_nodes)[:, None].expand_as(index)
    H = torch.zeros(n_nodes, n_nodes, dtype=torch.complex128)
    H[rows.reshape(-1), index.reshape(-1)] = torch.polar(torch.ones(index.numel(), dtype=torch.float64),
                                                          angle.reshape(-1).double())
    H = (H + H.mH).to(device)  # weight 2 where both ends chose each other
    deg = H.abs().sum(1)
    if bool((deg == 0).any()):
        raise ValueError("a node has no neighbours")
    return H, deg.rsqrt()


def null_edge(index: Tensor, *, draws: int = 2, seed: int = 0, device="cpu") -> float:
    """Largest eigenvalue of the normalised matrix of the graph ``index`` (2P, K) with random in-plane angles.

    The null model of the diagnostics: the angles carry no orientation, but keep what measured
    angles obey, φ(v, u) = −φ(u, v) (both ends of a pair measure one angle) and φ(P + u, P + v) =
    −φ(u, v) (mirror images turn the other way), so that pairs chosen from both ends add up as
    they do in the data. φ = h(u, v) − h(v, u) − h(u', v') + h(v', u') (u' the mirror node) with
    h(u, v) = 2π·frac(a_u·b_v) for random a, b in [0, 1000). The largest over ``draws`` draws.
    """
    n_nodes = index.shape[0]
    gen = torch.Generator().manual_seed(seed + 1)
    u = torch.arange(n_nodes)[:, None].expand_as(index)
    mirror = lambda w: (w + n_nodes // 2) % n_nodes  # noqa: E731
    top = -math.inf
    for _ in range(draws):
        a, b = torch.rand(2, n_nodes, generator=gen, dtype=torch.float64) * 1000
        h = lambda i, j: torch.frac(a[i] * b[j])  # noqa: E731
        phi = 2 * math.pi * (h(u, index) - h(index, u) - h(mirror(u), mirror(index)) + h(mirror(index), mirror(u)))
        H, d = _class_matrix(index, phi, device)
        top = max(top, float(torch.linalg.eigvalsh(H * d[:, None] * d[None, :])[-1]))
    return top


def frames_from_neighbors(index: Tensor, angle: Tensor, *, restarts: int = 8, iterations: int = 200,
                          polish: int = 500, seed: int = 0, device="cpu") -> tuple[Tensor, Tensor, float]:
    """Frames z_i = a_i1 + i·a_i2 (first two rows of A_i) of the P images from the neighbour graph (steps 4–5).

    ``index``/``angle`` (2P, K) as from :func:`rotational_neighbors` (node P + i: the mirror image
    of image i); the linear algebra runs on ``device``. Returns ``(z, eigenvalues, residual)``:
    z (P, 3) complex128 on the CPU, with orthonormal real and imaginary parts; the six largest
    eigenvalues of the normalised matrix; and the mean squared distance of the eigenvector fit
    from the nearest exact frames.

    The fit alternates between X (least squares) and the nearest frames in which every image's
    mirror node is the mirror frame; without that constraint, frames that fit the eigenvectors as
    well but disagree between an image and its mirror (and give wrong orientations) are common.
    The best fit then seeds up to ``polish`` projected power iterations z <- nearest frames(H·z),
    which maximise the agreement Σ H_ij⟨z_j, z_i⟩ of the frames with the measured angles (on 5j0n
    at σ² = 16 they lower E_OR from 0.21 to 0.15 rad).
    """
    n_nodes = index.shape[0]
    for name, k, low in (("restarts", restarts, 1), ("iterations", iterations, 1), ("polish", polish, 0)):
        if isinstance(k, bool) or int(k) != k or k < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {k!r}")
    if index.shape != angle.shape or index.ndim != 2:
        raise ValueError(f"index and angle must both be (2P, K); got {tuple(index.shape)} and {tuple(angle.shape)}")
    if n_nodes < 8 or n_nodes % 2:
        raise ValueError(f"need an even number of at least 8 nodes (2P); got {n_nodes}")
    if int(index.min()) < 0 or int(index.max()) >= n_nodes:
        raise ValueError(f"neighbour indices must lie in [0, {n_nodes})")
    H, d = _class_matrix(index, angle, device)
    ev, vec = torch.linalg.eigh(H * d[:, None] * d[None, :])
    V = vec[:, -3:] * d[:, None]
    V = V / (V.abs() ** 2).sum(1).mean().sqrt()
    pinv = torch.linalg.pinv(V)
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(restarts, 3, 3, dtype=torch.complex128, generator=gen).to(device)
    for _ in range(iterations):  # alternating least squares, all restarts at once
        X = pinv @ _mirror_frames(V @ X)[0]
    Z = _mirror_frames(V @ X)[0]
    resid = ((V @ X - Z).abs() ** 2).sum(-1).mean(-1)
    best = int(resid.argmin())
    Z = Z[best]
    r, c = H.nonzero(as_tuple=True)
    h = H[r, c][:, None]
    for _ in range(polish):  # projected power iterations: maximise Σ H_ij ⟨z_j, z_i⟩ over frames
        Z_new = _mirror_frames(torch.zeros_like(Z).index_add_(0, r, h * Z[c]))[0]
        step = float((Z_new - Z).abs().max())
        Z = Z_new
        if step < 1e-7:
            break
    return _mirror_frames(Z)[1].cpu(), ev.flip(0)[:6].cpu(), float(resid[best])


def estimate_orientations(images, *, ctf=None, centre: bool = True, max_shift: float | None = None,
                          accept=(), neighbors: int = 10, n_rings: int | None = None, n_angles: int = 128,
                          hub_k: int = 10, candidates: int = 64, restarts: int = 8, landmarks: int | None = 5000,
                          comparison: str | None = None, diameter: float | None = None, seed: int = 0, device="cpu",
                          progress: bool = False) -> AbInitioResult:
    """Orientations of particle images ``images`` (P, n, n), from the images alone.

    Steps 0–6 of the module docstring. ``ctf``: None for CTF-free (or already phase-flipped)
    images, else ``ctf(indices, size)`` -> the real CTFs (B, size, size // 2 + 1) of the particles
    ``indices`` (B,) on the ``rfft2`` grid (as :func:`cryoorient.maps.refine.refine` takes it);
    the images are phase-flipped with them. ``centre``: centre the images first (step 0, shifts
    within ``max_shift`` pixels, default n/4). ``accept``: names of checks to proceed past when the
    data violate them (:data:`~.preprocess.ASSUMPTIONS`; one warning line each). With more than ``landmarks`` images
    (None: no limit), the graph is built on that many randomly chosen (``seed``) landmark images
    and their mirrors only, and every other image then takes the frame its neighbours among them
    imply, z_i = nearest frame of Σ_k e^{iα_ik} z_{j_k}: the all-pairs comparison costs P·landmarks
    instead of P², and the dense eigendecomposition stays at 2·landmarks. ``comparison``: None for the
    hand-made comparison of step 1, else the weights file of a learned one
    (:func:`~.learned_comparison.learned_rotational_neighbors`, which replaces step 1 and the hub
    correction; ``n_rings`` and ``n_angles`` are then unused), seeing a window fitted to a particle of
    ``diameter`` pixels (None: the whole image). Returns an
    :class:`AbInitioResult` (``neighbors``, ``angles``, ``scores`` index landmark nodes then); the
    orientations are defined up to a global rotation and the hand of the map.
    """
    t0 = time.perf_counter()
    P = len(images)
    check_counts(P, neighbors=neighbors, landmarks=landmarks)
    if comparison is not None:
        from .learned_comparison import learned_rotational_neighbors, load_comparison

        net = load_comparison(comparison, device)  # a file that is not one is refused before any work
    x, shifts, warnings = prepare_images(images, ctf, centre=centre, max_shift=max_shift, accept=accept,
                                         device=device)
    ref = None
    if landmarks is not None and P > landmarks:
        ref = torch.randperm(P, generator=torch.Generator().manual_seed(seed))[:landmarks].sort().values
    if comparison is None:
        index, angle, score = rotational_neighbors(x, neighbors=neighbors, n_rings=n_rings, n_angles=n_angles,
                                                   hub_k=hub_k, candidates=candidates, reference=ref, seed=seed,
                                                   device=device, progress=progress)
    else:
        index, angle, score = learned_rotational_neighbors(x, net, diameter=diameter, neighbors=neighbors,
                                                           hub_k=hub_k, candidates=candidates, reference=ref,
                                                           device=device, progress=progress)
    del x
    rows = torch.arange(2 * P) if ref is None else torch.cat([ref, ref + P])  # landmarks and mirrors, node order
    z, ev, resid = frames_from_neighbors(index[rows], angle[rows], restarts=restarts, seed=seed, device=device)
    edge = null_edge(index[rows], seed=seed, device=device)
    if ref is not None:
        node_frames = torch.cat([z, z.conj()])  # mirror node: the mirror frame
        z_ref = z
        z = _nearest_frames((torch.polar(torch.ones_like(angle[:P], dtype=torch.float64), angle[:P].double())[..., None]
                             * node_frames[index[:P]]).sum(1))  # z_i = e^{iα_ij} z_j
        z[ref] = z_ref
    a1, a2 = z.real, z.imag
    q = matrix_to_quat(torch.stack([a1, a2, torch.linalg.cross(a1, a2)], 1))
    return AbInitioResult(q, shifts, ref, index, angle, score, ev, edge, resid, ctf is not None, warnings,
                          time.perf_counter() - t0)
