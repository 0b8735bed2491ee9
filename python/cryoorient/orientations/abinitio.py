"""Ab-initio orientations from the images alone: no trained network, no reference map.

The Siamese network learns d_q for the proteins it was trained on; for a protein it never saw
its per-image features carry no usable orientation (bench/README.md, "Unseen protein"). This
module estimates orientations from the images themselves, after Singer, Zhao, Shkolnisky and
Hadani, "Viewing angle classification of cryo-electron microscopy images using eigenvectors",
SIAM J. Imaging Sci. 4 (2011):

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

Output: scalar-first quaternions of RELION's A (map → image frame, :mod:`cryoorient.project`),
defined up to a global rotation of the map and its hand, as projections allow: unlike
orientations recovered from distances (:mod:`cryoorient.frame`), they need no frame resolution
and reconstruct a map directly. The fit fixes the image frame up to a half turn R_z(π)·A, which
gives the projections of the point-inverted, i.e. mirror-image, map. They can be refined as they
are (:func:`cryoorient.refine.refine`).

Assumptions: centred particles (no shift search), no CTF (phase-flip CTF-affected images first),
white noise, the particle inside the inscribed circle (the corners measure the noise), viewing
directions that cover the sphere. The pair comparison costs O(P·L·n_rings·n_angles) and the
eigendecomposition is dense in 2L, for L = min(P, ``landmarks``) images on which the graph is
built; the other images are placed from their neighbours among those (bench/README.md has
timings and the accuracy against P).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..geometry import matrix_to_quat

__all__ = ["AbInitioResult", "polar_spectra", "rotational_neighbors", "frames_from_neighbors", "estimate_orientations"]


@dataclass
class AbInitioResult:
    """Orientations estimated by :func:`estimate_orientations`.

    ``quaternions`` (P, 4) float64, RELION A. ``landmarks`` the L images the graph was built on
    (None: all P). ``neighbors`` (2P, K): for image i (row i) and its mirror image (row P + i),
    the nearest landmark nodes (node r < L: landmark r, the image ``landmarks[r]`` or image r;
    node L + r: its mirror image); ``angles`` (2P, K) their in-plane angles α (radians: rotating the
    neighbour's image by α matches the row's) and ``scores`` (2P, K) the hub-corrected scores.
    ``eigenvalues``: the six largest of the normalised class-averaging matrix (descending; three
    close to 1 above a gap is a well-determined solution); ``frame_residual`` the mean squared
    distance of the eigenvector fit from the nearest exact frames (0 = exact); ``seconds``.
    """

    quaternions: Tensor
    landmarks: Tensor | None
    neighbors: Tensor
    angles: Tensor
    scores: Tensor
    eigenvalues: Tensor
    frame_residual: float
    seconds: float


def _as_images(images, device) -> Tensor:
    x = images if torch.is_tensor(images) else torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.ndim != 3 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"images must be (N, n, n); got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"images must be floating point; got {x.dtype}")
    x = x.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("images contain NaN or infinite values")
    return x


def _corner_variance(images: Tensor) -> float:
    """Pixel variance outside the inscribed circle: the noise, if the particle stays inside it
    (at least 10⁻⁶ of the whole images' variance, so that clean images keep a defined filter)."""
    n = images.shape[-1]
    c = torch.arange(n, device=images.device) - n // 2
    outside = (c[:, None] ** 2 + c[None, :] ** 2) > (n / 2) ** 2
    return max(float(images[:, outside].double().var()), 1e-6 * float(images.double().var()), 1e-30)


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


def _parabolic_peak(cc: Tensor) -> tuple[Tensor, Tensor]:
    """Peak value and (fractional) position along dim 0 of circular samples ``cc``."""
    n = cc.shape[0]
    v, k = cc.max(0)
    lo = cc.gather(0, ((k - 1) % n)[None])[0]
    hi = cc.gather(0, ((k + 1) % n)[None])[0]
    den = lo - 2 * v + hi
    delta = torch.where(den < 0, 0.5 * (lo - hi) / den.clamp(max=-1e-12), torch.zeros_like(v)).clamp(-0.5, 0.5)
    return v - 0.25 * (lo - hi) * delta, k.to(cc.dtype) + delta


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
    x = _as_images(images, device)
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
        mine = (own[s:e] >= 0).nonzero().flatten()
        v[mine, own[s:e][mine]] = -math.inf
        v[mine, own[s:e][mine] + L] = -math.inf
        top_s[s:e], top_i[s:e] = v.topk(C, dim=1)
        top_a[s:e] = k.gather(1, top_i[s:e]) * (2 * math.pi / n_angles)
    score = torch.cat([top_s, top_s])
    index = torch.cat([top_i, (top_i + L) % (2 * L)])
    angle = torch.cat([top_a, -top_a])
    hub = score[:, :hub_k].mean(1)
    hub_ref = torch.cat([hub[ref_d], hub[ref_d]])
    corrected = 2 * score - hub[:, None] - hub_ref[index]
    best, order = corrected.topk(int(neighbors), dim=1)
    wrap = lambda a: torch.remainder(a + math.pi, 2 * math.pi) - math.pi  # noqa: E731
    return index.gather(1, order).cpu(), wrap(angle.gather(1, order)).cpu(), best.cpu()


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
    rows = torch.arange(n_nodes)[:, None].expand_as(index)
    H = torch.zeros(n_nodes, n_nodes, dtype=torch.complex128)
    H[rows.reshape(-1), index.reshape(-1)] = torch.polar(torch.ones(index.numel(), dtype=torch.float64),
                                                          angle.reshape(-1).double())
    H = (H + H.mH).to(device)  # weight 2 where both ends chose each other
    deg = H.abs().sum(1)
    if bool((deg == 0).any()):
        raise ValueError("a node has no neighbours")
    d = deg.rsqrt()
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


def estimate_orientations(images, *, neighbors: int = 10, n_rings: int | None = None, n_angles: int = 128,
                          hub_k: int = 10, candidates: int = 64, restarts: int = 8, landmarks: int | None = 5000,
                          seed: int = 0, device="cpu", progress: bool = False) -> AbInitioResult:
    """Orientations of centred particle images ``images`` (P, n, n), from the images alone.

    Steps 1–6 of the module docstring. With more than ``landmarks`` images (None: no limit), the
    graph is built on that many randomly chosen (``seed``) landmark images and their mirrors
    only, and every other image then takes the frame its neighbours among them imply,
    z_i = nearest frame of Σ_k e^{iα_ik} z_{j_k}: the all-pairs comparison costs P·landmarks instead
    of P², and the dense eigendecomposition stays at 2·landmarks. Returns an :class:`AbInitioResult`
    (``neighbors``, ``angles``, ``scores`` index landmark nodes then); the orientations are
    defined up to a global rotation and the hand of the map.
    """
    t0 = time.perf_counter()
    P = len(images)
    if P < 20:
        raise ValueError(f"need at least 20 images; got {P}")
    if landmarks is not None and (isinstance(landmarks, bool) or int(landmarks) != landmarks or landmarks < 20):
        raise ValueError(f"landmarks must be an integer >= 20 or None; got {landmarks!r}")
    ref = None
    if landmarks is not None and P > landmarks:
        ref = torch.randperm(P, generator=torch.Generator().manual_seed(seed))[:landmarks].sort().values
    index, angle, score = rotational_neighbors(images, neighbors=neighbors, n_rings=n_rings, n_angles=n_angles,
                                               hub_k=hub_k, candidates=candidates, reference=ref, seed=seed,
                                               device=device, progress=progress)
    if ref is None:
        z, ev, resid = frames_from_neighbors(index, angle, restarts=restarts, seed=seed, device=device)
    else:
        rows = torch.cat([ref, ref + P])  # the landmarks and their mirrors, in reference-node order
        z_ref, ev, resid = frames_from_neighbors(index[rows], angle[rows], restarts=restarts, seed=seed,
                                                 device=device)
        node_frames = torch.cat([z_ref, z_ref.conj()])  # mirror node: the mirror frame
        z = _nearest_frames((torch.polar(torch.ones_like(angle[:P], dtype=torch.float64), angle[:P].double())[..., None]
                             * node_frames[index[:P]]).sum(1))  # z_i = e^{iα_ij} z_j
        z[ref] = z_ref
    a1, a2 = z.real, z.imag
    q = matrix_to_quat(torch.stack([a1, a2, torch.linalg.cross(a1, a2)], 1))
    return AbInitioResult(q, ref, index, angle, score, ev, resid, time.perf_counter() - t0)
