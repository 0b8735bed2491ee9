"""A learned comparison of projections (issue 20): equivariant polar features compared at their best rotation.

The hand-made comparison of ``orientations.abinitio`` correlates Wiener-filtered polar spectra at the
best in-plane rotation; this one correlates features that a network computes from the image, at
the best in-plane rotation, so that the network can learn what survives the noise in protein
projections of any protein (it starts as, and can stay, the image itself).

Conventions
-----------
* Input: particle images (P, n, n) phase-flipped by their CTF and centred
  (``orientations.preprocess.prepare_images``), cut to a central window of diameter/``fill`` pixels
  (the particle's diameter in pixels, :func:`particle_diameter`; ``fill`` the network's own, ``FILL``
  by default; no window when either is None), so that every particle fills the same fraction of what
  the network sees, then Fourier-cropped to ``crop``² and sampled on ``rings`` rings
  (radii 1 … ``rings`` pixels of the crop) × ``angles`` angles (counter-clockwise from +x, steps of
  2π/``angles``), standardised per image. The mirror image p(x, −y) is the polar image with the angle
  reversed.
* Features G(p) (K, ``angles``): convolutions circular in the angle, so rotating the image by
  2πk/``angles`` rolls G by k; scaled to unit norm. Score s(i, j) = max over k of ⟨G_i, roll(G_j, k)⟩,
  in [−1, 1], symmetric.
* Neighbours: rows, nodes, angles and hub-corrected scores as ``orientations.abinitio.rotational_neighbors``
  returns them (node j < P is image j, node P + j its mirror image; an image is never its own
  neighbour nor its mirror's), so that ``abinitio.estimate_orientations(comparison=weights)`` builds its
  graph from them.
* Training (:func:`train_comparison`): pairs of projections of one protein whose views are at most
  ``max_deg`` apart (the second turned in plane at random), each with its own CTF, shift N(0, 3 px)
  clipped at 10 px and white noise at an SNR uniform in ``snr`` dB (SNR: variance of the clean
  CTF-affected image over the box / noise variance); InfoNCE with temperature τ (learned): each
  image against the protein's other partners in the batch and their mirror images, and optionally
  (``near``) against near misses: views turned by ``near`` = (lo, hi) degrees from its own, which the
  batch's random views seldom are, so that the network learns to rank a view 5° away above one 20° away.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..geometry import quat_to_matrix, random_quaternions
from ..imaging.ctf import ctf_2d, phase_flip, random_defocus
from ..imaging.project import FourierProjector
from ..imaging.shift import shift_images
from ..learning.model import atomic_save
from .preprocess import _hub_corrected_best, _parabolic_peak, _row_candidates, as_images, centre_particles

__all__ = ["ComparisonNet", "polar_images", "mirror", "rotation_max", "learned_rotational_neighbors",
           "learned_neighbours", "load_comparison",
           "train_comparison", "particle_pixel_size", "particle_diameter", "window_size"]

#: Pixel sizes (Å) of the atomic models in training and in the benches, and the fraction of the box (or of
#: the network's window) the particle's diameter fills.
PIXEL_RANGE = (1.5, 2.0)
FILL = 0.75


def particle_pixel_size(xyz, weights, size: int) -> float:
    """The pixel size (Å) that makes the atoms' diameter ``FILL`` of a ``size`` box, clipped to ``PIXEL_RANGE``."""
    xyz, w = np.asarray(xyz, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    diameter = 2 * float(np.linalg.norm(xyz - (w[:, None] * xyz).sum(0) / w.sum(), axis=1).max())
    return float(np.clip(diameter / (FILL * size), *PIXEL_RANGE))


def particle_diameter(volume, voxel: float, mass: float = 0.99) -> float:
    """Diameter (Å) of a density map: twice the radius about its centre of mass that holds ``mass`` of its
    positive density. The same rule for rendered atomic models and for maps."""
    v = np.clip(np.asarray(volume, dtype=np.float64), 0, None)
    grid = np.stack(np.meshgrid(*[np.arange(k, dtype=np.float64) for k in v.shape], indexing="ij"), -1)
    centre = (grid * v[..., None]).sum((0, 1, 2)) / v.sum()
    r = np.linalg.norm(grid - centre, axis=-1).ravel()
    order = np.argsort(r)
    held = np.cumsum(v.ravel()[order])
    return 2 * float(r[order][np.searchsorted(held, mass * held[-1])]) * voxel


def window_size(diameter, n: int, crop: int, fill: float | None = FILL) -> int:
    """The central window (pixels) that a particle of ``diameter`` pixels fills to ``fill``, in [crop, n]; n if
    either is None."""
    return n if diameter is None or fill is None else int(min(n, max(crop, round(diameter / fill))))


def polar_images(x: Tensor, crop: int, rings: int, angles: int, diameter: float | None = None,
                 fill: float | None = FILL) -> Tensor:
    """Images (B, n, n) -> central window for a particle of ``diameter`` pixels (:func:`window_size`),
    Fourier-cropped to ``crop``², polar (B, 1, rings, angles), standardised per image."""
    if not (rings < crop // 2 and crop <= x.shape[-1]):
        raise ValueError(f"need rings < crop/2 and crop <= image size; got rings {rings}, crop {crop}, "
                         f"size {x.shape[-1]}")
    w = window_size(diameter, x.shape[-1], crop, fill)
    c = x.shape[-1] // 2 - w // 2
    f = torch.fft.fftshift(torch.fft.fft2(x[..., c:c + w, c:c + w]), dim=(-2, -1))
    s = w // 2 - crop // 2
    x = torch.fft.ifft2(torch.fft.ifftshift(f[..., s:s + crop, s:s + crop], dim=(-2, -1))).real
    r = torch.arange(1, rings + 1, dtype=x.dtype, device=x.device)
    th = torch.arange(angles, dtype=x.dtype, device=x.device) * (2 * math.pi / angles)
    grid = torch.stack([crop // 2 + r[:, None] * torch.cos(th), crop // 2 + r[:, None] * torch.sin(th)], -1)
    grid = (grid * (2.0 / (crop - 1)) - 1.0)[None].expand(x.shape[0], -1, -1, -1)
    p = F.grid_sample(x[:, None], grid, mode="bilinear", align_corners=True)
    return p / p.flatten(1).std(dim=1)[:, None, None, None].clamp(min=1e-6)


def mirror(p: Tensor) -> Tensor:
    """The polar image of the mirror image p(x, −y): angle θ_j -> θ_{−j}."""
    return torch.roll(p.flip(-1), 1, dims=-1)


class _Conv(nn.Module):
    def __init__(self, ci: int, co: int):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(ci, co, 3, padding=(1, 0)), nn.BatchNorm2d(co)

    def forward(self, x):
        return F.relu(self.norm(self.conv(F.pad(x, (1, 1, 0, 0), mode="circular"))))


class ComparisonNet(nn.Module):
    """G: polar images (B, 1, rings, angles) -> unit-norm features (B, (features + 1)·rings, angles).

    ``depth`` 3 × 3 convolutions of ``width`` channels (circular in the angle, zero-padded in the
    radius) and a 1 × 1 one to ``features`` channels, beside the input weighted per ring; each row's
    mean over the angle is removed in a learned proportion. Rotation-equivariant (module docstring).
    ``fill``: the fraction of its window a particle's diameter fills (None: the whole image, always).
    """

    def __init__(self, crop: int = 32, rings: int = 15, angles: int = 32, width: int = 16, depth: int = 5,
                 features: int = 8, fill: float | None = FILL):
        super().__init__()
        self.config = dict(crop=crop, rings=rings, angles=angles, width=width, depth=depth, features=features,
                           fill=fill)
        layers = [_Conv(1, width)] + [_Conv(width, width) for _ in range(depth - 1)]
        self.body = nn.Sequential(*layers, nn.Conv2d(width, features, 1))
        self.ring_weight = nn.Parameter(torch.ones(rings))
        self.dc = nn.Parameter(torch.zeros((features + 1) * rings))
        self.log_tau = nn.Parameter(torch.tensor(math.log(0.05)))  # InfoNCE temperature (training only)

    def forward(self, p: Tensor) -> Tensor:
        h = torch.cat([self.body(p), p * self.ring_weight[None, None, :, None]], 1).flatten(1, 2)
        h = h - torch.sigmoid(self.dc)[None, :, None] * h.mean(-1, keepdim=True)
        return h / h.flatten(1).norm(dim=1)[:, None, None].clamp(min=1e-6)

    def polar(self, images: Tensor, diameter: float | None = None) -> Tensor:
        """The network's input from centred, phase-flipped images (B, n, n) of particles of ``diameter`` px."""
        c = self.config
        return polar_images(images, c["crop"], c["rings"], c["angles"], diameter, c["fill"])


def rotation_max(fa: Tensor, fb: Tensor) -> Tensor:
    """Scores (A, B): max over k of ⟨fa_i, roll(fb_j, k)⟩ for features fa (A, K, n), fb (B, K, n)."""
    return _correlations(fa, fb).amax(-1)


def _correlations(fa: Tensor, fb: Tensor) -> Tensor:
    """(A, B, n): ⟨fa_i, roll(fb_j, k)⟩ for every roll k, through an FFT over the angle."""
    cross = torch.einsum("ikf,jkf->ijf", torch.fft.rfft(fa, dim=-1), torch.fft.rfft(fb, dim=-1).conj())
    return torch.fft.irfft(cross, n=fa.shape[-1], dim=-1)


def load_comparison(path, device="cpu") -> ComparisonNet:
    """The network saved by :func:`train_comparison` (``weights.pt``), in eval mode on ``device``."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip or weights-only refusals: all mean "not our file"
        raise ValueError(f"{path} is not a learned comparison's weights file ({type(err).__name__})") from err
    if not isinstance(saved, dict) or "config" not in saved or "state" not in saved:
        raise ValueError(f"{path} is not a learned comparison's weights file (no 'config' and 'state')")
    net = ComparisonNet(**saved["config"])
    net.load_state_dict(saved["state"])
    return net.to(device).eval()


def learned_rotational_neighbors(images, weights, *, diameter: float | None = None, neighbors: int = 10,
                                 hub_k: int = 10, candidates: int = 64, reference=None, device="cpu",
                                 progress: bool = False, chunk: int = 128) -> tuple[Tensor, Tensor, Tensor]:
    """``(index, angle, score)`` (2P, neighbors) as ``abinitio.rotational_neighbors`` returns them, from the learned
    comparison.

    ``images`` (P, n, n): centred particle images, phase-flipped by their CTFs
    (``preprocess.prepare_images``); ``weights``: a :func:`load_comparison` network or the path of one;
    ``diameter``: the particle's, in pixels (:func:`particle_diameter`; None: the whole image). Rows: the
    P images, then their mirror images; nodes: the ``reference`` images (default all), then their
    mirror images; no row's own image or mirror is its neighbour. ``angle`` (radians) rotates the node's
    image onto the row's (the best roll, refined by a parabola). Scores are hub-corrected as the
    hand-made ones: 2·s_uv − r_u − r_v over each row's ``candidates`` best raw scores, r the mean of a
    row's ``hub_k`` best (a node's r is its row's); ``hub_k`` 0 ranks the raw scores.
    """
    net = weights if isinstance(weights, ComparisonNet) else load_comparison(weights, device)
    x = as_images(images, device)
    P = x.shape[0]
    ref = torch.arange(P) if reference is None else torch.as_tensor(reference).long().flatten().cpu()
    L = ref.numel()
    if not 1 <= neighbors <= 2 * L - 2 or hub_k < 0:
        raise ValueError(f"need 1 <= neighbors <= {2 * L - 2} (twice the reference images less 2) and hub_k >= 0; "
                         f"got neighbors {neighbors}, hub_k {hub_k}")
    C = min(max(candidates, neighbors, hub_k), 2 * L - 2)
    own = torch.full((P,), -1, dtype=torch.long, device=x.device)
    own[ref.to(x.device)] = torch.arange(L, device=x.device)
    step = 2 * math.pi / net.config["angles"]
    with torch.no_grad():
        z, zm = [], []
        for s in range(0, P, 1024):
            p = net.polar(x[s:s + 1024], diameter)
            z.append(net(p))
            zm.append(net(mirror(p)))
        rows = torch.cat(z + zm)
        del z, zm
        nodes = torch.cat([rows[ref.to(x.device)], rows[ref.to(x.device) + P]])
        score = torch.empty(2 * P, C, device=x.device)
        angle = torch.empty(2 * P, C, device=x.device)
        index = torch.empty(2 * P, C, dtype=torch.long, device=x.device)
        starts = range(0, 2 * P, chunk)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="learned comparison", unit="chunk")
        for s in starts:
            e = min(2 * P, s + chunk)
            v, k = _parabolic_peak(_correlations(rows[s:e], nodes).permute(2, 0, 1))
            score[s:e], index[s:e], angle[s:e] = _row_candidates(
                v, k, own[torch.arange(s, e, device=x.device) % P], L, C, step)
        r = ref.to(x.device)
        return _hub_corrected_best(score, index, angle, hub_k, torch.cat([r, r + P]), neighbors)


def learned_neighbours(images, weights, neighbors: int = 10, device="cpu", diameter: float | None = None,
                       hub_k: int = 10, candidates: int = 64) -> Tensor:
    """Nodes (P, neighbors) of each image's best-scored partners among all images and mirror images, best
    first: the image rows of :func:`learned_rotational_neighbors` (the same arguments)."""
    return learned_rotational_neighbors(images, weights, diameter=diameter, neighbors=neighbors, hub_k=hub_k,
                                        candidates=candidates, device=device)[0][:len(images)]


def _small_rotations(n: int, max_deg: float, g: torch.Generator, min_deg: float = 0.0,
                     view: Tensor | None = None) -> Tensor:
    """Rotation matrices (n, 3, 3) float64 by angles uniform in [min_deg, max_deg] (Rodrigues) about uniform
    axes, or about axes perpendicular to the unit vectors ``view`` (n, 3), which they then turn by that angle."""
    axis = torch.randn(n, 3, generator=g, dtype=torch.float64)
    if view is not None:
        axis = torch.linalg.cross(view, axis)
    axis = F.normalize(axis, dim=1)
    ang = math.radians(min_deg) + torch.rand(n, generator=g, dtype=torch.float64) * math.radians(max_deg - min_deg)
    K = torch.zeros(n, 3, 3, dtype=torch.float64)
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    K = K - K.transpose(1, 2)
    return torch.eye(3, dtype=torch.float64) + ang.sin()[:, None, None] * K + (1 - ang.cos())[:, None, None] * K @ K


def _in_plane(psi: Tensor) -> Tensor:
    """Rotations (n, 3, 3) float64 about z by ``psi`` (rad)."""
    c, s = psi.cos(), psi.sin()
    M = torch.zeros(psi.shape[0], 3, 3, dtype=torch.float64)
    M[:, 0, 0], M[:, 0, 1], M[:, 1, 0], M[:, 1, 1], M[:, 2, 2] = c, -s, s, c, 1
    return M


def render_pairs(projector: FourierProjector, pixel_size: float, n: int, g: torch.Generator, snr=(-20.0, -12.0),
                 max_deg: float = 8.0, near: tuple[float, float] | None = None) -> list[Tensor]:
    """Two stacks (n, size, size) of centred, phase-flipped noisy images whose views are <= ``max_deg`` apart;
    with ``near`` = (lo, hi) degrees a third, each view turned by lo–hi degrees from the first stack's
    (near misses, negatives that random views seldom are)."""
    A0 = quat_to_matrix(random_quaternions(n, generator=g, dtype=torch.float64))
    A1 = _in_plane(torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi) @ A0 @ _small_rotations(
        n, max_deg, g).transpose(1, 2)
    x = _noisy_views(projector, torch.cat([A0, A1]), pixel_size, g, snr)
    if near is None:
        return [x[:n], x[n:]]
    A2 = _in_plane(torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi) @ A0 @ _small_rotations(
        n, near[1], g, near[0], A0[:, 2]).transpose(1, 2)
    return [x[:n], x[n:], _noisy_views(projector, A2, pixel_size, g, snr)]


def _noisy_views(projector: FourierProjector, A: Tensor, pixel_size: float, g: torch.Generator, snr) -> Tensor:
    """Images of orientations ``A`` (m, 3, 3) with CTFs, shifts and noise at one SNR drawn from ``snr``
    (module docstring), phase-flipped and centred."""
    dev, size, m = projector.device, projector.size, A.shape[0]
    t = torch.randn(m, 2, generator=g) * 3.0
    t = t * (10.0 / t.norm(dim=1, keepdim=True)).clamp(max=1.0)
    u, v, ang = random_defocus(m, 8000.0, 25000.0, 1000.0, generator=g)
    clean = projector.images(A.float().to(dev), t.to(dev), ctf_2d(projector.box, pixel_size, u, v, ang, device=dev))
    snr_db = snr[0] + (snr[1] - snr[0]) * float(torch.rand(1, generator=g, dtype=torch.float64))
    sigma = math.sqrt(float(clean.var(dim=(1, 2)).mean()) / 10 ** (snr_db / 10))
    x = clean + torch.randn(clean.shape, generator=g).to(dev) * sigma
    x = phase_flip(x, ctf_2d(size, pixel_size, u, v, ang, device=dev))
    return shift_images(x, -centre_particles(x).to(x.dtype))


def _loss(net: ComparisonNet, pa: Tensor, pb: Tensor, groups: int, pc: Tensor | None = None) -> Tensor:
    """InfoNCE of polar images pa, pb (n, 1, rings, angles), ``groups`` proteins of n/groups pairs each; each
    image of pa also against the near misses ``pc`` (n, …) of its protein."""
    z = net(torch.cat([pa, pb, mirror(pb)] + ([] if pc is None else [pc])))
    n, m = pa.shape[0], pa.shape[0] // groups
    tau, loss = net.log_tau.exp(), 0.0
    for s in range(0, n, m):
        a, b, bm = z[s:s + m], z[n + s:n + s + m], z[2 * n + s:2 * n + s + m]
        sab = rotation_max(a, b)
        tgt = torch.arange(m, device=z.device)
        others = [sab, rotation_max(a, bm)] + ([] if pc is None else [rotation_max(a, z[3 * n + s:3 * n + s + m])])
        loss = loss + F.cross_entropy(torch.cat(others, 1) / tau, tgt)
        loss = loss + F.cross_entropy(sab.T / tau, tgt)
    return loss / groups


def train_comparison(maps, out, *, steps: int, size: int, proteins_per_step: int = 6, pairs: int = 48,
                     lr: float = 2e-3, seed: int = 0, checkpoint_every: int = 100, resume: bool = False,
                     near: tuple[float, float] | None = None, device="cpu", net_options: dict | None = None,
                     progress: bool = False) -> Path:
    """Train a :class:`ComparisonNet` on ``maps`` [(volume (size³ array), pixel size Å, particle diameter Å)];
    returns ``out``/weights.pt.

    Each step renders ``pairs`` pairs of each of ``proteins_per_step`` maps drawn at random (module
    docstring; with ``near`` = (lo, hi) degrees also a near miss of each, :func:`render_pairs`); AdamW,
    learning rate ``lr`` with a 100-step warm-up and a cosine decay to 0 at
    ``steps``. ``out``/checkpoint.pt (network, optimiser, generator, step) is written atomically
    every ``checkpoint_every`` steps; with ``resume`` training continues from it, bit for bit on the CPU.
    """
    from tqdm import tqdm

    out, dev = Path(out), torch.device(device)
    near = None if near is None else (float(near[0]), float(near[1]))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = ComparisonNet(**(net_options or {})).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed + 1)
    step, ckpt = 0, out / "checkpoint.pt"
    if resume:
        if not ckpt.exists():
            raise ValueError(f"--resume: no checkpoint at {ckpt}")
        st = torch.load(ckpt, map_location="cpu", weights_only=False)  # the generator state stays on the CPU
        if st["config"] != net.config or st["steps"] != steps or st.get("near") != near:
            raise ValueError(f"{ckpt} was written with another network, number of steps or near misses: "
                             f"{st['config']}, {st['steps']} steps, near {st.get('near')}")
        net.load_state_dict(st["net"]); opt.load_state_dict(st["opt"]); g.set_state(st["generator"])
        step = st["step"]
    projectors = {}

    bar = tqdm(total=steps, initial=step, desc="train comparison", disable=not progress, unit="step")
    running = None
    while step < steps:
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        xs = [[], [], []]
        for m in torch.randperm(len(maps), generator=g)[:proteins_per_step].tolist():
            if m not in projectors:
                projectors[m] = FourierProjector(torch.as_tensor(np.asarray(maps[m][0], np.float32), device=dev),
                                                 size, 2.0, "linear")
            vol, px, diameter = maps[m]
            for x, stack in zip(xs, render_pairs(projectors[m], px, pairs, g, near=near)):
                x.append(net.polar(stack, diameter / px))
        net.train()
        loss = _loss(net, *(torch.cat(x) for x in xs[:2]), len(xs[0]), torch.cat(xs[2]) if near else None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}", chance=f"{math.log((3 if near else 2) * pairs) + math.log(pairs):.3f}")
        if step % checkpoint_every == 0 or step == steps:
            atomic_save({"net": net.state_dict(), "opt": opt.state_dict(), "generator": g.get_state(), "step": step,
                        "steps": steps, "near": near, "config": net.config}, ckpt)
    bar.close()
    weights = out / "weights.pt"
    atomic_save({"config": net.config, "state": {k: v.cpu() for k, v in net.state_dict().items()}}, weights)
    return weights
