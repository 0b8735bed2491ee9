"""Fourier shell correlation (FSC) between two maps and the resolution it implies.

Maps are cubic arrays indexed [z, y, x] with voxel size in Å. Shell k holds the
Fourier components with radius in [k - 0.5, k + 0.5) (in units of 1/(box·voxel));
its spatial frequency is k/(box·voxel) Å⁻¹ and its resolution box·voxel/k Å.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.figure import save_figure


@dataclass
class FSCResult:
    frequency: np.ndarray  # shell frequencies in 1/Å (shell 0 excluded)
    fsc: np.ndarray  # FSC per shell
    voxel_size: float

    def resolution(self, threshold: float) -> float:
        """Resolution in Å where the FSC first falls below ``threshold`` (linear interpolation).

        Returns the Nyquist resolution 2·voxel if the FSC never falls below it.
        """
        below = np.nonzero(self.fsc < threshold)[0]
        if below.size == 0:
            return 2.0 * self.voxel_size
        k = below[0]
        if k == 0:
            return float(1.0 / self.frequency[0])
        f0, f1 = self.frequency[k - 1], self.frequency[k]
        c0, c1 = self.fsc[k - 1], self.fsc[k]
        f = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0)
        return float(1.0 / f)


def fsc(map1, map2, voxel_size: float) -> FSCResult:
    """FSC of two cubic maps of equal size (numpy arrays or tensors), up to Nyquist."""
    a = torch.as_tensor(np.asarray(map1) if not torch.is_tensor(map1) else map1, dtype=torch.float64)
    b = torch.as_tensor(np.asarray(map2) if not torch.is_tensor(map2) else map2, dtype=torch.float64).to(a.device)
    if a.shape != b.shape or a.dim() != 3 or len(set(a.shape)) != 1:
        raise ValueError(f"FSC needs two cubic maps of the same size; got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("FSC inputs contain NaN or infinite values")
    n = a.shape[0]
    fa, fb = torch.fft.rfftn(a), torch.fft.rfftn(b)
    k = torch.fft.fftfreq(n, device=a.device) * n
    kx = torch.fft.rfftfreq(n, device=a.device) * n
    r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)
    shell = torch.round(r).long().flatten()
    nshell = n // 2 + 1
    keep = shell < nshell
    shell = shell[keep]

    def shell_sum(x):
        return torch.zeros(nshell, dtype=x.dtype, device=x.device).index_add_(0, shell, x.flatten()[keep])

    num = shell_sum((fa * fb.conj()).real)
    den = torch.sqrt(shell_sum(fa.abs() ** 2) * shell_sum(fb.abs() ** 2))
    curve = (num / den.clamp_min(1e-300)).cpu().numpy()[1:]
    freq = np.arange(1, nshell) / (n * voxel_size)
    return FSCResult(frequency=freq, fsc=curve, voxel_size=float(voxel_size))


def plot_fsc(result: FSCResult, path, thresholds=(0.5, 0.143), title: str = "FSC") -> Path:
    """Save the FSC curve with the threshold crossings marked as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(result.frequency, result.fsc, lw=1.5)
    for t in thresholds:
        ax.axhline(t, ls="--", lw=0.8, color="gray")
        ax.annotate(f"{t}: {result.resolution(t):.1f} Å", (result.frequency[-1], t), ha="right", va="bottom", fontsize=8)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(title)
    return save_figure(fig, path)
