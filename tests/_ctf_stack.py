"""A shared test stack: CTF-affected projections of the phantom with planted orientations and shifts."""

import torch

from cryoorient.geometry import random_quaternions
from cryoorient.imaging.ctf import ctf_2d, random_defocus
from cryoorient.imaging.project import FourierProjector


def ctf_projections(volume, count: int, pixel: float, shift_sigma: float, shift_clip: float):
    """``count`` projections of ``volume`` at random orientations (seed 2), shifts N(0, shift_sigma) px per
    axis clipped at ±shift_clip (seed 4), CTF of defocus 0.8–2.5 µm with astigmatism up to 0.1 µm
    (seed 3): ``(q, t, ctf(indices, size), images)``, noiseless."""
    q = random_quaternions(count, generator=2, dtype=torch.float64)
    t = (torch.randn(count, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * shift_sigma)
    t = t.clamp(-shift_clip, shift_clip)
    du, dv, da = random_defocus(count, 8000, 25000, 1000, generator=3)

    def ctf(indices, size):
        return ctf_2d(size, pixel, du[indices], dv[indices], da[indices])

    images = FourierProjector(volume, pad=2.0).images(q.float(), t.float(), ctf(torch.arange(count), volume.shape[-1]))
    return q, t, ctf, images
