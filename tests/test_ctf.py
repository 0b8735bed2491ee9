"""CTF C_φ: wavelength, zeros, sign convention, astigmatism, envelope, application, plots."""

import math

import pytest
import torch

from cryoorient.imaging.ctf import apply_ctf, ctf_1d, ctf_2d, electron_wavelength, plot_ctf, plot_power_spectrum, random_defocus


def test_electron_wavelength_known_values():
    # Relativistic de Broglie wavelengths (e.g. Williams & Carter, Table 1.1)
    assert electron_wavelength(300) == pytest.approx(0.01969, abs=2e-5)
    assert electron_wavelength(200) == pytest.approx(0.02508, abs=2e-5)
    assert electron_wavelength(100) == pytest.approx(0.03701, abs=2e-5)


def zeros(defocus, voltage, cs, q0, phase_deg, count):
    """Frequencies (1/Å) where π λ Δf u² − (π/2) Cs λ³ u⁴ + φ + arctan(Q0/√(1−Q0²)) = kπ, k = 1.. ."""
    lam = 12.2643247 / math.sqrt(voltage * 1e3 * (1 + voltage * 1e3 * 0.978466e-6))
    a = math.pi / 2 * cs * 1e7 * lam**3
    b = math.pi * lam * defocus
    c0 = math.radians(phase_deg) + math.atan(q0 / math.sqrt(1 - q0 * q0))
    out = []
    for k in range(1, count + 1):
        c = c0 - k * math.pi  # a x² − b x − c = 0 with x = u², smallest positive root
        x = (b - math.sqrt(b * b + 4 * a * c)) / (2 * a) if a > 0 else -c / b
        out.append(math.sqrt(x))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize(
    "defocus, voltage, cs, q0, phase", [(15000.0, 300, 2.7, 0.1, 0.0), (8000.0, 200, 0.0, 0.07, 0.0), (20000.0, 300, 2.0, 0.0, 30.0)]
)
def test_zeros_where_the_formula_puts_them(defocus, voltage, cs, q0, phase):
    u = zeros(defocus, voltage, cs, q0, phase, 6)
    opt = dict(voltage=voltage, cs=cs, amplitude_contrast=q0, phase_shift=phase)
    assert ctf_1d(u, defocus, **opt).abs().max() < 1e-9
    # a genuine sign change at every zero
    eps = 1e-4 * u
    assert torch.all(ctf_1d(u - eps, defocus, **opt) * ctf_1d(u + eps, defocus, **opt) < 0)


def test_low_frequency_sign_is_relion():
    # RELION: CTF(0) = sin(arctan(Q0/√(1−Q0²))) = Q0 > 0; rising towards 1 before the first zero
    f = torch.tensor([0.0, 0.01], dtype=torch.float64)
    c = ctf_1d(f, 15000.0, amplitude_contrast=0.1)
    assert float(c[0]) == pytest.approx(0.1, abs=1e-12)
    assert float(c[1]) > float(c[0])
    # a 90° phase plate with no amplitude contrast transfers DC fully
    assert float(ctf_1d(f[:1], 15000.0, amplitude_contrast=0.0, phase_shift=90.0)) == pytest.approx(1.0)


def test_b_factor_envelope():
    f = torch.linspace(0.01, 0.3, 50, dtype=torch.float64)
    plain = ctf_1d(f, 12000.0)
    damped = ctf_1d(f, 12000.0, b_factor=80.0)
    torch.testing.assert_close(damped, plain * torch.exp(-80.0 / 4 * f**2))


