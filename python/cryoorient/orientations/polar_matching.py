"""Projection matching of particles against a map on polar spectra: the comparison behind
:mod:`cryoorient.orientations.global_search`.

All comparisons are at a Fourier band of K pixels (radius in units of 1/(n · pixel size)), on the
particles Fourier-cropped to a working box m (:class:`ParticleStack`). :class:`PolarSearch` scores a
particle against the projections of a map along J directions (:func:`direction_grid`), each at every
in-plane rotation of a polar grid of L ≈ 2πK angles (:func:`angle_count`) and at S shift offsets: polar spectra
(:func:`cryoorient.orientations.abinitio.polar_spectra`) of the CTF-multiplied image and of the
projections, one matrix product per angular frequency and an inverse FFT over the angle give all
S × J × L candidates at once. The score is the normalised cross-correlation (NCC) in the band of the
image with the CTF-modulated projection (the CTF's ring mean in the projection's norm: exact without
astigmatism); :meth:`PolarSearch.log_posterior` turns it into a log-likelihood under Gaussian noise,
plus a Gaussian prior on the shifts, :meth:`PolarSearch.sample` draws from it and :meth:`PolarSearch.peaks`
keeps the best angle of each offset and direction, among which the best candidate is; given chosen
directions per particle (a coarse-to-fine search's fine stage, :func:`direction_neighbours`) it scores only
those. :func:`best_candidates` gives each particle its best orientation and shift offset, in full or coarse to fine
(:func:`coarse_stage`); :func:`probed_candidates` goes coarse to fine only where a probe of particles finds the two
agree. :func:`shift_peak` searches a particle's shift against a reference; :func:`mean_projection` is a map's mean
projection.

Conventions: images (P, n, n) [y, x], centre at pixel n//2; quaternions scalar-first of RELION's
A = Rz(psi)·Ry(tilt)·Rz(rot) (map → image frame), w >= 0; shifts t (P, 2) in pixels (x, y) of the
images, the particle moved by +t (:mod:`cryoorient.imaging.shift`). ``ctf(indices, size)`` -> real
CTFs (B, size, size // 2 + 1) on the ``rfft2`` grid of an image of edge ``size``, or None.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ..geometry import euler_to_quat, quat_multiply, quat_to_matrix
from ..imaging.noise import ncc_likelihood_scale, ncc_log_likelihood
from ..imaging.project import FourierProjector
from ..imaging.shift import phase_ramp
from ..maps.half_maps import load_ctf, load_images
from ..ops import angle_sums
from ..ops.angle_sums import angle_weights
from .abinitio import polar_spectra

__all__ = ["COARSE_AGREEMENT", "CPU_CHUNK", "FFT_PRIME", "PROBE", "SAMPLE_FLOOR", "ParticleStack", "PolarSearch",
           "angle_count", "band_weights", "batch_budget", "best_candidates", "clip_shifts", "coarse_stage",
           "crop_spectrum", "direction_grid", "direction_neighbours", "mean_projection", "probed_candidates",
           "ring_mean", "rings", "shift_peak", "working_box"]

#: Log-posterior depth below a particle's best candidate at which :meth:`PolarSearch.sample` floors the weights:
#: the candidates below it draw at most C·e^−60 < 10⁻¹⁷ of the time (C < 10⁹ candidates), and no weight is a
#: subnormal float (on the CPU, exp and sums of those are several times slower).
SAMPLE_FLOOR = 60.0
#: Particles searched both coarse to fine and in full by :func:`probed_candidates`, and the fraction of them on
#: which the two must agree for the others to be searched coarse to fine.
PROBE, COARSE_AGREEMENT = 200, 0.99

#: Elements (float32, 1 MB) of a chunk of correlations on the CPU (:meth:`PolarSearch.peaks`): its inverse FFT and
#: maximum over the angles then run in the cache (bench/README: band 28 of a 64-pixel box, 9 offsets, 2 cores:
#: 37 → 31 ms a particle, the same peaks bit for bit).
CPU_CHUNK = 1 << 18
#: Largest prime factor of an angle count L (:func:`angle_count`). On an H100 the chain's iterations at L = 296 =
#: 8·37 (bands 46–47) took 1.3–1.4× the time per correlation of those at 280, 288 and 304; lengths with prime
#: factors up to 29 (184, 232) were not slower than their neighbours (bench/README, session 33).
FFT_PRIME = 31


def direction_grid(count: int) -> Tensor:
    """``count`` quaternions (count, 4) float64 of A = Ry(tilt)·Rz(rot) (psi 0) whose viewing directions
    (the third row of A) form a Fibonacci sphere: nearly uniform, spacing ≈ sqrt(4π / count) rad."""
    i = torch.arange(count, dtype=torch.float64) + 0.5
    tilt = torch.rad2deg(torch.acos(1 - 2 * i / count))
    rot = torch.rad2deg(torch.remainder(i * math.pi * (3 - math.sqrt(5)), 2 * math.pi))
    return euler_to_quat(rot, tilt, torch.zeros_like(rot))


def direction_neighbours(fine: Tensor, coarse: Tensor) -> Tensor:
    """For each direction of the ``coarse`` grid (Jc, 4), the directions of the ``fine`` grid (J, 4) whose viewing
    directions lie within the coarse grid's spacing sqrt(4π / Jc) of its own: indices (Jc, k) into ``fine``,
    a row with fewer than k padded with its first."""
    vf, vc = quat_to_matrix(fine)[:, 2], quat_to_matrix(coarse)[:, 2]
    near = (vc @ vf.T) >= math.cos(math.sqrt(4 * math.pi / len(coarse)))  # (Jc, J)
    count = near.sum(1, keepdim=True)
    order = near.float().topk(int(count.max()), dim=1).indices  # the near ones first
    return torch.where(torch.arange(order.shape[1]) < count, order, order[:, :1])


def angle_count(K: int) -> int:
    """In-plane angles L of the polar grid at band K: the smallest multiple of 8 at least 2πK (the outer ring's
    circumference in pixels) with no prime factor above :data:`FFT_PRIME`."""
    L = 8 * math.ceil(2 * math.pi * K / 8)
    while _largest_prime_factor(L) > FFT_PRIME:
        L += 8
    return L


def _largest_prime_factor(n: int) -> int:
    """The largest prime factor of n >= 2."""
    largest, p = 1, 2
    while p * p <= n:
        while n % p == 0:
            largest, n = p, n // p
        p += 1
    return max(largest, n)


def working_box(K: int, m_max: int) -> int:
    """The working box for band K: a multiple of 8 at least 2K + 8, at most ``m_max``."""
    return min(m_max, 8 * math.ceil((2 * K + 8) / 8))


def crop_spectrum(spec: Tensor, m: int) -> Tensor:
    """The frequencies of an m-box (B, m, m//2 + 1) from ``rfft2`` spectra (B, s, s//2 + 1), s >= m even."""
    h = m // 2
    return torch.cat([spec[:, :h, : h + 1], spec[:, spec.shape[1] - h :, : h + 1]], 1)


class ParticleStack:
    """The particles' spectra Fourier-cropped once to the largest working box, the centre pixel n//2
    at the origin, on ``device``; their CTF; the random half sets."""

    def __init__(self, images, ctf, m_max: int, device, batch: int, seed: int):
        self.P, self.n, self.m_max, self.ctf, self.device, self.batch = len(images), images.shape[-1], m_max, ctf, device, batch
        self.spec = torch.empty(self.P, m_max, m_max // 2 + 1, dtype=torch.complex64, device=device)
        centre = torch.full((1, 2), -float(self.n // 2), device=device)
        for idx in torch.arange(self.P).split(batch):
            x = load_images(images, idx, device)
            self.spec[idx.to(device)] = crop_spectrum(torch.fft.rfft2(x) * phase_ramp(centre, self.n), m_max)
        self.half = torch.randperm(self.P, generator=torch.Generator().manual_seed(seed)) % 2

    def subset(self, idx: Tensor) -> "ParticleStack":
        """The particles ``idx`` as a stack of their own (spectra copied, CTF and half sets carried over)."""
        sub = object.__new__(ParticleStack)
        sub.P, sub.n, sub.m_max, sub.device, sub.batch = len(idx), self.n, self.m_max, self.device, self.batch
        sub.spec, sub.half = self.spec[idx.to(self.device)], self.half[idx]
        sub.ctf = None if self.ctf is None else (lambda i, size: self.ctf(idx[i.cpu()], size))
        return sub

    def ctf_at(self, idx: Tensor, m: int, pad: int = 1) -> Tensor | None:
        """CTFs (B, pad·m, pad·m//2 + 1) of particles ``idx`` at the frequencies of the pad·m-box of the crop."""
        if self.ctf is None:
            return None
        return crop_spectrum(load_ctf(self.ctf, idx, pad * self.n, self.device), pad * m)

    def images(self, idx: Tensor, m: int, t: Tensor, ctf: Tensor | None = None) -> Tensor:
        """Particles ``idx`` (B, m, m) in the m-box, moved by −t (n-pixels) to its centre m//2, times ``ctf``."""
        s = crop_spectrum(self.spec[idx.to(self.device)], m)
        s = s * phase_ramp(m // 2 - t.to(self.device, torch.float32) * (m / self.n), m)
        return torch.fft.irfft2(s if ctf is None else s * ctf, s=(m, m))


def rings(m: int, K: int, device) -> tuple[Tensor, Tensor]:
    """Ring (0..K-1 for radii 1..K, K outside) of every rfft2 pixel of the m-box, and pixels per ring (K,)."""
    ky = torch.fft.fftfreq(m, d=1.0 / m, device=device)
    kx = torch.fft.rfftfreq(m, d=1.0 / m, device=device)
    r = torch.round(torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)).long().flatten()
    ring = torch.where((r >= 1) & (r <= K), r - 1, K)
    return ring, torch.bincount(ring, minlength=K + 1)[:K].clamp_min(1)


def band_weights(m: int, K: int, device) -> tuple[Tensor, Tensor, Tensor]:
    """The band K on the rfft2 grid of an m-box: its mask (m, m//2 + 1), each column's share of the full
    grid (m//2 + 1,) (2, but 1 for the first and last), and the ring counts of :func:`rings`."""
    ring, count = rings(m, K, device)
    herm = torch.full((m // 2 + 1,), 2.0, device=device)
    herm[0] = herm[-1] = 1.0
    return (ring < K).view(m, m // 2 + 1), herm, count


def ring_mean(x: Tensor, ring: Tensor, count: Tensor) -> Tensor:
    """Means (B, K) over each ring of real values (B, m, m//2 + 1) on the rfft2 grid."""
    K = count.numel()
    out = x.new_zeros(x.shape[0], K + 1).index_add_(1, ring, x.flatten(1))
    return out[:, :K] / count


def batch_budget(device: torch.device) -> int:
    """Elements of a search batch's correlations (L·B·S·J, :class:`PolarSearch`): 2^23 on the CPU; on a GPU the
    largest power of two up to 2^30 with 32 bytes free per element (the batch's arrays peak near 16). One H100,
    band 48: a pass takes 0.66 ms per particle at 2^30 (30 particles a batch), 1.11 ms at 2^28, launch-bound below."""
    if device.type != "cuda":
        return 1 << 23
    free = torch.cuda.mem_get_info(device)[0]
    return 1 << max(20, min(30, (free // 32).bit_length() - 1))


class PolarSearch:
    """The reference's polar spectra at J directions (K rings, L angles) and the comparison of particles with them."""

    def __init__(self, volume: Tensor, K: int, opts: dict, shifts: int = 1):
        m, device = volume.shape[0], volume.device
        self.K, self.L = K, angle_count(K)
        self.dirs = direction_grid(math.ceil(4 * math.pi * (K / opts["sampling"]) ** 2))
        self.proj = FourierProjector(volume, pad=2.0, interpolation="linear")
        chunk = max(1, opts["budget"] // (m * m * 8))
        pol = torch.cat([polar_spectra(self.proj.images(d.to(device).float()), K, self.L)
                         for d in self.dirs.split(chunk)], 1)  # (L, J, K)
        self.power = (pol.abs() ** 2).sum(0)  # (J, K): each ring's share of a projection's squared norm
        self.refs = pol[: self.L // 2 + 1].conj().transpose(1, 2).contiguous()  # (M, K, J), m >= 0 suffices
        self.ring, self.count = rings(m, K, device)
        self.rows = max(1, opts["budget"] // (self.L * len(self.dirs) * shifts))  # particles per batch

    def correlations(self, stack: ParticleStack, idx: Tensor, m: int, t: Tensor, offsets: Tensor | None = None,
                     dirs: Tensor | None = None):
        """NCC (L, B, S, J) of particles ``idx`` at shifts t + offsets[s] (S offsets, n-pixels; default one,
        zero) with the projection along direction j rotated by angle l; the candidate's index is
        (s·J + j)·L + l. ``dirs`` (B, D): only these directions of each particle (NCC (L, B, S, D))."""
        if dirs is not None:
            X, den = self._spectra(stack, idx, m, t, offsets, dirs)
            return self._restricted(X, dirs).div_(den)
        num, den = self.numerators(stack, idx, m, t, offsets)
        return num.div_(den[..., None]).permute(3, 0, 1, 2)

    def numerators(self, stack: ParticleStack, idx: Tensor, m: int, t: Tensor, offsets: Tensor | None = None):
        """The NCC's numerators (B, S, J, L), the angles last, and norms (B, S, J) of :meth:`correlations` (NCC =
        numerator / norm)."""
        X, den = self._spectra(stack, idx, m, t, offsets, None)
        num = torch.fft.irfft((X @ self.refs).permute(1, 2, 0), n=self.L, dim=-1, norm="forward")  # (B·S, J, L)
        return num.view(len(idx), -1, len(self.dirs), self.L), den.view(len(idx), -1, len(self.dirs))

    def _spectra(self, stack: ParticleStack, idx: Tensor, m: int, t: Tensor, offsets: Tensor | None,
                 dirs: Tensor | None):
        """The particles' side of the comparison at shifts t + offsets: the polar spectra (M, B·S, K), m >= 0, of
        the CTF-multiplied images and the NCC's norms, which do not depend on the angle: (B·S, J), or (B, S, D)
        for directions ``dirs`` (B, D) only."""
        S = 1 if offsets is None else len(offsets)
        rep = idx.repeat_interleave(S)
        t = t.to(stack.device).float().repeat_interleave(S, 0) + (0 if offsets is None else offsets.repeat(len(idx), 1))
        c = stack.ctf_at(idx, m)
        c = None if c is None else c.repeat_interleave(S, 0)
        x = stack.images(rep, m, t)
        X = polar_spectra(x, self.K, self.L)
        xnorm = (X.abs() ** 2).sum((0, 2))
        if c is not None:
            X = polar_spectra(stack.images(rep, m, t, c), self.K, self.L)
        c2 = torch.ones(len(rep), self.K, device=x.device) if c is None else ring_mean(c * c, self.ring, self.count)
        if dirs is None:
            return X[: self.L // 2 + 1], torch.sqrt((c2 @ self.power.T) * xnorm[:, None]).clamp_min(1e-30)
        B, power = len(idx), self.power[dirs.to(x.device)]  # (B, D, K)
        den = torch.sqrt(c2.view(B, S, 1, -1).mul(power[:, None]).sum(-1) * xnorm.view(B, S, 1)).clamp_min(1e-30)
        return X[: self.L // 2 + 1], den

    def _chunks(self, X: Tensor):
        """The numerators (L, R, Jc) of the NCC of spectra X (M, R, K) with the directions, chunk by chunk of Jc
        directions (for :meth:`peaks`): all at once on a GPU; on the CPU :data:`CPU_CHUNK` elements, so that the
        inverse FFT and the maximum over the angles find them in the cache."""
        size = len(self.dirs) if X.is_cuda else max(1, CPU_CHUNK // (self.L * X.shape[1]))
        for refs in self.refs.split(size, 2):
            yield torch.fft.irfft(X @ refs, n=self.L, dim=0, norm="forward")

    def _restricted(self, X: Tensor, dirs: Tensor) -> Tensor:
        """The numerators (L, B, S, D) of the NCC of spectra X (M, B·S, K) with directions ``dirs`` (B, D) only."""
        B = len(dirs)
        refs = self.refs[:, :, dirs.to(X.device)].permute(2, 0, 1, 3)  # (B, M, K, D)
        prod = X.view(X.shape[0], B, -1, self.K).transpose(0, 1) @ refs  # (B, M, S, D)
        return torch.fft.irfft(prod.transpose(0, 1), n=self.L, dim=0, norm="forward")  # (L, B, S, D)

    def scores(self, stack: ParticleStack, idx: Tensor, m: int, t: Tensor, offsets: Tensor | None = None) -> Tensor:
        """NCC (B, S·J·L) of every candidate (:meth:`correlations`), candidate (s·J + j)·L + l."""
        ncc = self.correlations(stack, idx, m, t, offsets)
        return ncc.permute(1, 2, 3, 0).reshape(len(idx), -1)

    def peaks(self, stack: ParticleStack, idx: Tensor, m: int, t: Tensor, offsets: Tensor | None = None,
              dirs: Tensor | None = None):
        """Per offset and direction, the best in-plane angle: NCC (B, S·J) and angle l (B, S·J), candidate
        s·J + j; (s·J + j)·L + l indexes :meth:`scores`. The log-posterior's best over all candidates is
        among these (it rises with the NCC at a fixed offset). ``dirs`` (B, D): only these directions
        (NCC and angle (B, S·D), candidate s·D + d for direction dirs[:, d]). The norm does not depend on the
        angle, so the numerators' maximum is divided by it (the same values, a pass less over all L angles)."""
        X, den = self._spectra(stack, idx, m, t, offsets, dirs)
        best = [self._restricted(X, dirs).max(0)] if dirs is not None else [cc.max(0) for cc in self._chunks(X)]
        ncc, angle = best[0] if len(best) == 1 else [torch.cat(part, -1) for part in zip(*best)]
        return ncc.div_(den.view(ncc.shape)).view(len(idx), -1), angle.reshape(len(idx), -1)

    def best(self, ncc: Tensor, angle: Tensor, shifts: Tensor, s2: float = math.inf, dirs: Tensor | None = None):
        """Each particle's candidate of highest log-posterior among the :meth:`peaks` ``ncc``, ``angle`` (B, C),
        candidate c = s·J + j of shift ``shifts[:, s]`` (B, S, 2) n-pixels (:meth:`log_posterior`): its shift
        offset s (B,) and direction j as c (B,), its orientation (B, 4) (:meth:`orientations`) and its NCC (B,),
        on the CPU. ``dirs`` (B, D): the peaks were of these directions only (candidate s·D + d)."""
        best = self.log_posterior(ncc, shifts, s2).argmax(1, keepdim=True)
        c = best[:, 0].cpu()
        if dirs is not None:  # s·D + d → s·J + dirs[d]
            D = dirs.shape[1]
            c = (c // D) * len(self.dirs) + dirs.cpu().gather(1, (c % D)[:, None])[:, 0]
        q = self.orientations(c * self.L + angle.gather(1, best)[:, 0].cpu())
        return c, q, ncc.gather(1, best)[:, 0].cpu()

    def orientations(self, flat: Tensor) -> Tensor:
        """Quaternions (..., 4) float64, w >= 0, of candidates ``flat`` (modulo J·L: j·L + l): Rz(α_l)·A_j,
        the projection along direction j rotated by α_l = 2πl/L in the image plane."""
        flat = flat.cpu() % (len(self.dirs) * self.L)
        a = (flat % self.L).double() * (2 * math.pi / self.L)
        inplane = torch.stack([torch.cos(a / 2), torch.zeros_like(a), torch.zeros_like(a), torch.sin(a / 2)], -1)
        q = quat_multiply(inplane, self.dirs[flat // self.L])
        return torch.where(q[..., :1] < 0, -q, q)

    def log_posterior(self, scores: Tensor, shifts: Tensor | None = None, s2: float = math.inf, beta: float = 1.0) -> Tensor:
        """Log-posteriors (B, C) of the candidates of NCC ``scores`` (B, C), up to a constant per row, at inverse
        temperature ``beta`` (:func:`cryoorient.imaging.noise.ncc_log_likelihood`); ``shifts`` (B, S, 2), the
        candidates' shifts (n-pixels, candidate s·J·L + …), add the Gaussian shift prior −|t|² / (2 ``s2``)
        (none for ``s2`` = inf)."""
        logp = ncc_log_likelihood(scores, 1, 2 * float(self.count.sum()), beta)
        prior = _shift_prior(shifts, s2, beta, scores.device)
        if prior is not None:
            logp.view(*prior.shape, -1).add_(prior[..., None])
        return logp

    def sample(self, num: Tensor, den: Tensor, shifts: Tensor | None, s2: float, beta: float,
               gen: torch.Generator) -> Tensor:
        """One candidate (B,) per particle, index (s·J + j)·L + l, drawn from its posterior (:meth:`log_posterior`)
        over the NCC num / den of :meth:`numerators` (B, S, J, L) and (B, S, J): by inverse transform sampling,
        first the pair (s, j) from the weights summed over the angles (:func:`cryoorient.ops.angle_sums`: no
        weight is stored), then the angle from that pair's L weights, two uniforms per particle. A candidate more
        than :data:`SAMPLE_FLOOR` below the particle's best weighs e^−SAMPLE_FLOOR.

        The log-posterior k_b (c² − c_max²) + prior_bs (c = max(NCC, 0), k_b from ``ncc_likelihood_scale``) rises
        with c at each offset s, so its maximum comes from each offset's largest c: the weights are
        exp(k_b c² + bias_bs), bias_bs = prior_bs − k_b c_max² − max, the exponent's maximum 0."""
        B, S, J, L = num.shape
        peak = (num.amax(3) / den).amax(2).clamp_min(0)  # (B, S): each offset's best NCC
        cmax2 = peak.amax(1, keepdim=True) ** 2  # (B, 1)
        k = ncc_likelihood_scale(cmax2, 2 * float(self.count.sum()), beta)
        prior = _shift_prior(shifts, s2, beta, num.device)
        logp = k * (peak**2 - cmax2) + (0 if prior is None else prior)  # (B, S): each offset's best
        bias = logp - k * peak**2 - logp.amax(1, keepdim=True)
        scale = k.expand(B, S)
        sums = angle_sums(num.reshape(B * S, J, L), den.reshape(B * S, J), scale.reshape(-1), bias.reshape(-1),
                          SAMPLE_FLOOR)
        u = torch.rand(B, 2, generator=gen, device=num.device, dtype=torch.float64)
        pair = _inverse_cdf(sums.view(B, S * J).double(), u[:, 0])
        rows, s, j = torch.arange(B, device=num.device), pair // J, pair % J
        w = angle_weights(num[rows, s, j], den[rows, s, j, None], scale[rows, s, None], bias[rows, s, None],
                          SAMPLE_FLOOR)  # (B, L)
        return pair * L + _inverse_cdf(w.double(), u[:, 1])

    def shifts(self, stack: ParticleStack, idx: Tensor, m: int, q: Tensor, max_shift: float, s2: float = math.inf):
        """Shifts (B, 2) n-pixels of particles ``idx`` at orientations q and their posterior means of |t|² (B,):
        :func:`shift_peak` with the CTF-modulated projections."""
        return shift_peak(stack, idx, m, self.proj.slices(q.to(stack.device).float()), self.K, max_shift, s2)


def coarse_stage(volume: Tensor, search: PolarSearch, opts: dict, shifts: int) -> tuple | None:
    """The coarse stage of ``search`` at band K >= 12 (``opts["coarse"]`` > 0): a search at band K/2 (a grid of a
    quarter of the directions, half the in-plane angles and rings: about 1/32 of the cost), the fine directions
    near each coarse one (:func:`direction_neighbours`) and how many coarse directions each particle keeps;
    None when off."""
    if not opts["coarse"] or search.K < 12:
        return None
    coarser = PolarSearch(volume, search.K // 2, opts, shifts)
    near = _neighbour_table(len(search.dirs), len(coarser.dirs)).to(volume.device)
    return coarser, near, min(int(opts["coarse"]), len(coarser.dirs))


@functools.lru_cache(maxsize=8)
def _neighbour_table(fine: int, coarse: int) -> Tensor:
    """:func:`direction_neighbours` of the direction grids of ``fine`` and ``coarse`` directions, kept for the
    searches that follow at the same bands."""
    return direction_neighbours(direction_grid(fine), direction_grid(coarse))


def best_candidates(stack: ParticleStack, search: PolarSearch, q: Tensor, t: Tensor, m: int, offsets: Tensor,
                     opts: dict, coarse: tuple | None = None, which: Tensor | None = None) -> Tensor:
    """Every particle's best candidate (highest log-posterior, with the shift prior) over the orientations of
    ``search`` and the shift offsets about its shift t (q, t updated in place): orientation and shift found
    together, so that neither holds the other at a wrong value. ``coarse`` (:func:`coarse_stage`): the fine
    directions searched are only those about each particle's best directions on the coarse search's grid.
    ``which``: these particles only (default all). Returns the particles' NCC (P,) float64 (NaN for the others)."""
    scores = torch.full((stack.P,), math.nan, dtype=torch.float64)
    cpu_offsets, J, S = offsets.double().cpu(), len(search.dirs), len(offsets)
    rows = search.rows
    if coarse is not None:
        coarser, near, top = coarse
        D = top * near.shape[1]
        rows = max(1, min(coarser.rows, opts["budget"] // (D * (S * search.L + search.L * search.K))))
    for idx in (torch.arange(stack.P) if which is None else which).split(rows):
        moved = t[idx][:, None] + cpu_offsets
        if coarse is None:
            c, q[idx], ncc = search.best(*search.peaks(stack, idx, m, t[idx], offsets), moved, opts["s2"])
        else:
            rough = coarser.log_posterior(coarser.peaks(stack, idx, m, t[idx], offsets)[0], moved, opts["s2"])
            dirs = near[rough.view(len(idx), S, -1).amax(1).topk(top, dim=1).indices].flatten(1)  # (B, D)
            c, q[idx], ncc = search.best(*search.peaks(stack, idx, m, t[idx], offsets, dirs), moved, opts["s2"], dirs)
        t[idx] = clip_shifts(moved[torch.arange(len(idx)), c // J], opts["max_shift"])
        scores[idx] = ncc.double()
    return scores


def probed_candidates(stack: ParticleStack, search: PolarSearch, volume: Tensor, q: Tensor, t: Tensor, m: int,
                      offsets: Tensor, opts: dict, which: Tensor | None = None) -> tuple[Tensor, float | None]:
    """:func:`best_candidates` of the particles ``which`` (default all), coarse to fine (:func:`coarse_stage`) where
    a probe finds it safe: :data:`PROBE` random ones are searched both ways, and the others coarse to fine only if the
    two agreed (the same orientation and shift) on at least :data:`COARSE_AGREEMENT` of them (computed from the data:
    at −20 dB the coarse stage loses particles). Returns the NCC (NaN for the others) and the probe's agreement
    (None: not probed)."""
    coarse = coarse_stage(volume, search, opts, len(offsets))
    if coarse is None:
        return best_candidates(stack, search, q, t, m, offsets, opts, None, which), None
    pool = torch.arange(stack.P) if which is None else which
    probe = pool[torch.randperm(len(pool), generator=opts["gen"])[:PROBE]].sort()[0]
    rest = pool[~torch.isin(pool, probe)]
    q_c, t_c = q.clone(), t.clone()
    best_candidates(stack, search, q_c, t_c, m, offsets, opts, coarse, probe)
    scores = best_candidates(stack, search, q, t, m, offsets, opts, None, probe)
    agreement = float(((q_c[probe] == q[probe]).all(1) & (t_c[probe] == t[probe]).all(1)).double().mean())
    if len(rest):
        kept = coarse if agreement >= COARSE_AGREEMENT else None
        scores[rest] = best_candidates(stack, search, q, t, m, offsets, opts, kept, rest)[rest]
    return scores, agreement


def shift_peak(stack: ParticleStack, idx: Tensor, m: int, F: Tensor, K: int, max_shift: float, s2: float = math.inf):
    """Shifts (B, 2) n-pixels of particles ``idx``, and the posterior mean of |t|² (B,) n-pixels², from the
    cross-correlation in the band K of each image with its CTF-modulated reference F (B or 1, m, m//2 + 1)
    (centred, rfft2 grid of the m-box): the peak within ``max_shift`` of the centre of the log-posterior
    (:func:`cryoorient.imaging.noise.ncc_log_likelihood` of the NCC at each shift, plus the Gaussian
    shift prior −|t|² / (2 ``s2``)), parabola-polished."""
    c = stack.ctf_at(idx, m)
    if c is not None:
        F = F * c
    band, herm, count = band_weights(m, K, stack.device)
    x = crop_spectrum(stack.spec[idx.to(stack.device)], m) * band
    cc = torch.fft.irfft2(x * F.conj(), s=(m, m))  # cc[sy, sx]: the image is the reference moved by s
    norm = torch.sqrt(((x.abs() ** 2) * herm).sum((1, 2)) * ((F * band).abs() ** 2 * herm).sum((1, 2)))
    s = torch.fft.fftfreq(m, d=1.0 / m, device=stack.device)
    r2 = (s[:, None] ** 2 + s[None, :] ** 2) * (stack.n / m) ** 2
    ncc = cc * (m * m / norm.clamp_min(1e-30))[:, None, None]
    logp = ncc_log_likelihood(ncc, (1, 2), 2 * float(count.sum()))
    if math.isfinite(s2):
        logp = logp - r2 / (2 * s2)
    inside = logp.masked_fill(r2 > max_shift**2, -math.inf).flatten(1)
    t2 = (torch.softmax(inside, 1) * r2.flatten()).sum(1).double().cpu()
    best = inside.argmax(1)
    iy, ix = best // m, best % m
    rows = torch.arange(len(idx), device=stack.device)
    f0 = logp[rows, iy, ix]

    def vertex(fm, fp):  # offset of the parabola's vertex through (-1, fm), (0, f0), (1, fp)
        den = fm - 2 * f0 + fp
        return torch.where(den < 0, 0.5 * (fm - fp) / torch.where(den < 0, den, -1.0), 0.0).clamp(-0.5, 0.5)

    dx = vertex(logp[rows, iy, (ix - 1) % m], logp[rows, iy, (ix + 1) % m])
    dy = vertex(logp[rows, (iy - 1) % m, ix], logp[rows, (iy + 1) % m, ix])
    return clip_shifts(torch.stack([s[ix] + dx, s[iy] + dy], 1).double().cpu() * (stack.n / m), max_shift), t2


def mean_projection(volume: Tensor, directions: int = 400) -> Tensor:
    """The mean of the projections of ``volume`` (m³, centred) over all orientations, as its spectrum
    (1, m, m//2 + 1) on the rfft2 grid: by the projection-slice theorem, the mean of the volume's
    spectrum over the sphere of each radius, taken at ``directions`` points of a Fibonacci sphere every
    quarter pixel of radius (trilinear, the volume padded twice), read at each pixel's radius."""
    m, device = volume.shape[0], volume.device
    padded = torch.zeros((2 * m,) * 3, device=device)
    padded[m // 2 : m // 2 + m, m // 2 : m // 2 + m, m // 2 : m // 2 + m] = volume
    spec = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(padded)).real)  # centred: the sphere means are real
    view = quat_to_matrix(direction_grid(directions))[:, 2].to(device, torch.float32)  # (D, 3) unit vectors
    radii = torch.arange(0, m * 0.75 + 1, 0.25, device=device)  # m-box pixels, past the rfft2 grid's corner
    points = radii[:, None, None] * view[None] * 2  # padded-box pixels, (x, y, z)
    grid = (2 * (points + m) + 1) / (2 * m) - 1  # align_corners=False coordinates of index m + point
    sphere = torch.nn.functional.grid_sample(spec[None, None], grid[None, None], align_corners=False)[0, 0, 0]
    mean = sphere.mean(1)  # (R,): the padded transform is the volume's at half-pixel steps
    k = torch.fft.fftfreq(m, d=1.0 / m, device=device)
    kx = torch.fft.rfftfreq(m, d=1.0 / m, device=device)
    pos = torch.sqrt(k[:, None] ** 2 + kx[None, :] ** 2) * 4  # quarter-pixel steps
    j, f = pos.floor().long(), pos - pos.floor()
    return (mean[j] * (1 - f) + mean[j + 1] * f)[None].to(torch.complex64)


def _shift_prior(shifts: Tensor | None, s2: float, beta: float, device) -> Tensor | None:
    """The Gaussian shift prior −β |t|² / (2 ``s2``) (B, S) float32 of the candidates' shifts (B, S, 2), n-pixels;
    None without shifts or for ``s2`` = inf."""
    if shifts is None or not math.isfinite(s2):
        return None
    return (shifts.to(device, torch.float32) ** 2).sum(-1) * (-beta / (2 * s2))


def _inverse_cdf(w: Tensor, u: Tensor) -> Tensor:
    """Per row of weights w (B, C) >= 0 (not all 0), the index drawn with probability w / w.sum() by
    uniforms u (B,) in [0, 1): the first whose cumulative sum exceeds u times the total."""
    cum = w.cumsum(1)
    return torch.searchsorted(cum, (u * cum[:, -1])[:, None], right=True)[:, 0].clamp_max(w.shape[1] - 1)


def clip_shifts(t: Tensor, max_shift: float) -> Tensor:
    """Shifts (B, 2) shortened to at most ``max_shift`` pixels, their directions kept."""
    length = torch.linalg.vector_norm(t, dim=1, keepdim=True)
    return t * (max_shift / length.clamp_min(1e-12)).clamp(max=1.0)
