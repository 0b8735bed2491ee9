"""Additive noise n: white Gaussian noise of a given variance or signal-to-noise ratio.

Conventions
-----------
* ``SNR = signal variance / noise variance``, in dB ``10·log10(SNR)``. The signal
  variance of a set of images is the mean over images of each clean image's pixel
  variance over the whole particle box (:func:`signal_variance`).
* The paper (Banjac et al., §3.1, §3.4) standardises the clean projections of a dataset
  to zero mean and unit variance (one global mean and standard deviation) and then adds
  noise of variance σ²; its σ² = 16 is thus SNR = 1/16 = −12.04 dB ("−12 dB").
  ``cryoorient.simulate`` does the same; for standardised images σ² = 10^(−SNR_dB/10).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["signal_variance", "snr_db", "sigma2_for_snr", "add_white_noise", "ncc_log_likelihood",
           "ncc_likelihood_scale"]


def signal_variance(images: Tensor) -> float:
    """Mean over images (B, ...) of the per-image pixel variance (population, float64)."""
    x = images.detach().reshape(images.shape[0], -1).to(torch.float64)
    return float(x.var(dim=1, unbiased=False).mean())


def snr_db(signal: Tensor, noise: Tensor) -> float:
    """Measured SNR in dB of clean images ``signal`` and the noise ``noise`` added to them."""
    return 10.0 * math.log10(signal_variance(signal) / signal_variance(noise))


def sigma2_for_snr(signal_var: float, snr: float) -> float:
    """Noise variance giving ``snr`` dB for a signal of variance ``signal_var``."""
    if not (math.isfinite(snr) and -60.0 <= snr <= 60.0):
        raise ValueError(f"SNR must be a finite number of dB in [-60, 60], got {snr!r}")
    if not (math.isfinite(signal_var) and signal_var > 0):
        raise ValueError(f"signal variance must be positive, got {signal_var!r} (are the images blank?)")
    return signal_var * 10.0 ** (-snr / 10.0)


def add_white_noise(images: Tensor, sigma2: float, generator: torch.Generator | None = None) -> Tensor:
    """``images + n`` with ``n ~ N(0, sigma2 I)`` drawn on the images' device (``generator`` there too)."""
    if not (math.isfinite(sigma2) and sigma2 >= 0):
        raise ValueError(f"noise variance sigma2 must be a finite number >= 0, got {sigma2!r}")
    if sigma2 == 0:
        return images
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    return images + math.sqrt(sigma2) * noise


def ncc_likelihood_scale(cmax2: Tensor, coefficients: float, beta: float = 1.0) -> Tensor:
    """β N / (2 (1 − c_max²)): the factor of c² − c_max² in :func:`ncc_log_likelihood`, from the best NCC squared."""
    return (beta * coefficients / 2) / (1 - cmax2).clamp_min(1e-6)


def ncc_log_likelihood(ncc: Tensor, dims, coefficients: float, beta: float = 1.0) -> Tensor:
    """Log-likelihoods, up to a constant per image, of an image's candidate references of NCC ``ncc``
    (its candidates along ``dims``), times ``beta`` (an inverse temperature).

    With white Gaussian noise and the best scale of each reference, a candidate of NCC c has
    log-likelihood ||x||² c² / (2 s) + const, s the noise power per real Fourier coefficient; estimated
    from the best candidate's residual, s = ||x||² (1 − c_max²) / N (N = ``coefficients``, the real
    coefficients compared), it is N (c² − c_max²) / (2 (1 − c_max²)). c <= 0 counts as 0."""
    c = ncc.clamp_min(0)
    cmax = c.amax(dims, keepdim=True)
    return c.pow_(2).sub_(cmax**2).mul_(ncc_likelihood_scale(cmax**2, coefficients, beta))