@pytest.mark.parametrize("angle", [0.0, 90.0, 30.0])
def test_astigmatism_axes(angle):
    n, px, U, V = 128, 1.5, 20000.0, 12000.0
    img = ctf_2d(n, px, U, V, angle, layout="centered", dtype=torch.float64)[0]
    c = n // 2
    r = torch.arange(1, n // 2 - 1, dtype=torch.float64)
    freq = r / (n * px)

    def along(deg):
        # nearest-pixel free check: only axis-aligned or exact-diagonal directions are sampled
        t = math.radians(deg)
        dx, dy = round(math.cos(t) * 1e6) / 1e6, round(math.sin(t) * 1e6) / 1e6
        return img[(c + r * dy).long(), (c + r * dx).long()]

    if angle in (0.0, 90.0):
        other = angle + 90.0
        torch.testing.assert_close(along(angle), ctf_1d(freq, U), atol=1e-10, rtol=0)
        torch.testing.assert_close(along(other), ctf_1d(freq, V), atol=1e-10, rtol=0)
    else:
        # along the direction θ the defocus is ½[U + V + (U − V) cos 2(θ − angle)]
        for theta in (0.0, 90.0):
            d = 0.5 * (U + V + (U - V) * math.cos(2 * math.radians(theta - angle)))
            torch.testing.assert_close(along(theta), ctf_1d(freq, d), atol=1e-10, rtol=0)


def test_rfft_and_centered_layouts_agree():
    n = 32
    rf = ctf_2d(n, 2.0, 15000.0, 14000.0, 20.0, dtype=torch.float64)[0]
    full = torch.fft.ifftshift(ctf_2d(n, 2.0, 15000.0, 14000.0, 20.0, layout="centered", dtype=torch.float64)[0])
    # (the Nyquist column is +1/2 in rfft2 layout and -1/2 in fftfreq order: skip it)
    torch.testing.assert_close(rf[:, : n // 2], full[:, : n // 2])


def test_per_particle_parameters_broadcast():
    u = torch.tensor([10000.0, 20000.0, 30000.0])
    batch = ctf_2d(16, 2.0, u, u - 500, 45.0)
    assert batch.shape == (3, 16, 9)
    for i in range(3):
        torch.testing.assert_close(batch[i], ctf_2d(16, 2.0, float(u[i]), float(u[i]) - 500, 45.0)[0])


def test_apply_ctf():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 24, 24, generator=g, dtype=torch.float64)
    ones = torch.ones(1, 24, 13, dtype=torch.float64)
    torch.testing.assert_close(apply_ctf(images, ones), images)
    ctf = ctf_2d(24, 3.0, 15000.0, dtype=torch.float64)
    out = apply_ctf(images, ctf)
    # the mean (DC) is scaled by CTF(0) = Q0; the spectrum is multiplied pointwise
    torch.testing.assert_close(out.mean((1, 2)), 0.1 * images.mean((1, 2)))
    torch.testing.assert_close(torch.fft.rfft2(out), torch.fft.rfft2(images) * ctf)


def test_random_defocus():
    u, v, a = random_defocus(10_000, 10000.0, 25000.0, astigmatism=1000.0, generator=3)
    mean = (u + v) / 2
    assert mean.min() >= 10000.0 and mean.max() <= 25000.0
    assert torch.all(u >= v) and (u - v).max() <= 1000.0
    assert a.min() >= 0 and a.max() < 180.0
    u2, v2, a2 = random_defocus(10_000, 10000.0, 25000.0, astigmatism=1000.0, generator=3)
    assert torch.equal(u, u2) and torch.equal(v, v2) and torch.equal(a, a2)


def test_plots(tmp_path):
    plot_ctf(tmp_path / "ctf.png", 64, 2.0, 15000.0, 13000.0, 30.0, b_factor=50.0)
    images = apply_ctf(torch.randn(8, 64, 64), ctf_2d(64, 2.0, 15000.0))
    plot_power_spectrum(tmp_path / "ps.png", images, 2.0)
    for name in ("ctf.png", "ps.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_bad_inputs():
    with pytest.raises(ValueError, match="voltage"):
        electron_wavelength(0)
    with pytest.raises(ValueError, match="amplitude_contrast"):
        ctf_2d(16, 1.0, 10000.0, amplitude_contrast=1.0)
    with pytest.raises(ValueError, match="pixel_size"):
        ctf_2d(16, -1.0, 10000.0)
    with pytest.raises(ValueError, match="size"):
        ctf_2d(0, 1.0, 10000.0)
    with pytest.raises(ValueError, match="layout"):
        ctf_2d(16, 1.0, 10000.0, layout="full")
    with pytest.raises(ValueError, match="defocus_u must be finite"):
        ctf_2d(16, 1.0, float("nan"))
    with pytest.raises(ValueError, match="defocus_min"):
        random_defocus(3, 20000.0, 10000.0)
    with pytest.raises(ValueError, match="rfft2 grid"):
        apply_ctf(torch.zeros(1, 16, 16), torch.zeros(1, 16, 16))
