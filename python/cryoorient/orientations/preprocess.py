"""Step 0 of the ab initio method (:mod:`cryoorient.orientations.abinitio`): checks, phase flipping, centring;
and the neighbour selection its comparison shares with the learned one (``learned_comparison``).

Conventions: images (P, n, n) float32 [y, x], the centre at pixel n//2; shifts t (P, 2) float64 in
pixels (x, y), the image content moved by +t (:mod:`cryoorient.imaging.shift`), so that
``shift_images(images, -t)`` centres them; CTFs real (B, n, n//2 + 1) on the ``rfft2`` grid. The
inscribed circle (radius n/2) should hold the particle: the pixels outside it, the corners, measure
the noise. Refusals are ValueErrors of one line (NaN or infinite pixels, particle density in the
corners unless accepted); an accepted violation leaves one "proceeding although …" line.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..imaging.ctf import phase_flip
from ..imaging.shift import shift_images
from ..maps.reconstruct import check_finite_images

__all__ = ["ASSUMPTIONS", "as_images", "centre_particles", "corner_signal", "prepare_images"]

#: Checks :func:`prepare_images` (and so ``estimate_orientations``) can be told to proceed past
#: (``accept``); each then leaves one warning line.
ASSUMPTIONS = {"corners": "the particle lies inside the inscribed circle, so that the image corners measure the noise"}

CORNER_SHARE, CORNER_Z = 0.1, 5.0  # refuse above this share of the signal variance, if this significant


def as_images(images, device="cpu") -> Tensor:
    """``images`` (N, n, n) (array, memmap or tensor) as float32 on ``device``, sharing memory where they
    already are; refuses (one line) other shapes, integer pixels, and NaN or infinite values."""
    x = images if torch.is_tensor(images) else torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.ndim != 3 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"images must be (N, n, n); got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"images must be floating point; got {x.dtype}")
    x = x.to(device=device, dtype=torch.float32)
    check_finite_images(x, torch.arange(len(x)))
    return x


def _corner_variance(images: Tensor) -> float:
    """Pixel variance outside the inscribed circle: the noise, if the particle stays inside it
    (at least 10⁻⁶ of the whole images' variance, so that clean images keep a defined filter)."""
    n = images.shape[-1]
    outside = _radius(n, images.device) > n / 2
    return max(float(images[:, outside].double().var()), 1e-6 * float(images.double().var()), 1e-30)


def _gaussian(n: int, sigma: float, device) -> Tensor:
    """Transfer function (n, n//2 + 1) on the ``rfft2`` grid of a Gaussian blur of ``sigma`` pixels."""
    k2 = torch.fft.fftfreq(n, device=device)[:, None] ** 2 + torch.fft.rfftfreq(n, device=device)[None, :] ** 2
    return torch.exp(-2 * math.pi**2 * sigma**2 * k2)


def _radius(n: int, device) -> Tensor:
    """Distance (n, n) of each pixel from the centre pixel n//2."""
    c = torch.arange(n, device=device, dtype=torch.float32) - n // 2
    return torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)


