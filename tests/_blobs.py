"""Test helper: a tiny closed-form projector of a random 3D Gaussian-blob volume (not in the package)."""

import math

import torch

from cryoorient.geometry import quat_to_matrix


class BlobRenderer:
    """``render(q, generator) -> (B, size, size)``: the exact projection of ``n_blobs`` isotropic
    Gaussians (random centres within radius ``0.3·size``) along orientation ``q`` (RELION A),
    optionally shifted by up to ``max_shift`` pixels and with white noise of variance ``sigma2``."""

    def __init__(self, size=32, n_blobs=12, seed=0, sigma2=0.0, max_shift=0.0, width=2.0):
        g = torch.Generator().manual_seed(seed)
        self.centres = (torch.rand(n_blobs, 3, generator=g) * 2 - 1) * 0.3 * size
        self.weights = 0.5 + torch.rand(n_blobs, generator=g)
        self.size, self.sigma2, self.max_shift, self.width = size, sigma2, max_shift, width

    def __call__(self, q, generator):
        dev = q.device
        R = quat_to_matrix(q.double()).float()
        xy = torch.einsum("bij,kj->bki", R, self.centres.to(dev))[..., :2]
        if self.max_shift:
            xy = xy + (torch.rand(q.shape[0], 1, 2, generator=generator, device=dev) * 2 - 1) * self.max_shift
        grid = torch.arange(self.size, device=dev, dtype=torch.float32) - self.size // 2
        dx = grid[None, None, :] - xy[..., 0, None]
        dy = grid[None, None, :] - xy[..., 1, None]
        gx = torch.exp(-dx ** 2 / (2 * self.width ** 2))
        gy = torch.exp(-dy ** 2 / (2 * self.width ** 2))
        img = torch.einsum("bky,bkx,k->byx", gy, gx, self.weights.to(dev)) / (2 * math.pi * self.width ** 2)
        if self.sigma2:
            img = img + math.sqrt(self.sigma2) * torch.randn(img.shape, generator=generator, device=dev)
        return img


def blob_volume(size=32, n_blobs=12, seed=0, width=2.0):
    """A (size, size, size) [z, y, x] float32 map of the same kind of Gaussian blobs."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(n_blobs, 3, generator=g) * 2 - 1) * 0.3 * size
    weights = 0.5 + torch.rand(n_blobs, generator=g)
    axis = torch.arange(size, dtype=torch.float32) - size // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    vol = torch.zeros(size, size, size)
    for (cx, cy, cz), w in zip(centres, weights):
        vol += w * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * width ** 2))
    return vol.numpy()
