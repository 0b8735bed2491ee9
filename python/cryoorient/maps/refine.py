"""Orientation refinement by projection matching, gold-standard.

Starting from approximate orientations (such as recovered ones, errors of 0.1–0.3 rad),
each round

1. reconstructs: the particles are split once into two random halves (or keep the half sets given, such as
   the global search's, so that their half maps stay independent of each other); each half is
   reconstructed on its own (:class:`cryoorient.reconstruct.FourierInserter`), the FSC
   between the two half maps gives the resolution at FSC = 0.143, and every comparison
   of the round is limited to Fourier radii up to that resolution (a hard low-pass of
   each half map, so the references carry no noise to fit);
2. searches locally: each particle is compared with projections of *its own* half map
   (with ``groups`` > 1: of its half map reconstructed without the particle's group, one of
   ``groups`` random groups of each half set; see below)
   at K orientations ``δq·q`` around its current ``q`` (``δq`` on a cubic lattice of
   rotation vectors filling a ball of radius r) and on a grid of in-plane shifts around
   its current shift. The score is the normalised cross-correlation (NCC) in Fourier
   space of the image with the CTF-modulated projection, each Fourier shell of which is
   weighted by sqrt(FSC) of the half maps (a half map's expected correlation with the
   truth, so that unreliable shells count for less). The best candidate is polished
   by a parabola through its neighbours along each lattice axis and each shift axis.
   Each particle's radius and shift step follow a trust region: they shrink after an
   optimum well inside the search grid and grow back (up to the start) after one on its
   outer shell, so particles far from the optimum keep wide steps while the others
   narrow down.

A half map holds each of its particles' noise at that particle's current orientation, found again
only there: at low SNR it holds the particle where it is. Measured on 10⁴ particles of 5h73 at
−20 dB (128², CTF, shifts; one H200): started at the true orientations, 5 rounds end 0.019 rad off
with the whole half maps and 0.084 rad off with 8 groups left out in turn, their maps at 4.38 Å
(soft) against 4.06 Å from the true orientations; started 0.055 rad off (the global search's correct
particles), 0.058 and 0.089 rad. The particles' own data place them to about 0.08 rad there, and a
refinement from the truth with the whole half maps (the default) stays near the truth because it
started there, not because the images fix it.

The rounds stop at the first one whose orientations give half maps of worse FSC-0.143 resolution than the
orientations it started from, which are then kept (``keep_best``; the half maps of each round's orientations are its
successor's references, so the rule costs no reconstruction). Rounds can make the orientations worse: with the whole
half maps each particle is drawn towards its own noise. On 2,000 images of 64² at −12 dB (CTF, shifts; CPU; phantom,
1o1z, 4p5j, from the global search) every round after the first moved correct particles off, and the half maps'
resolution fell with their E_OR (1o1z, after rounds 1–5: 5.22, 5.27, 5.67, 5.68, 5.69 Å; 0.0786, 0.0815, 0.0839,
0.0856, 0.0870 rad). The first round is judged only where ``half`` is given (half sets whose orientations were found
apart, as the global search's and RELION's are): a new random split of orientations found against one reference for
both shares that reference's noise, whose FSC the first round lowers while E_OR falls too (on those three cases: the
phantom 0.0675 → 0.0625 rad, 5.347 → 5.350 Å). From the global search's half sets the first round made both worse
(2,000 × 64², −12 dB: 1aki 0.1358 → 0.1410 rad, 5.58 → 5.72 Å; 3o5r 0.1136 → 0.1191 rad, 5.72 → 5.78 Å).

The final half maps are those of the orientations kept, reconstructed again (``soft=True``, the default)
by soft assignment, as RELION's marginalisation: each particle is scored on a finer local grid of orientations and
shifts around its final estimate against its own half map and inserted at its most
probable candidates with weights ∝ exp(log-likelihood / T) (:meth:`_Search.log_prob`:
the likelihood of Gaussian noise whose power is estimated from the best match's
residual; T calibrated against the particle's own noise in its half map, see
:func:`_soft_assignment`). The best-match orientations stay the returned estimate.
At low SNR this is what brings the resolution close to that of the true orientations:
hard assignments scatter by the posterior width, and inserting the posterior instead
averages that scatter out. :class:`RefineResult` holds the final half maps, their FSC
and resolution, and the full map low-pass filtered at that resolution.

Conventions (those of :mod:`cryoorient.project` and :mod:`cryoorient.reconstruct`):
images (N, n, n) are [y, x] with their centre at pixel n//2; an orientation is the
scalar-first quaternion of RELION's matrix A, image(x, y) = ∫ V(Aᵀ(x, y, z)) dz, so
candidates ``δq·q`` rotate in the particle frame; a shift t = (x, y) in pixels moves the
projection by +t in the image (:mod:`cryoorient.shift`), hence RELION's
``rlnOriginX/YAngst`` = −t · pixel size. Angles are in radians, resolutions in Å.

Handedness: the maps are reconstructed from the given orientations, so orientations of
the mirror image of the particle refine just as well and give the mirror-image map.
Orientations A of a map V and ``M A M`` (M = diag(1, 1, −1)) of its mirror V(x, y, −z)
give identical images (:func:`mirror_orientations`, :func:`cryoorient.maps.mirror`).
Given a ``reference`` map, the result records which hand the refined map has
(:attr:`RefineResult.handedness_flipped`): the hand that correlates better with the reference,
as they are when both are in the orientations' frame (the map the orientations were estimated
against, the truth of a simulation started from it), or after a global rotational alignment of
both hands (:func:`cryoorient.maps.align_map`) with ``align_reference=True`` (any frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .fsc import FSCResult, fsc
from ..geometry import quat_distance, quat_multiply, quat_normalize
from .transforms import align_map, correlation, mirror
from ..imaging.noise import ncc_log_likelihood
from ..imaging.project import FourierProjector
from .half_maps import HalfMaps, load_ctf, load_images
from .reconstruct import FourierInserter

__all__ = ["refine", "RefineResult", "RoundStats", "mirror_orientations"]

#: ``ctf(indices, size)`` -> real CTFs (B, size, size // 2 + 1), rfft2 grid of edge size at the particles' pixel size
CTFSource = Callable[[Tensor, int], Tensor]

# The final soft assignment: a lattice of SOFT_LATTICE steps of SOFT_ANGLE / band rad (band: the
# Fourier radius of the scores, pixels; a step moves the band edge by SOFT_ANGLE pixels) around each
# particle's orientation, shifts ±SOFT_SHIFT_GRID steps of SOFT_SHIFT_STEP pixels, the SOFT_TOP most
# probable candidates kept; temperature calibrated on SOFT_CALIBRATE particles per half set.
SOFT_LATTICE, SOFT_ANGLE, SOFT_SHIFT_GRID, SOFT_SHIFT_STEP, SOFT_TOP, SOFT_CALIBRATE = 2, 0.75, 1, 0.5, 32, 256


@dataclass
class RoundStats:
    """One refinement round: the search it made and the half maps it searched against."""

    radius: float  # mean radius of the particles' orientation search balls, rad
    shift_step: float  # mean spacing of the particles' shift grids, pixels
    resolution: float  # FSC-0.143 resolution of the half maps searched against, Å
    resolution_after: float  # that of the half maps of the orientations the round found, Å
    band: float  # Fourier radius the scores used, in pixels of the box (1/(n·pixel size))
    mean_score: float  # mean NCC of the chosen candidates
    mean_rotation: float  # mean rotation applied to the orientations, rad
    mean_shift: float  # mean length of the shift changes, pixels
    at_boundary: float  # fraction of particles whose best orientation lay in the outer shell of its ball


@dataclass
class RefineResult:
    """Refined orientations and shifts, the final maps and the history of the rounds."""

    quaternions: Tensor  # (N, 4) float64, RELION A, w >= 0
    shifts: Tensor  # (N, 2) float64, pixels (x, y); RELION origin = -shifts · pixel_size
    scores: Tensor  # (N,) NCC of each particle in the round kept (NaN where none was kept)
    half: Tensor  # (N,) int64, the gold-standard half set (0 or 1) of each particle
    half_maps: Tensor  # (2, n, n, n) float32, unfiltered, from the final orientations (soft: their posteriors)
    map: Tensor  # (n, n, n) float32, all particles, low-pass filtered at ``resolution``
    fsc: FSCResult  # FSC between the final half maps
    resolution: float  # Å, at FSC = 0.143
    pixel_size: float  # Å
    rounds: list[RoundStats] = field(default_factory=list)
    kept: int = 0  # the round whose orientations were kept (0: the given ones)
    stopped: Optional[str] = None  # why the rounds stopped early, from the half maps' resolution
    handedness_flipped: Optional[bool] = None  # True: ``map`` is the mirror image of the reference
    reference_fsc: Optional[float] = None  # mean FSC (shells to ``resolution``) of the map, in the reference's hand, vs it
    hand_correlations: Optional[tuple[float, float]] = None  # (same, mirror) hands: correlation with the reference
    soft_scale: Optional[float] = None  # inverse temperature of the final soft assignment (1: as derived); None: hard

    @property
    def origins_angst(self) -> Tensor:
        """RELION ``rlnOriginX/YAngst`` (N, 2): ``-shifts · pixel_size``."""
        return -self.shifts * self.pixel_size


def mirror_orientations(q: Tensor) -> Tensor:
    """Orientations of the mirrored map V(x, y, -z) giving the same images: A -> M A M, M = diag(1, 1, -1).

    For quaternions (..., 4) that is (w, x, y, z) -> (w, -x, -y, z).
    """
    return q * q.new_tensor([1.0, -1.0, -1.0, 1.0])


def _rotvec_to_quat(v: Tensor) -> Tensor:
    """Unit quaternions (..., 4) of rotation vectors v (..., 3) (axis · angle, radians)."""
    a = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    small = a < 1e-4
    s = torch.where(small, 0.5 - a * a / 48.0, torch.sin(a / 2) / torch.where(small, 1.0, a))
    return torch.cat([torch.cos(a / 2), v * s], dim=-1)


def _grid(m: int, dim: int, ball: bool) -> tuple[Tensor, Tensor]:
    """Integer points (K, dim) of a ball (or cube) of radius m, origin first, and the index of
    each point's neighbours (K, dim, 2) at -1/+1 along every axis (-1 where outside)."""
    r = torch.arange(-m, m + 1)
    pts = torch.cartesian_prod(*([r] * dim)).reshape(-1, dim)
    if ball:
        pts = pts[(pts * pts).sum(1) <= m * m]
    pts = pts[torch.argsort((pts * pts).sum(1), stable=True)]
    where = {tuple(p): i for i, p in enumerate(pts.tolist())}
    unit = torch.eye(dim, dtype=pts.dtype)
    nb = [[[where.get(tuple(p), -1) for p in (pts + d * unit[a]).tolist()] for d in (-1, 1)] for a in range(dim)]
    return pts.to(torch.float64), torch.tensor(nb, dtype=torch.long).permute(2, 0, 1)