def centre_particles(images: Tensor, *, max_shift: float | None = None, blur: float | None = None,
                     iterations: int = 3, prior: bool = True, chunk: int = 4096) -> Tensor:
    """Shifts (P, 2) float64 (pixels x, y; content moved by +t) that centre ``images`` (P, n, n).

    Each round cross-correlates every image, blurred by a Gaussian of ``blur`` pixels (default
    n/8), with the rotational average of the images centred by the previous round's shifts (first:
    as they are), equally blurred, and takes the peak within ``max_shift`` pixels (default n/4) of
    the centre, polished by a parabola along x and y; ``shift_images(images, -t)`` centres them.
    The reference is rotation-invariant, so the centre turns with the image (one view gets one
    centre up to in-plane rotation); it is one point of the particle up to a wobble with the
    view, not its projected centre of mass. The blur makes the peak unimodal, so that the centre
    moves smoothly with the view (clean 32² phantom with CTF: E_OR 0.24 rad after centring at
    n/8, 0.52 unblurred, 0.21 from the true centres).

    With ``prior``, the peak is that of the log-posterior cc(t)/σ² − |t|²/(2s²): cc the correlation
    (a sum over pixels) taken as the log-likelihood of white noise of the corners' variance σ², and
    a Gaussian prior on the shift whose variance s² per axis is re-estimated each round as the
    posterior mean of |t|²/2 over the particles (expectation maximisation; first round: (max_shift/2)²).
    At low SNR the correlation peak is mostly noise and the posterior keeps the shifts near 0 where
    the peak alone would scatter them over the whole ``max_shift`` disc (5h73, 128², CTF, true
    shifts N(0, 3 px): median error 6.0 px at −20 dB without the prior, against 3.7 px for zero).
    """
    P, n = images.shape[0], images.shape[-1]
    dev = images.device
    max_shift = n / 4 if max_shift is None else float(max_shift)
    blur = n / 8 if blur is None else float(blur)
    gauss2 = _gaussian(n, blur, dev) ** 2  # the blur of image and reference
    r = _radius(n, dev)
    lag = torch.fft.fftfreq(n, d=1.0 / n, device=dev)
    allowed = (lag[:, None] ** 2 + lag[None, :] ** 2) <= max_shift ** 2
    ring, frac = r.floor().long(), r - r.floor()
    counts = torch.bincount(ring.flatten(), minlength=n + 1).clamp(min=1).to(torch.float64)
    lag2 = (lag[:, None] ** 2 + lag[None, :] ** 2).masked_fill(~allowed, 0.0)
    noise, s2 = _corner_variance(images), (max_shift / 2) ** 2
    t = torch.zeros(P, 2, dtype=torch.float64, device=dev)
    for _ in range(iterations):
        spread = 0.0
        mean = torch.zeros(n, n, dtype=torch.float64, device=dev)
        for s in range(0, P, chunk):
            mean += shift_images(images[s : s + chunk], -t[s : s + chunk].float()).double().sum(0)
        profile = torch.bincount(ring.flatten(), (mean / P).flatten(), minlength=n + 1) / counts
        ref = (profile[ring] * (1 - frac) + profile[ring + 1] * frac).float()  # rotational average, centre n//2
        ref_f = torch.fft.rfft2(ref).conj() * gauss2
        for s in range(0, P, chunk):
            cc = torch.fft.irfft2(torch.fft.rfft2(images[s : s + chunk]) * ref_f, s=(n, n))  # [lag y, lag x]
            if prior:  # the log-posterior; the prior's variance from its expectation of |t|²
                cc = cc / noise - lag2 / (2 * s2)
                spread += float((torch.softmax(cc.masked_fill(~allowed, -math.inf).flatten(1), 1)
                                 * lag2.flatten()).double().sum())
            cc = cc.masked_fill(~allowed, -math.inf)
            k = cc.flatten(1).argmax(1)
            iy, ix, b = k // n, k % n, torch.arange(len(k), device=dev)
            v0, off = cc[b, iy, ix], []
            for dy, dx, pos in ((1, 0, iy), (0, 1, ix)):
                lo, hi = cc[b, (iy - dy) % n, (ix - dx) % n], cc[b, (iy + dy) % n, (ix + dx) % n]
                edge = ~(torch.isfinite(lo) & torch.isfinite(hi))  # at max_shift: no polish
                low = v0 - v0.abs() - 1
                three = torch.stack([torch.where(edge, low, lo), v0, torch.where(edge, low, hi)])
                off.append(lag[pos] + _parabolic_peak(three)[1] - 1)
            t[s : s + chunk] = torch.stack([off[1], off[0]], 1).double()
        s2 = max(spread / (2 * P), 1e-2)
    return t.cpu()


