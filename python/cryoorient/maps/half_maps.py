"""Gold-standard half maps for :mod:`cryoorient.maps.refine`: the particles' random half sets reconstructed
at their current orientations and shifts, their FSC, and each particle group's reference (its half map
without the group, so that no particle meets its own noise; see the refine module's docstring).

Conventions (those of :mod:`cryoorient.maps.refine`): images (N, n, n) [y, x], centre n//2; quaternions
scalar-first of RELION's A; shifts t (pixels, x, y) move the particle by +t in its image; ``ctf(indices,
size)`` -> real CTFs (B, size, size // 2 + 1) on the ``rfft2`` grid; resolutions in Å.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from ..geometry import quat_to_matrix
from ..imaging.shift import shift_images
from .fsc import fsc
from .reconstruct import FourierInserter, check_finite_images
from .transforms import lowpass

__all__ = ["HalfMaps", "load_ctf", "load_images"]


def load_images(images, idx: Tensor, device) -> Tensor:
    """Images ``idx`` (B, n, n) float32 on ``device`` from a tensor, array or memmap; NaN or infinite pixels refused."""
    if torch.is_tensor(images):
        x = images[idx.to(images.device)]
    else:
        x = torch.from_numpy(np.ascontiguousarray(images[idx.cpu().numpy()]))
    x = x.to(device=device, dtype=torch.float32)
    check_finite_images(x, idx)
    return x


def load_ctf(ctf: Callable[[Tensor, int], Tensor], idx: Tensor, size: int, device) -> Tensor:
    """``ctf(idx, size)`` (B, size, size // 2 + 1) float32 on ``device``; a wrong shape refused."""
    c = torch.as_tensor(ctf(idx, size))
    want = (len(idx), size, size // 2 + 1)
    if tuple(c.shape) != want:
        raise ValueError(f"ctf(indices, {size}) must return shape {want}; got {tuple(c.shape)}")
    return c.to(device=device, dtype=torch.float32)


class HalfMaps:
    """Gold-standard half maps from the current orientations and shifts, and each particle group's
    reference: its half map without the group (``group``: each particle's group, 0..groups-1)."""

    def __init__(self, images, half, group, ctf, n, pad, weight_floor, pixel_size, min_band, device, batch_size):
        self.images, self.half, self.group, self.ctf = images, half, group, ctf
        self.n, self.pad, self.floor, self.device, self.batch = n, pad, weight_floor, device, batch_size
        self.pixel_size, self.min_band = pixel_size, min_band

    def half_maps(self, q: Tensor, t: Tensor, w: Optional[Tensor] = None):
        """The half sets' inserters (see :meth:`inserters`), their maps (2, n, n, n), FSC, FSC-0.143
        resolution (Å) and the Fourier radius (pixels, at least ``min_band``) the scores then use."""
        ins = self.inserters(q, t, w)
        maps = torch.stack([i.volume() for i in ins])
        curve = fsc(maps[0], maps[1], self.pixel_size)
        res = curve.resolution(0.143)
        band = min(max(self.n * self.pixel_size / res, self.min_band), self.n // 2 - 1)
        return ins, maps, curve, res, band

    def full_map(self, ins: list[FourierInserter], band: float) -> Tensor:
        """The map (n, n, n) of both half sets' inserters, low-pass filtered at Fourier radius ``band``."""
        full = self._new()
        full.data = ins[0].data + ins[1].data
        full.weight = ins[0].weight + ins[1].weight
        return lowpass(full.volume(), self.pixel_size, self.n * self.pixel_size / band).cpu()

    def references(self, ins: list[FourierInserter], maps: Tensor, q: Tensor, t: Tensor):
        """For each half set h and each group of its particles: ``(h, members, reference)``, the reference
        (n, n, n) being the half map ``maps[h]`` without the members' own images (inserted at q (N, 4),
        t (N, 2) into ``ins[h]``), or ``maps[h]`` itself with one group (module docstring)."""
        groups = int(self.group.max()) + 1
        for h in (0, 1):
            for g in range(groups):
                members = torch.nonzero((self.half == h) & (self.group == g)).squeeze(1)
                if len(members) == 0:
                    continue
                if groups == 1:
                    yield h, members, maps[h]
                    continue
                rest = self._new()
                for idx in members.split(self.batch):
                    self._insert(rest, idx, q[:, None], t[:, None], None)
                rest.data, rest.weight = ins[h].data - rest.data, ins[h].weight - rest.weight
                yield h, members, rest.volume()

    def inserters(self, q: Tensor, t: Tensor, w: Optional[Tensor] = None) -> list[FourierInserter]:
        """Half-set inserters of the particles at orientations q (N, 4) and shifts t (N, 2), or, for a
        soft assignment, each at C candidates q (N, C, 4), t (N, C, 2) of probabilities w (N, C)."""
        if w is None:
            q, t = q[:, None], t[:, None]
        out = []
        for h in (0, 1):
            ins = self._new()
            for idx in torch.nonzero(self.half == h).squeeze(1).split(self.batch):
                self._insert(ins, idx, q, t, w)
            out.append(ins)
        return out

    def _new(self) -> FourierInserter:
        return FourierInserter(self.n, pad=self.pad, device=self.device, weight_floor=self.floor)

    def _insert(self, ins: FourierInserter, idx: Tensor, q: Tensor, t: Tensor, w: Optional[Tensor]) -> None:
        """Insert particles ``idx`` at their C candidates q (N, C, 4), t (N, C, 2) of probabilities w (N, C)
        (None: C = 1, weight 1), those carrying at least 1 % of the particle's most probable one (the first).

        A particle's candidates at one orientation (equal quaternions: its shifts) go in as one image, the weighted mean of
        their shifted copies at their summed weight: the inserter's sums are linear in the image and the
        weight, so this is the same map with one insertion per orientation instead of one per candidate."""
        if len(idx) == 0:  # an empty half set (``torch.split`` of no particles gives one empty batch)
            return
        img = load_images(self.images, idx, self.device)
        c = None if self.ctf is None else load_ctf(self.ctf, idx, self.pad * self.n, self.device)
        qb, tb = q[idx].to(self.device), t[idx].to(self.device, torch.float32)
        if w is None:
            ins.insert(shift_images(img, -tb[:, 0]), quat_to_matrix(qb[:, 0]).float(), c)
            return
        wb = w[idx].to(self.device)
        mask = wb >= 0.01 * wb[:, :1]
        wb = torch.where(mask, wb, 0) / (wb * mask).sum(1, keepdim=True)
        # each kept candidate's group: the first kept candidate of the particle at its orientation
        same = (qb[:, :, None] == qb[:, None]).all(-1) & mask[:, None]
        first = same.int().argmax(2)
        lead = mask & (first == torch.arange(qb.shape[1], device=self.device))
        slot = torch.cumsum(lead.flatten(), 0).view_as(lead) - 1  # each leader's index among the leaders
        keep = mask.nonzero(as_tuple=True)
        group, wk = slot.gather(1, first)[keep], wb[keep].float()
        moved = shift_images(img[keep[0]], -tb[keep]) * wk[:, None, None]
        leaders = lead.nonzero(as_tuple=True)
        total = torch.zeros(len(leaders[0]), device=self.device).index_add_(0, group, wk)
        mean = torch.zeros(len(total), self.n, self.n, device=self.device).index_add_(0, group, moved)
        ins.insert(mean / total[:, None, None], quat_to_matrix(qb[leaders]).float(),
                   None if c is None else c[leaders[0]], total)
