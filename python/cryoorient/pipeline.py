"""The end-to-end steps shared by the command line and the demo.

images → SNN features → estimated distances d̂_p → orientations (L_OR) → RELION STAR.
Recovered orientations are defined only up to a global rotation and reflection
(handedness): the frame they are written in is arbitrary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .geometry import quat_to_euler
from .recover import DistanceFunction, RecoveryResult, recover_orientations


def image_features(model, images, *, batch_size: int = 512, progress: bool = False) -> Tensor:
    """SNN features (N, F) of an image stack (array, memmap or tensor), computed batch by batch."""
    from tqdm.auto import tqdm

    n = len(images)
    if n < 2:
        raise ValueError(f"need at least 2 images to recover orientations; got {n}")
    chunks = []
    for s in tqdm(range(0, n, batch_size), desc="features", unit="batch", disable=not progress):
        chunks.append(model.features(np.asarray(images[s : s + batch_size], dtype=np.float32), batch_size=batch_size))
    return torch.cat(chunks)


DENSE_LIMIT = 8192  # up to this many projections d̂ is computed once for all pairs (≤ 256 MiB)


def recover_from_features(model, features: Tensor, **options) -> RecoveryResult:
    """Recover orientations with d̂_ij = model.distance(f_i, f_j) (options: see ``recover_orientations``).

    Up to ``DENSE_LIMIT`` projections the distance matrix is computed once (in row blocks)
    and looked up; beyond, d̂ is computed for each sampled batch of pairs.
    """
    f = features
    P = f.shape[0]
    if P <= DENSE_LIMIT:
        D = torch.cat([model.pairwise_distance(f[s : s + 1024], f) for s in range(0, P, 1024)])

        def distance(i: Tensor, j: Tensor) -> Tensor:
            return D[i.to(D.device), j.to(D.device)].to(i.device)
    else:

        def distance(i: Tensor, j: Tensor) -> Tensor:
            return model.distance(f[i.to(f.device)], f[j.to(f.device)]).to(i.device)

    return recover_orientations(DistanceFunction(distance, P), **options)


def write_recovered_star(particles, q: Tensor, path, overwrite: bool = False) -> Path:
    """Write ``particles`` with rlnAngleRot/Tilt/Psi from quaternions ``q`` (RELION A convention).

    Origins are set to 0: the method recovers orientations, not shifts (the SNN features
    are shift-invariant). CTF and optics are kept.
    """
    from .io import write_star

    if q.shape[0] != len(particles):
        raise ValueError(f"{q.shape[0]} orientations for {len(particles)} particles")
    out = particles.copy()
    rot, tilt, psi = quat_to_euler(q.detach().double().cpu())
    out.rot, out.tilt, out.psi = rot.numpy(), tilt.numpy(), psi.numpy()
    out.origin_x_angst = np.zeros(len(out))
    out.origin_y_angst = np.zeros(len(out))
    write_star(path, out, overwrite=overwrite)
    return Path(path)