def _parabola_peak(fm: Tensor, f0: Tensor, fp: Tensor, ok: Tensor) -> Tensor:
    """Offset in (-1/2, 1/2) of the vertex of the parabola through (-1, fm), (0, f0), (1, fp); 0 where not ``ok``."""
    den = fm - 2 * f0 + fp
    ok = ok & (den < 0)
    off = 0.5 * (fm - fp) / torch.where(ok, den, -1.0)
    return torch.where(ok, off.clamp(-0.5, 0.5), 0.0)


class _Band:
    """The rfft2 pixels of an n-box with 0 < |k| <= band, their correlation weights, and the
    reference filter sqrt(FSC) per shell (``fsc_curve`` of shells 1, 2, ...): a half map's
    expected correlation with the truth, so unreliable shells count for less."""

    def __init__(self, n: int, band: float, fsc_curve: np.ndarray, device):
        ky = torch.fft.fftfreq(n, d=1.0 / n, device=device)
        kx = torch.fft.rfftfreq(n, d=1.0 / n, device=device)
        KY, KX = torch.meshgrid(ky, kx, indexing="ij")
        r = torch.sqrt(KX * KX + KY * KY).flatten()
        self.pix = torch.nonzero((r > 0) & (r <= band)).squeeze(1)
        kx, ky = KX.flatten()[self.pix], KY.flatten()[self.pix]
        # each kx > 0 pixel stands for itself and its Hermitian partner
        self.weight = torch.where(kx > 0, 2.0, 1.0)
        self.freq = torch.stack([kx, ky], 1) / n  # cycles per pixel (x, y)
        self.centre = self.ramp(torch.full((1, 2), -float(n // 2), device=device))[0]
        shell = torch.round(r[self.pix]).long().clamp(1, len(fsc_curve)) - 1
        self.filter = torch.as_tensor(np.sqrt(np.clip(fsc_curve, 0.0, 1.0)), dtype=torch.float32, device=device)[shell]

    def ramp(self, t: Tensor) -> Tensor:
        """Phase factors (B, P) moving image content by t (B, 2) pixels."""
        angle = -2 * math.pi * (t.float() @ self.freq.T)
        return torch.polar(torch.ones_like(angle), angle)

    def spectra(self, images: Tensor) -> Tensor:
        """Band of the images' transforms (B, P), phase origin moved to the centre pixel n//2."""
        return torch.fft.rfft2(images).flatten(1)[:, self.pix] * self.centre


class _Search:
    """Candidate orientations and shifts around each particle's current estimate, scored against one half map.

    Particle b is searched on a lattice of rotation vectors of spacing ``radius_b / lattice``
    (ball of radius ``radius_b``) and on a shift grid of spacing ``step_b``.
    """

    def __init__(self, band: _Band, lattice: int, shift_grid: int, device):
        self.band, self.lattice = band, lattice
        pts, self.rot_nb = _grid(lattice, 3, ball=True)
        self.rot_pts = pts.to(device)
        offs, self.shift_nb = _grid(shift_grid, 2, ball=False)
        self.offsets = offs.to(device)
        self.rot_nb, self.shift_nb = self.rot_nb.to(device), self.shift_nb.to(device)
        self.phase = 2 * math.pi * (band.freq @ self.offsets.float().T)  # (P, S) per pixel of step

    def candidates(self, q: Tensor, radius: Tensor) -> Tensor:
        """Candidate orientations (B, K, 4) about q (B, 4): δq · q, δq the rotations of the lattice points."""
        h = (radius / self.lattice)[:, None, None]
        return quat_multiply(_rotvec_to_quat(self.rot_pts[None] * h), q[:, None])

    def score(self, proj: FourierProjector, images: Tensor, ctf: Optional[Tensor], q: Tensor, t: Tensor,
              radius: Tensor, step: Tensor) -> Tensor:
        """For one batch: the NCC (B, K, S) of every candidate orientation (K, :meth:`candidates`) and shift (S)."""
        b = self.band
        B, K = images.shape[0], self.rot_pts.shape[0]
        x = b.spectra(images)
        xnorm = torch.sqrt((b.weight * (x.real.square() + x.imag.square())).sum(1, keepdim=True))
        g = x.conj() * b.ramp(t) * (b.weight / xnorm.clamp_min(1e-30))
        cand = self.candidates(q, radius)
        spec = proj.slices(cand.reshape(-1, 4).float()).flatten(1)[:, b.pix].view(B, K, -1)
        filt = b.filter if ctf is None else b.filter * ctf.flatten(1)[:, b.pix][:, None]
        spec = spec * filt
        pnorm = torch.sqrt((b.weight * (spec.real.square() + spec.imag.square())).sum(2, keepdim=True))
        prod = g[:, None] * spec / pnorm.clamp_min(1e-30)
        # Re(Q · e^{-iφ}) = Re Q cos φ + Im Q sin φ, φ = 2π step (offset · k)
        phase = self.phase[None] * step[:, None, None].float()
        return torch.bmm(torch.cat([prod.real, prod.imag], 2), torch.cat([torch.cos(phase), torch.sin(phase)], 1))

    def run(self, proj: FourierProjector, images: Tensor, ctf: Optional[Tensor], q: Tensor, t: Tensor,
            radius: Tensor, step: Tensor):
        """For one batch: polished orientations (B, 4), shifts (B, 2), their NCC (B,), and whether the best
        orientation lay within ``lattice - 1/2`` lattice steps of the centre and the best shift off the
        edge of its grid (B,) (if not, the particle may need a search as wide again)."""
        scores = self.score(proj, images, ctf, q, t, radius, step)
        B, S = images.shape[0], self.offsets.shape[0]
        h = (radius / self.lattice)[:, None, None]
        best = scores.flatten(1).argmax(1)
        j, s = best // S, best % S
        rows = torch.arange(B, device=scores.device)
        f0 = scores[rows, j, s]
        # rotation: parabola along each lattice axis through the best-shift profile
        prof = scores.amax(2)
        nb = self.rot_nb[j]  # (B, 3, 2)
        fn = prof.gather(1, nb.clamp_min(0).flatten(1)).view(B, 3, 2)
        d_rot = _parabola_peak(fn[..., 0], f0[:, None], fn[..., 1], (nb >= 0).all(-1))
        v = (self.rot_pts[j] + d_rot.double()) * h[:, 0]
        q_new = quat_normalize(quat_multiply(_rotvec_to_quat(v), q))
        # shift: parabola along x and y at the best orientation
        nbs = self.shift_nb[s]  # (B, 2, 2)
        fs = scores[rows, j].gather(1, nbs.clamp_min(0).flatten(1)).view(B, 2, 2)
        shift_inside = (nbs >= 0).all(-1)
        d_s = _parabola_peak(fs[..., 0], f0[:, None], fs[..., 1], shift_inside)
        t_new = t + (self.offsets[s] + d_s.double()) * step[:, None]
        rot_inside = self.rot_pts[j].square().sum(1) < (self.lattice - 0.5) ** 2
        return q_new, t_new, f0, rot_inside, shift_inside.all(1)

    def log_prob(self, scores: Tensor, scale: float = 1.0) -> Tensor:
        """Log-probabilities (B, C), up to a constant, of each particle's candidates of NCC ``scores`` (B, ...):
        :func:`cryoorient.imaging.noise.ncc_log_likelihood` over the band's Fourier coefficients, times
        ``scale`` (an inverse temperature)."""
        return ncc_log_likelihood(scores.flatten(1).double(), 1, float(self.band.weight.sum()), scale)

    def posterior(self, ncc: Tensor, which: Tensor, q: Tensor, t: Tensor, radius: Tensor, step: Tensor,
                  scale: float) -> tuple[Tensor, Tensor, Tensor]:
        """Soft assignment of one batch over each particle's most probable candidates, those of highest NCC
        ``ncc`` (B, C) (the log-probability rises with the NCC), candidates ``which`` (B, C) (index k·S + s
        of :meth:`score`'s (K, S) about q, t): orientations (B, C, 4), shifts (B, C, 2) and probabilities
        (B, C) summing to 1 over them."""
        S = self.offsets.shape[0]
        w = torch.softmax(self.log_prob(ncc, scale), 1)
        j, s = which // S, which % S
        rows = torch.arange(len(q), device=q.device)[:, None]
        cand = self.candidates(q, radius)[rows, j]
        return cand, t[:, None] + self.offsets[s] * step[:, None, None], w


def _positive_w(q: Tensor) -> Tensor:
    return torch.where(q[..., :1] < 0, -q, q)


def _as_float64(x, name: str, shape: tuple[int, int]) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().to("cpu", torch.float64)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}; got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _matching_scale(own: Tensor, other: Tensor, search: _Search) -> float:
    """The inverse temperature at which the posteriors from scores against the particles' own half
    map (``own``, (B, K, S)) are on average as sharp (mean probability of the best candidate) as
    those against the other half map (``other``) at the derived temperature; at most 1 (never
    sharper than derived)."""
    target = float(torch.softmax(search.log_prob(other), 1).amax(1).mean())
    lo, hi = math.log(1e-3), math.log(1.0)
    for _ in range(40):  # sharpness grows with the inverse temperature: bisect its logarithm
        mid = 0.5 * (lo + hi)
        sharp = float(torch.softmax(search.log_prob(own, math.exp(mid)), 1).amax(1).mean())
        lo, hi = (mid, hi) if sharp < target else (lo, mid)
    return math.exp(0.5 * (lo + hi))


def _soft_assignment(recon: HalfMaps, ins: list[FourierInserter], q: Tensor, t: Tensor, maps: Tensor,
                     curve: FSCResult, band: float, interpolation: str, batch_size: int,
                     seed: int) -> tuple[Tensor, Tensor, Tensor, float]:
    """Candidates (N, SOFT_TOP, 4), shifts (N, SOFT_TOP, 2) and probabilities (N, SOFT_TOP) of every
    particle on the soft-assignment grid around (q, t) (``SOFT_*``, Fourier radius ``band``
    pixels), scored against its group's reference (:meth:`HalfMaps.references` of the half maps
    ``maps``, their inserters ``ins`` and FSC ``curve``), and the inverse temperature used.

    The temperature is calibrated on up to ``SOFT_CALIBRATE`` particles of each half, scored also against
    the other half map, which holds none of their noise (:func:`_matching_scale`; one number, the maps
    stay independent): a reference that holds a particle's own noise at its current orientation (one
    group, the whole half map) makes the likelihood of :meth:`_Search.log_prob` too sharp there.

    Between the scoring and the posteriors, only each particle's ``SOFT_TOP`` candidates of highest NCC
    (the most probable at any temperature) are held, NCC and index (12 bytes each), not its whole grid."""
    device = recon.device
    search = _Search(_Band(recon.n, band, curve.fsc, device), SOFT_LATTICE, SOFT_SHIFT_GRID, device)
    N, K, S = q.shape[0], search.rot_pts.shape[0], search.offsets.shape[0]
    top = min(SOFT_TOP, K * S)
    radius = torch.full((N,), SOFT_LATTICE * SOFT_ANGLE / band, dtype=torch.float64)
    step = torch.full((N,), float(SOFT_SHIFT_STEP), dtype=torch.float64)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    calibrate = torch.zeros(N, dtype=torch.bool)
    for h in (0, 1):
        members = torch.nonzero(recon.half == h).squeeze(1)
        calibrate[members[torch.randperm(len(members), generator=gen)[:SOFT_CALIBRATE]]] = True
    slot = torch.cumsum(calibrate, 0) - 1  # a calibration particle's row in ``own`` and ``other``

    def scores_of(idx, proj):
        img = load_images(recon.images, idx, device)
        c = None if recon.ctf is None else load_ctf(recon.ctf, idx, recon.n, device)
        return search.score(proj, img, c, *(x[idx].to(device) for x in (q, t, radius, step)))

    # each particle's top candidates (those of highest NCC), its full scores for the calibration particles
    ncc, which = torch.empty(N, top, device=device), torch.empty(N, top, dtype=torch.long, device=device)
    own = torch.empty(int(calibrate.sum()), K, S, device=device)
    other = torch.empty_like(own)
    for h, members, reference in recon.references(ins, maps, q, t):
        proj = FourierProjector(reference, pad=recon.pad, interpolation=interpolation)
        for idx in members.split(batch_size):
            scores = scores_of(idx, proj)
            ncc[idx.to(device)], which[idx.to(device)] = scores.flatten(1).topk(top, dim=1)
            cal = calibrate[idx]
            own[slot[idx[cal]].to(device)] = scores[cal.to(device)]
        del proj
    for h in (0, 1):
        proj = FourierProjector(maps[1 - h], pad=recon.pad, interpolation=interpolation)
        for idx in torch.nonzero(calibrate & (recon.half == h)).squeeze(1).split(batch_size):
            other[slot[idx].to(device)] = scores_of(idx, proj)
    scale = _matching_scale(own, other, search)
    qc = torch.zeros(N, top, 4, dtype=torch.float64)
    tc = torch.zeros(N, top, 2, dtype=torch.float64)
    wc = torch.zeros(N, top, dtype=torch.float64)
    for idx in torch.arange(N).split(batch_size):
        i = idx.to(device)
        a, b, w = search.posterior(ncc[i], which[i], *(x[idx].to(device) for x in (q, t, radius, step)), scale)
        qc[idx], tc[idx], wc[idx] = a.cpu(), b.cpu(), w.cpu()
    return qc, tc, wc, scale


def refine(
    images, q_init, *, shifts=None, ctf: Optional[CTFSource] = None, rounds: int = 5, passes: int = 2,
    pixel_size: float = 1.0, radius: float = 0.25, shrink: float = 0.5, lattice: int = 2, shift_step: float = 1.0,
    shift_grid: int = 2, max_shift: Optional[float] = None, min_band: float = 4.0, reference=None,
    align_reference: bool = False, pad: int = 2, weight_floor: float = 0.01, interpolation: str = "linear",
    soft: bool = True, groups: int = 1, keep_best: bool = True, half=None, batch_size: Optional[int] = None,
    seed: int = 0, device=None, progress: bool = True,
) -> RefineResult:
    """Refine orientations (and in-plane shifts) of ``images`` by gold-standard projection matching.

    ``images``: (N, n, n) particle images (tensor, numpy array or memmap; read in batches).
    ``q_init``: (N, 4) starting orientations (scalar-first quaternions of RELION's A).
    ``shifts``: (N, 2) starting shifts in pixels (default 0). ``ctf``: a :data:`CTFSource`,
    or None for CTF-free images. ``pixel_size`` (Å) only scales the reported resolutions.

    Search: particle b has its own radius r_b (from ``radius``, rad) and shift step s_b
    (from ``shift_step``, pixels). A pass scores the orientations ``δq·q_b``, ``δq = exp(v)``
    with v on the cubic lattice of spacing ``r_b / lattice`` in the ball of radius r_b
    (``lattice`` = 2: 33 candidates), each at the (2·shift_grid + 1)² shifts ``t_b + s_b·(i, j)``
    (shifts kept within ``±max_shift`` pixels, default n/4), and polishes the best by
    parabolas. Trust region: r_b shrinks by ``shrink`` after an optimum within
    ``lattice - 1/2`` steps of the centre and grows by ``1/shrink`` (up to ``radius``) after
    one further out; s_b likewise with the edge of the shift grid. Each round makes
    ``passes`` passes against its half maps. Scores use Fourier radii up to the half maps'
    FSC-0.143 resolution, but at least ``min_band`` pixels.

    ``soft``: reconstruct the final half maps by soft assignment (module docstring); with
    ``rounds=0`` the maps are always those of the given orientations. ``groups``: with more than one,
    each half set is split into that many random groups, and a group's particles are compared with
    their half map reconstructed without them, so that no particle meets its own noise (module
    docstring; default 1: the whole half map).
    ``keep_best``: after each round, the half maps of the orientations it found are reconstructed (the next
    round's references); from the second round on (from the first where ``half`` is given), at the first round
    whose half maps reach a worse FSC-0.143 resolution than those of its start, the rounds stop and that start
    is kept (:attr:`RefineResult.stopped` says so, with both resolutions; module docstring). ``rounds`` is then
    the most that run. Without it, all ``rounds`` run and the last orientations are kept.
    ``reference``: optional (n, n, n) map; the result then says whether the refined map is
    its mirror image (module docstring). The reference is taken to be in the orientations'
    frame up to a mirror, or in any frame with ``align_reference``.
    ``pad``: Fourier oversampling of reconstruction and projection; ``weight_floor``: the
    least (CTF²-)weight a Fourier voxel of a reconstruction is divided by (see
    :class:`~cryoorient.reconstruct.FourierInserter`; one image's weight is about 1, and a
    floor near that attenuates sparsely sampled voxels differently for each orientation,
    which biases the search); ``interpolation`` of the projector (``"linear"`` or ``"cubic"``);
    ``batch_size``: particles per search batch (default: by a memory budget, larger on CUDA);
    ``half``: (N,) each particle's half set, 0 or 1 (default: a random split from ``seed``); ``seed``: the
    half-set and group split; ``device``: where to compute (default CUDA if available).
    """
    shape = tuple(images.shape) if hasattr(images, "shape") else None
    if shape is None or len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"images must be a stack of square images (N, n, n); got shape {shape}")
    N, n = shape[0], shape[1]
    if N < 4:
        raise ValueError(f"refinement needs at least 4 images (two per half set); got {N}")
    if n < 8:
        raise ValueError(f"images must be at least 8 pixels wide; got {n}")
    q = _as_float64(q_init, "q_init", (N, 4))
    if bool((torch.linalg.vector_norm(q, dim=1) == 0).any()):
        raise ValueError("q_init contains zero quaternions")
    q = _positive_w(quat_normalize(q))
    t = torch.zeros(N, 2, dtype=torch.float64) if shifts is None else _as_float64(shifts, "shifts", (N, 2)).clone()
    max_shift = _check_options(rounds, passes, pixel_size, radius, shift_step, weight_floor, soft, shrink, lattice,
                               shift_grid, groups, n / 4 if max_shift is None else float(max_shift))
    if not isinstance(keep_best, bool):
        raise TypeError(f"keep_best must be True or False; got {keep_best!r}")
    ref = None
    if reference is not None:
        ref = torch.as_tensor(np.asarray(reference) if not torch.is_tensor(reference) else reference).float().cpu()
        if tuple(ref.shape) != (n, n, n):
            raise ValueError(f"reference must be a ({n}, {n}, {n}) map to match the images; got {tuple(ref.shape)}")
        if not bool(torch.isfinite(ref).all()):
            raise ValueError("reference map contains NaN or infinite values")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    judge_first = half is not None  # half sets found apart: the first round is judged too (module docstring)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(int(seed)))
    half = (perm.argsort() >= N // 2).long() if half is None else torch.as_tensor(half).long().cpu()
    if tuple(half.shape) != (N,) or not bool(((half == 0) | (half == 1)).all()) or int(half.sum()) in (0, N):
        raise ValueError(f"half must give each of the {N} particles a half set, 0 or 1, with both sets non-empty")
    group = torch.empty(N, dtype=torch.long)
    group[perm] = torch.arange(N) % int(groups)
    if batch_size is None:
        budget = 1 << (26 if device.type == "cuda" else 21)  # candidate Fourier pixels held at once
        batch_size = max(1, budget // ((2 * lattice + 1) ** 3 * n * (n // 2 + 1)))
    recon = HalfMaps(images, half, group, ctf, n, pad, weight_floor, pixel_size, min_band, device, max(batch_size, 64))
    est = _Estimates(q, t, radius, shift_step, shrink, max_shift)
    history: list[RoundStats] = []
    halves = recon.half_maps(q, t)
    stopped = None
    bar = tqdm(range(int(rounds)), desc="refine", unit="round", disable=not progress)
    for k in bar:
        judged = keep_best and (k > 0 or judge_first)  # its start kept until its half maps are known no worse
        before = (halves, q.clone(), t.clone(), est.scores.clone()) if judged else None
        stats = _search_round(est, recon, halves, lattice, shift_grid, passes, batch_size, interpolation)
        history.append(stats)
        halves = None  # one set of half maps at a time where none is kept
        halves = recon.half_maps(est.q, est.t)
        stats.resolution_after = halves[3]
        bar.set_postfix(res=f"{stats.resolution_after:.2f}", ncc=f"{stats.mean_score:.4f}",
                        moved=f"{stats.mean_rotation:.4f}")
        if judged and stats.resolution_after > stats.resolution:
            halves, q, t, est.scores = before
            stopped = (f"round {k + 1}'s orientations gave half maps at {stats.resolution_after:.2f} Å, worse than "
                       f"{stats.resolution:.2f} Å before it: stopped, "
                       f"the orientations {f'of round {k}' if k else 'given'} kept")
            break
    ins, maps, curve, res, band = halves
    soft_scale = None
    if soft and rounds > 0:
        qc, tc, wc, soft_scale = _soft_assignment(recon, ins, q, t, maps, curve, band, interpolation, batch_size, seed)
        ins, maps, curve, res, band = recon.half_maps(qc, tc, wc)
    final = recon.full_map(ins, band)
    result = RefineResult(
        quaternions=q, shifts=t, scores=est.scores, half=half, half_maps=maps.cpu(), map=final, fsc=curve,
        resolution=res, pixel_size=float(pixel_size), rounds=history, soft_scale=soft_scale,
        kept=len(history) - (stopped is not None), stopped=stopped,
    )
    if ref is not None:
        hand = _handedness(final, ref, curve, res, pixel_size, align_reference)
        result.handedness_flipped, result.reference_fsc, result.hand_correlations = hand
    return result


class _Estimates:
    """Each particle's orientation q (N, 4), shift t (N, 2, pixels), NCC score (N,) and trust region
    (search radius r (N, rad), shift step (N, pixels); see :func:`refine`), updated in place."""

    def __init__(self, q: Tensor, t: Tensor, radius: float, shift_step: float, shrink: float, max_shift: float):
        self.q, self.t = q, t
        self.scores, self.r, self.step = (torch.full((q.shape[0],), float(v), dtype=torch.float64)
                                          for v in (math.nan, radius, shift_step))
        self.radius, self.shift_step, self.shrink, self.max_shift = radius, shift_step, shrink, max_shift

    def update(self, idx: Tensor, q: Tensor, t: Tensor, score: Tensor, rot_in: Tensor, shift_in: Tensor) -> Tensor:
        """Take the result of :meth:`_Search.run` for particles ``idx``; returns ``rot_in`` on the CPU."""
        rot_in, shift_in = rot_in.cpu(), shift_in.cpu()
        self.q[idx] = _positive_w(q).cpu()
        self.t[idx] = t.cpu().clamp(-self.max_shift, self.max_shift)
        self.scores[idx] = score.double().cpu()
        self.r[idx] = torch.where(rot_in, self.r[idx] * self.shrink, (self.r[idx] / self.shrink).clamp(max=self.radius))
        self.step[idx] = torch.where(shift_in, self.step[idx] * self.shrink,
                                     (self.step[idx] / self.shrink).clamp(max=self.shift_step))
        return rot_in


def _search_round(est: _Estimates, recon: HalfMaps, halves: tuple, lattice: int, shift_grid: int, passes: int,
                  batch_size: int, interpolation: str) -> RoundStats:
    """One round: ``passes`` local searches of every particle against its group's reference in the half
    maps ``halves`` of the current estimates (:meth:`HalfMaps.half_maps`, :meth:`HalfMaps.references`).
    ``est`` is updated in place; the round's ``resolution_after`` is NaN until the caller measures it."""
    ins, maps, curve, res, band = halves
    device = recon.device
    search = _Search(_Band(recon.n, band, curve.fsc, device), lattice, shift_grid, device)
    q_old, t_old, r_old, step_old = est.q.clone(), est.t.clone(), est.r.clone(), est.step.clone()
    inside = torch.zeros(len(q_old), dtype=torch.bool)
    for _, members, reference in recon.references(ins, maps, q_old, t_old):
        proj = FourierProjector(reference, pad=recon.pad, interpolation=interpolation)
        for idx in members.split(batch_size):
            img = load_images(recon.images, idx, device)
            c = None if recon.ctf is None else load_ctf(recon.ctf, idx, recon.n, device)
            for _ in range(passes):
                found = search.run(proj, img, c, *(x[idx].to(device) for x in (est.q, est.t, est.r, est.step)))
                inside[idx] = est.update(idx, *found)
        del proj
    return RoundStats(
        radius=float(r_old.mean()), shift_step=float(step_old.mean()), resolution=res, resolution_after=math.nan,
        band=band,
        mean_score=float(est.scores.mean()), mean_rotation=float(quat_distance(est.q, q_old).mean()),
        mean_shift=float(torch.linalg.vector_norm(est.t - t_old, dim=1).mean()),
        at_boundary=float(1 - inside.double().mean()),
    )


def _check_options(rounds, passes, pixel_size, radius, shift_step, weight_floor, soft, shrink, lattice,
                   shift_grid, groups, max_shift: float) -> float:
    """Raise on an option of :func:`refine` out of its range; returns ``max_shift``."""
    if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 0:
        raise ValueError(f"rounds must be a non-negative integer; got {rounds!r}")
    if isinstance(passes, bool) or int(passes) != passes or passes < 1:
        raise ValueError(f"passes must be a positive integer; got {passes!r}")
    for name, value in (("pixel_size", pixel_size), ("radius", radius), ("shift_step", shift_step),
                        ("weight_floor", weight_floor)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number; got {value!r}")
    if not isinstance(soft, bool):
        raise TypeError(f"soft must be True or False; got {soft!r}")
    if not 0 < shrink <= 1:
        raise ValueError(f"shrink must be in (0, 1]; got {shrink!r}")
    if int(lattice) != lattice or lattice < 1 or int(shift_grid) != shift_grid or shift_grid < 0:
        raise ValueError(f"lattice must be an integer >= 1 and shift_grid >= 0; got {lattice!r}, {shift_grid!r}")
    if isinstance(groups, bool) or int(groups) != groups or groups < 1:
        raise ValueError(f"groups must be a positive integer; got {groups!r}")
    if not (math.isfinite(max_shift) and max_shift >= 0):
        raise ValueError(f"max_shift must be a non-negative number of pixels; got {max_shift!r}")
    return max_shift


def _handedness(final: Tensor, ref: Tensor, curve: FSCResult, res: float, pixel_size: float,
                align_reference: bool) -> tuple[bool, float, tuple[float, float]]:
    """Whether ``final`` is the mirror image of ``ref`` (its mirror correlates better), its mean FSC with
    ``ref`` in the reference's hand over the shells up to ``res`` (Å; at least 3 shells), and the
    correlations (same, mirror) of both hands, after :func:`align_map` with ``align_reference``."""
    if align_reference:
        a = align_map(final, ref, voxel_size=pixel_size, resolution=res)
        same, mirrored, aligned = a.correlation_same, a.correlation_mirror, a.aligned
    else:
        same, mirrored = correlation(final, ref), correlation(mirror(final), ref)
        aligned = mirror(final) if mirrored > same else final
    keep = max(3, int(np.searchsorted(curve.frequency, 1.0 / res, side="right")))
    return mirrored > same, float(np.mean(fsc(aligned, ref, pixel_size).fsc[:keep])), (same, mirrored)
