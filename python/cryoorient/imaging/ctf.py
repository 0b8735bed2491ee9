"""Contrast transfer function C_φ of the microscope (RELION's sign convention, ``ctf.h``).

Conventions
-----------
* Units: defocus U/V in Å (positive = underfocus), astigmatism angle and phase shift in
  degrees, voltage in kV, spherical aberration Cs in mm, amplitude contrast Q0 as a
  fraction, B-factor in Å², spatial frequencies in 1/Å.
* Defocus along direction θ (measured from the image x axis towards the y axis, as
  CTFFIND's and RELION's ``rlnDefocusAngle``):
  ``Δf(θ) = ½ [U + V + (U − V) cos 2(θ − angle)]``, so U is the defocus along ``angle``.
* Electron wavelength with the relativistic correction:
  ``λ = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))`` Å, V in volts.
* With ``u`` the frequency,

      χ(u) = −π λ Δf(θ) u² + (π/2) Cs λ³ u⁴ − φ − arctan(Q0 / sqrt(1 − Q0²)),
      CTF(u) = −sin χ(u) · exp(−B u² / 4),

  exactly RELION's ``CTF::getCTF`` (its ``argument`` is χ). At u = 0 the CTF is
  ``sin(φ + arctan(...))`` = ``Q0`` for φ = 0: positive, so projected density keeps
  its sign at low resolution. This is the negative of CTFFIND's ``−w1 sin χ' − w2 cos χ'``.
  The zeros are where ``π λ Δf u² − (π/2) Cs λ³ u⁴ + φ + arctan(...)`` is a multiple of π.
* The CTF is applied by multiplying an image's ``rfft2`` spectrum (:func:`apply_ctf`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "electron_wavelength",
    "ctf_2d",
    "ctf_1d",
    "apply_ctf",
    "phase_flip",
    "random_defocus",
    "plot_ctf",
    "plot_power_spectrum",
]


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = float(voltage_kv)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"voltage must be a positive number of kV, got {voltage_kv!r}")
    v *= 1e3
    return 12.2643247 / math.sqrt(v * (1.0 + v * 0.978466e-6))


def _check_optics(cs: float, amplitude_contrast: float, b_factor: float, phase_shift: float) -> None:
    for name, value in (("cs", cs), ("b_factor", b_factor), ("phase_shift", phase_shift)):
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if float(cs) < 0:
        raise ValueError(f"spherical aberration cs must be >= 0 mm, got {cs!r}")
    if not 0 <= float(amplitude_contrast) < 1:
        raise ValueError(f"amplitude_contrast must be in [0, 1), got {amplitude_contrast!r}")


def _ctf_value(
    kx: Tensor, ky: Tensor, defocus_u: Tensor, defocus_v: Tensor, defocus_angle: Tensor,
    voltage: float, cs: float, amplitude_contrast: float, b_factor: float, phase_shift: float,
) -> Tensor:
    """CTF at frequencies (kx, ky) (1/Å, broadcast against per-particle (B, 1, 1) parameters)."""
    _check_optics(cs, amplitude_contrast, b_factor, phase_shift)
    lam = electron_wavelength(voltage)
    k1 = math.pi * lam
    k2 = math.pi / 2 * float(cs) * 1e7 * lam**3
    k3 = math.atan(amplitude_contrast / math.sqrt(1 - amplitude_contrast**2))
    k5 = math.radians(float(phase_shift))
    a = torch.deg2rad(defocus_angle)
    u2 = kx * kx + ky * ky
    # Δf(θ) u² = ½[(U + V) u² + (U − V)((kx² − ky²) cos 2a + 2 kx ky sin 2a)]
    df_u2 = 0.5 * ((defocus_u + defocus_v) * u2
                   + (defocus_u - defocus_v) * ((kx * kx - ky * ky) * torch.cos(2 * a) + 2 * kx * ky * torch.sin(2 * a)))
    chi = -k1 * df_u2 + k2 * u2 * u2 - k5 - k3
    ctf = -torch.sin(chi)
    if b_factor != 0:
        ctf = ctf * torch.exp(-float(b_factor) / 4 * u2)
    return ctf


def _per_particle(value, name: str, dtype, device) -> Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device).reshape(-1)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    return t


def ctf_2d(
    size: int,
    pixel_size: float,
    defocus_u,
    defocus_v=None,
    defocus_angle=0.0,
    voltage: float = 300.0,
    cs: float = 2.7,
    amplitude_contrast: float = 0.1,
    b_factor: float = 0.0,
    phase_shift: float = 0.0,
    layout: str = "rfft",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """CTFs of images of edge ``size`` and ``pixel_size`` Å, one per particle.

    ``defocus_u``/``defocus_v`` (Å; ``defocus_v`` defaults to U, no astigmatism) and
    ``defocus_angle`` (degrees) are floats or (B,) tensors (broadcast). Returns (B, size,
    size // 2 + 1) on the ``rfft2`` grid (``layout="rfft"``) or (B, size, size) with zero
    frequency at pixel ``size // 2`` (``layout="centered"``, for display).
    """
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if not (math.isfinite(float(pixel_size)) and float(pixel_size) > 0):
        raise ValueError(f"pixel_size must be a positive number of Å, got {pixel_size!r}")
    u = _per_particle(defocus_u, "defocus_u", dtype, device)
    v = u if defocus_v is None else _per_particle(defocus_v, "defocus_v", dtype, device)
    ang = _per_particle(defocus_angle, "defocus_angle", dtype, device)
    u, v, ang = (t[:, None, None] for t in torch.broadcast_tensors(u, v, ang))
    n, d = int(size), float(pixel_size)
    ky = torch.fft.fftfreq(n, d=d, dtype=dtype, device=device)
    if layout == "rfft":
        kx = torch.fft.rfftfreq(n, d=d, dtype=dtype, device=device)
    elif layout == "centered":
        ky = torch.fft.fftshift(ky)
        kx = ky
    else:
        raise ValueError(f"layout must be 'rfft' or 'centered', got {layout!r}")
    return _ctf_value(kx[None, None, :], ky[None, :, None], u, v, ang, voltage, cs, amplitude_contrast, b_factor,
                      phase_shift)


def ctf_1d(
    frequency: Tensor,
    defocus: float,
    voltage: float = 300.0,
    cs: float = 2.7,
    amplitude_contrast: float = 0.1,
    b_factor: float = 0.0,
    phase_shift: float = 0.0,
) -> Tensor:
    """Radial CTF of an unastigmatic image at ``frequency`` (1/Å, any shape; defocus in Å)."""
    f = torch.as_tensor(frequency)
    if not f.is_floating_point():
        f = f.to(torch.get_default_dtype())
    d = torch.full((), float(defocus), dtype=f.dtype, device=f.device)
    return _ctf_value(f, torch.zeros_like(f), d, d, torch.zeros_like(d), voltage, cs, amplitude_contrast, b_factor,
                      phase_shift)


def apply_ctf(images: Tensor, ctf: Tensor) -> Tensor:
    """Convolve square images (B, n, n) with the PSF whose transform is ``ctf`` (B or 1, n, n // 2 + 1)."""
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must have shape (B, n, n); got {tuple(images.shape)}")
    n = images.shape[-1]
    if ctf.shape[-2:] != (n, n // 2 + 1):
        raise ValueError(f"ctf must be on the rfft2 grid ({n}, {n // 2 + 1}); got {tuple(ctf.shape)}")
    spec = torch.fft.rfft2(images) * ctf.to(device=images.device, dtype=images.dtype)
    return torch.fft.irfft2(spec, s=(n, n))


def random_defocus(
    n: int,
    defocus_min: float,
    defocus_max: float,
    astigmatism: float = 0.0,
    generator: torch.Generator | int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-particle ``(defocus_u, defocus_v, defocus_angle)`` (n,) float64 on the CPU.

    The mean defocus is uniform in [``defocus_min``, ``defocus_max``] Å, the astigmatism
    ``U − V`` uniform in [0, ``astigmatism``] Å (so U >= V), the angle uniform in [0, 180)°.
    """
    lo, hi, astig = float(defocus_min), float(defocus_max), float(astigmatism)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"need 0 < defocus_min <= defocus_max (Å), got {defocus_min!r}, {defocus_max!r}")
    if not (math.isfinite(astig) and 0 <= astig < 2 * lo):
        raise ValueError(f"astigmatism must be in [0, 2·defocus_min) Å, got {astigmatism!r}")
    if generator is None or isinstance(generator, int):
        generator = torch.Generator().manual_seed(0 if generator is None else int(generator))
    r = torch.rand(int(n), 3, generator=generator, dtype=torch.float64)
    mean = lo + (hi - lo) * r[:, 0]
    a = astig * r[:, 1]
    return mean + a / 2, mean - a / 2, 180.0 * r[:, 2]


def _figure(ncols: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4.2), constrained_layout=True)
    return plt, fig, axes


def plot_ctf(
    path, size: int, pixel_size: float, defocus_u: float, defocus_v: float | None = None,
    defocus_angle: float = 0.0, **optics,
) -> None:
    """Write a PNG: the 2D CTF (zero frequency at the centre) and its profiles along the U and V axes.

    ``optics``: ``voltage``, ``cs``, ``amplitude_contrast``, ``b_factor``, ``phase_shift``.
    """
    v = defocus_u if defocus_v is None else defocus_v
    img = ctf_2d(size, pixel_size, defocus_u, v, defocus_angle, layout="centered", dtype=torch.float64, **optics)[0]
    f = torch.linspace(0, 0.5 / pixel_size, 512, dtype=torch.float64)
    plt, fig, (ax0, ax1) = _figure(2)
    nyq = 0.5 / pixel_size
    ax0.imshow(img.numpy(), cmap="gray", vmin=-1, vmax=1, origin="lower", extent=(-nyq, nyq, -nyq, nyq))
    ax0.set_title(f"CTF, U={defocus_u:.0f} Å V={v:.0f} Å, angle={defocus_angle:.0f}°")
    ax0.set_xlabel("kx (1/Å)")
    ax0.set_ylabel("ky (1/Å)")
    ax1.plot(f.numpy(), ctf_1d(f, defocus_u, **optics).numpy(), label=f"along U ({defocus_u:.0f} Å)")
    if v != defocus_u:
        ax1.plot(f.numpy(), ctf_1d(f, v, **optics).numpy(), label=f"along V ({v:.0f} Å)", alpha=0.8)
    ax1.axhline(0, color="k", lw=0.5)
    ax1.set_xlabel("spatial frequency (1/Å)")
    ax1.set_ylabel("CTF")
    ax1.legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_power_spectrum(path, images: Tensor, pixel_size: float) -> None:
    """Write a PNG: the mean power spectrum of images (B, n, n) (log scale) and its rotational average."""
    if not isinstance(images, Tensor) or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError("images must be a tensor of shape (B, n, n)")
    n = images.shape[-1]
    x = images.detach().to("cpu", torch.float64)
    power = torch.fft.fftshift((torch.fft.fft2(x - x.mean((1, 2), keepdim=True)).abs() ** 2).mean(0))
    k = torch.fft.fftshift(torch.fft.fftfreq(n, d=1.0, dtype=torch.float64)) * n
    radius = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2).round().long().clamp(max=n // 2)
    counts = torch.bincount(radius.flatten(), minlength=n // 2 + 1).clamp(min=1)
    radial = torch.bincount(radius.flatten(), power.flatten(), minlength=n // 2 + 1) / counts
    plt, fig, (ax0, ax1) = _figure(2)
    nyq = 0.5 / pixel_size
    ax0.imshow(torch.log10(power + power.max() * 1e-12).numpy(), cmap="gray", origin="lower",
               extent=(-nyq, nyq, -nyq, nyq))
    ax0.set_title(f"log10 power spectrum (mean of {images.shape[0]})")
    ax0.set_xlabel("kx (1/Å)")
    ax0.set_ylabel("ky (1/Å)")
    freq = torch.arange(n // 2 + 1, dtype=torch.float64) / (n * pixel_size)
    ax1.semilogy(freq[1:].numpy(), radial[1:].numpy())
    ax1.set_xlabel("spatial frequency (1/Å)")
    ax1.set_ylabel("rotationally averaged power")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def phase_flip(images: Tensor, ctf: Tensor) -> Tensor:
    """Phase-flip square images (B, n, n): multiply their ``rfft2`` spectra by sign(``ctf``) (B or 1, n, n // 2 + 1).

    An image whose spectrum is CTF·F comes out as |CTF|·F (exactly, 0 on the CTF's zeros; for an
    even n except on the Nyquist column, where an astigmatic CTF is not Hermitian): the contrast
    inversions are undone, the amplitudes keep the CTF's envelope, and white noise stays white.
    The CTF must belong to the images (same defocus, pixel size, optics).
    """
    return apply_ctf(images, torch.sign(ctf))
