"""Training plots: L_DE per epoch and the density of d̂_p against d_q (the paper's Fig. 6b).

Takes a training history (``Trainer.history``) or distances in radians; writes PNG files
(matplotlib, Agg backend).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..io.figure import save_figure

__all__ = ["plot_history", "plot_distance_density"]


def plot_history(history: list[dict], reference: dict, path) -> None:
    """Training and validation L_DE per epoch (log scale), with the reference levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="training (binned)")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    for key, style in (("untrained_val_loss", ":"), ("euclidean_isotonic_val_loss", "--")):
        if key in reference:
            ax.axhline(reference[key], ls=style, c="gray", label=key.replace("_val_loss", "").replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("L_DE (rad²)")
    ax.set_yscale("log")
    ax.legend()
    save_figure(fig, path)


def plot_distance_density(d_q: Tensor, d_p: Tensor, path, title: str = "") -> None:
    """2D histogram of estimated d̂_p against true d_q (the paper's Fig. 6b), radians."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = torch.as_tensor(d_q).detach().float().cpu().numpy()
    y = torch.as_tensor(d_p).detach().float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.hist2d(x, y, bins=50, range=[[0, math.pi], [0, math.pi]], cmap="viridis", cmin=1)
    ax.plot([0, math.pi], [0, math.pi], c="r", lw=0.8)
    ax.set_xlabel("d_q (rad)")
    ax.set_ylabel("estimated d_p (rad)")
    ax.set_title(title or f"{x.size} pairs")
    ax.set_aspect("equal")
    save_figure(fig, path)