def corner_signal(images: Tensor, max_images: int = 10000, chunk: int = 1024) -> tuple[float, float]:
    """How much particle signal the image corners hold: (share, z).

    The images less their mean are low-passed by a Gaussian of n/16 pixels (the particle's signal
    lives at low frequencies, white noise at all), and their pixel variance is then flat wherever
    only noise (stationary, of any colour) falls and rises towards the particle: outside the
    inscribed circle, the inner half of the corner pixels (by radius) should have the variance of
    the outer half. ``share``: the difference over the signal variance (mean pixel variance minus
    the outer corners'); ``z``: the mean over the images of each one's difference of mean squares
    over its standard error (a t statistic, valid for noise independent between images). Up to
    ``max_images`` evenly spaced images are used, ``chunk`` at a time.
    """
    P, n = images.shape[0], images.shape[-1]
    x = images[:: max(1, -(-P // max_images))]
    r = _radius(n, x.device)
    corner = r > n / 2
    mid = r[corner].median()
    inner, outer = corner & (r <= mid), corner & (r > mid)
    mean, gauss = x.mean(0, dtype=torch.float64).float(), _gaussian(n, n / 16, x.device)
    w = torch.stack([inner / inner.sum(), outer / outer.sum(), torch.full_like(r, n**-2)], -1).flatten(0, 1)
    rows = [(torch.fft.irfft2(torch.fft.rfft2(x[s : s + chunk] - mean) * gauss, s=(n, n)) ** 2).flatten(1) @ w
            for s in range(0, x.shape[0], chunk)]  # per image: mean squares of inner, outer corners, all pixels
    vi, vo, v = torch.cat(rows).double().unbind(1)
    d = vi - vo
    se = float(d.std()) / math.sqrt(len(d)) if len(d) > 1 else math.inf
    return float(d.mean()) / max(float(v.mean() - vo.mean()), 1e-30), float(d.mean()) / max(se, 1e-30)


def _parabolic_peak(cc: Tensor) -> tuple[Tensor, Tensor]:
    """Peak value and (fractional) position along dim 0 of circular samples ``cc``."""
    n = cc.shape[0]
    v, k = cc.max(0)
    lo = cc.gather(0, ((k - 1) % n)[None])[0]
    hi = cc.gather(0, ((k + 1) % n)[None])[0]
    den = lo - 2 * v + hi
    delta = torch.where(den < 0, 0.5 * (lo - hi) / den.clamp(max=-1e-12), torch.zeros_like(v)).clamp(-0.5, 0.5)
    return v - 0.25 * (lo - hi) * delta, k.to(cc.dtype) + delta


def _row_candidates(v: Tensor, k: Tensor, own: Tensor, L: int, C: int,
                    step: float) -> tuple[Tensor, Tensor, Tensor]:
    """Each row's ``C`` best nodes by peak score ``v`` (rows, 2L) at fractional rolls ``k``: (scores, nodes,
    angles = roll · ``step``), best first; the row's own image (node ``own``, −1: none) and its mirror (node
    ``own`` + L) left out, in ``v`` itself (set to −inf)."""
    mine = (own >= 0).nonzero().flatten()
    v[mine, own[mine]] = -math.inf
    v[mine, own[mine] + L] = -math.inf
    score, index = v.topk(C, dim=1)
    return score, index, k.gather(1, index) * step


def _hub_corrected_best(score: Tensor, index: Tensor, angle: Tensor, hub_k: int, node_rows: Tensor,
                        neighbors: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(index, angle, score)`` on the CPU of each row's ``neighbors`` best candidates (rows, C), best first,
    by 2·s_uv − r_u − r_v: r the mean of a row's ``hub_k`` best raw scores, node v's r that of its row
    ``node_rows[v]`` (``hub_k`` 0: the raw scores); angles wrapped to [−π, π)."""
    if hub_k:
        hub = score[:, :hub_k].mean(1)
        score = 2 * score - hub[:, None] - hub[node_rows][index]
    best, order = score.topk(neighbors, dim=1)
    wrap = lambda a: torch.remainder(a + math.pi, 2 * math.pi) - math.pi  # noqa: E731
    return index.gather(1, order).cpu(), wrap(angle.gather(1, order)).cpu(), best.cpu()


def prepare_images(images, ctf=None, *, centre: bool = True, max_shift: float | None = None, accept=(),
                   device="cpu", chunk: int = 4096) -> tuple[Tensor, Tensor, list[str]]:
    """Step 0 and its checks: ``(x, shifts, warnings)`` for images (P, n, n) (array, memmap or tensor).

    ``x`` (P, n, n) float32 on ``device``: the images phase-flipped by ``ctf(indices, n)`` (None:
    as they are) and, with ``centre``, centred by ``shifts`` (P, 2) float64 pixels (zeros without;
    :func:`centre_particles`, within ``max_shift`` pixels). ``accept``: names of :data:`ASSUMPTIONS`
    to proceed past, one ``warnings`` line each; otherwise their violation is refused: "corners" where
    :func:`corner_signal` exceeds ``CORNER_SHARE`` and ``CORNER_Z`` before or after centring.
    """
    unknown = set(accept) - set(ASSUMPTIONS)
    if unknown:
        raise ValueError(f"accept names unknown checks {sorted(unknown)}; known: {sorted(ASSUMPTIONS)}")
    x = as_images(images, device)  # may share memory with the caller's images: changes go to a copy
    P, n = x.shape[0], x.shape[-1]
    own = None
    if ctf is not None:
        own = torch.empty_like(x)
        for s in range(0, P, chunk):
            idx = torch.arange(s, min(P, s + chunk))
            c = torch.as_tensor(ctf(idx, n))
            if tuple(c.shape) != (len(idx), n, n // 2 + 1):
                raise ValueError(f"ctf(indices, {n}) must return shape {(len(idx), n, n // 2 + 1)}; "
                                 f"got {tuple(c.shape)}")
            own[s : s + chunk] = phase_flip(x[s : s + chunk], c.to(device=x.device, dtype=torch.float32))
        x = own
    shifts = torch.zeros(P, 2, dtype=torch.float64)
    signal = [corner_signal(x)]  # also before centring, whose circular shifts wrap a cut particle round the box
    if centre:
        shifts = centre_particles(x, max_shift=max_shift)
        own = torch.empty_like(x) if own is None else own
        for s in range(0, P, chunk):
            own[s : s + chunk] = shift_images(x[s : s + chunk], -shifts[s : s + chunk].to(x.device, torch.float32))
        x = own
        signal.append(corner_signal(x))
    warnings = []
    share, z = max(signal, key=lambda sz: (sz[0] > CORNER_SHARE and sz[1] > CORNER_Z, sz[1]))
    if share > CORNER_SHARE and z > CORNER_Z:
        line = (f"particle density reaches the image corners ({100 * share:.0f} % of the signal variance, "
                f"z = {z:.0f}): the corners then overstate the noise")
        if "corners" not in accept:
            raise ValueError(f"{line}; use a box that holds the whole particle (re-extract larger), or accept "
                             f"'corners' to proceed")
        warnings.append(f"proceeding although {line}")
    return x, shifts, warnings
