"""Siamese network that estimates orientation distances from projections (paper §2.2).

``d̂_p(p_i, p_j) = d_f(G_w(p_i), G_w(p_j))`` where ``G_w`` is a fully convolutional
feature extractor ending in global average pooling (so features are invariant to
circular-ish shifts up to boundary effects and have a fixed size whatever the image
size), and ``d_f`` is the cosine distance mapped to radians in [0, π]:

    d_p = 2·arccos(clamp(cos(f_i, f_j), 0, 1))

Both architectures end in ReLU before the pooling, so features are non-negative and
``cos >= 0`` always: the clamp at 0 never cuts a gradient in practice.

Conventions: images are ``(N, H, W)`` or ``(N, 1, H, W)`` floating tensors (any
H, W >= 8; square or not); distances are radians. ``EuclideanBaseline`` is the
paper's Appendix E baseline ``‖p_i − p_j‖``, calibrated to radians, with the
same ``features``/``distance``/``pairwise_distance`` interface.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ARCHITECTURES",
    "SiameseConfig",
    "SiameseNet",
    "EuclideanBaseline",
    "feature_distance",
    "pairwise_feature_distance",
    "check_images",
]

ARCHITECTURES = ("paper", "resnet")
MIN_IMAGE_SIZE = 8
_FORMAT = "cryoorient.siamese"
# Largest cosine fed to arccos in the all-pairs form: keeps d(arccos)/dcos finite (~2200 in float32).
_COS_MAX = 1.0 - 1e-7


# --------------------------------------------------------------------------- #
# distances in feature space
# --------------------------------------------------------------------------- #
def feature_distance(fa: Tensor, fb: Tensor) -> Tensor:
    """Row-wise ``2·arccos(clamp(cos(fa, fb), 0, 1))`` in radians (broadcast over leading dims).

    Computed as ``min(4·atan2(|u − v|, |u + v|), π)`` with ``u, v`` the unit features
    (float32 at least): exact at ``fa == fb`` (0) and with a finite gradient there,
    unlike ``arccos`` whose derivative diverges at ``cos = 1``.
    """
    fa, fb = _as_float(fa), _as_float(fb)
    u = F.normalize(fa, dim=-1, eps=1e-12)
    v = F.normalize(fb, dim=-1, eps=1e-12)
    angle = 4.0 * torch.atan2(torch.linalg.vector_norm(u - v, dim=-1), torch.linalg.vector_norm(u + v, dim=-1))
    return angle.clamp(max=math.pi)


def pairwise_feature_distance(fa: Tensor, fb: Optional[Tensor] = None) -> Tensor:
    """All-pairs distance matrix ``(Na, Nb)`` (``fb = fa`` if None), radians in [0, π].

    One float32 matmul of unit features, ``d = 2·arccos(clamp(cos, 0, 1 − 1e-7))``: off by
    at most ~1e-3 rad at identical features (the diagonal), with a bounded gradient.
    """
    fa = _as_float(fa)
    fb = fa if fb is None else _as_float(fb)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise ValueError(f"features must be (Na, F) and (Nb, F), got {tuple(fa.shape)} and {tuple(fb.shape)}")
    u = F.normalize(fa, dim=-1, eps=1e-12)
    v = F.normalize(fb, dim=-1, eps=1e-12)
    with torch.autocast(u.device.type, enabled=False):
        cos = u @ v.T
    return 2.0 * torch.arccos(cos.clamp(0.0, _COS_MAX))


def _as_float(f: Tensor) -> Tensor:
    if not isinstance(f, Tensor) or not f.is_floating_point():
        raise TypeError(f"features must be a floating tensor, got {getattr(f, 'dtype', type(f).__name__)}")
    return f.float() if f.dtype in (torch.float16, torch.bfloat16) else f


def check_images(images, name: str = "images") -> Tensor:
    """Validate a stack of images and return it as ``(N, 1, H, W)`` (a view; dtype kept).

    Accepts ``(N, H, W)`` or ``(N, 1, H, W)`` floating tensors or numpy arrays with
    ``H, W >= 8``. Raises TypeError for non-floating data, ValueError for bad shapes.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a tensor or numpy array, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"{name} must have shape (N, H, W) or (N, 1, H, W), got {tuple(images.shape)}")
    if min(images.shape[-2:]) < MIN_IMAGE_SIZE:
        raise ValueError(f"{name} must be at least {MIN_IMAGE_SIZE}×{MIN_IMAGE_SIZE} pixels, got {tuple(images.shape[-2:])}")
    return images


# --------------------------------------------------------------------------- #
# feature extractors G_w
# --------------------------------------------------------------------------- #
class _PaperCNN(nn.Sequential):
    """The paper's G_w (Appendix G): 7 × [conv (same padding) → ReLU → 2×2 max-pool] → GAP.

    Kernels 7, 5, then 3. Pooling uses ``ceil_mode`` (Keras ``padding='same'``), so a
    side of length L becomes ceil(L/2) and never reaches 0: 116 → 58 → 29 → 15 → 8 →
    4 → 2 → 1; smaller images just stay at 1×1 for the last layers. ~4.55 M weights.
    """

    def __init__(self, widths: Sequence[int]):
        layers, c_in = [], 1
        for i, c in enumerate(widths):
            k = 7 if i == 0 else 5 if i == 1 else 3
            layers += [nn.Conv2d(c_in, c, k, padding=k // 2), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            c_in = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)


class _BlurPool(nn.Module):
    """Anti-aliased 2× downsampling (Zhang 2019): binomial [1, 2, 1]² blur, then stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 16).expand(channels, 1, 3, 3).contiguous())
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="circular")
        return F.conv2d(x, self.kernel.to(x.dtype), stride=2, groups=self.channels)


def _conv(c_in: int, c_out: int, k: int) -> nn.Conv2d:
    """k×k 'same' convolution with circular padding: no image border for the network to
    locate the particle against, so features are equivariant to circular shifts."""
    return nn.Conv2d(c_in, c_out, k, padding=k // 2, padding_mode="circular", bias=False)


def _norm(kind: str, c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if kind == "batch" else nn.GroupNorm(min(32, c // 4), c)


class _Block(nn.Module):
    """Residual basic block: conv3-norm-ReLU-conv3-norm + shortcut (1×1 conv-norm if widths differ), ReLU."""

    def __init__(self, c_in: int, c_out: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            _conv(c_in, c_out, 3), _norm(norm, c_out), nn.ReLU(inplace=True),
            _conv(c_out, c_out, 3), _norm(norm, c_out),
        )
        self.shortcut = (
            nn.Identity() if c_in == c_out else nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), _norm(norm, c_out))
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class _ResNet(nn.Sequential):
    """Residual G_w: 5×5 stem, then per stage an anti-aliased 2× downsampling and ``depth``
    residual blocks; ReLU'd output → GAP. All padding is circular, so the features are
    exactly invariant to circular shifts by multiples of ``2**stages`` pixels and nearly so
    for other shifts (blur pooling). Particles sit on a ~0 background, for which a circular
    shift is a translation."""

    def __init__(self, widths: Sequence[int], depths: Sequence[int], norm: str):
        layers = [_conv(1, widths[0], 5), _norm(norm, widths[0]), nn.ReLU(inplace=True)]
        c_in = widths[0]
        for c, depth in zip(widths, depths):
            layers.append(_BlurPool(c_in))
            for _ in range(depth):
                layers.append(_Block(c_in, c, norm))
                c_in = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)


@dataclass
class SiameseConfig:
    """Architecture of a :class:`SiameseNet` (everything needed to rebuild it).

    arch: ``"paper"`` (the paper's 7-layer CNN) or ``"resnet"`` (residual blocks,
    BatchNorm/GroupNorm, anti-aliased pooling). widths: channels per conv layer
    (paper) or per stage (resnet); the last is the feature size. depths: residual
    blocks per stage (resnet). norm: ``"batch"`` or ``"group"`` (resnet).
    normalize_input: standardise each image (zero mean, unit variance) first;
    default False for ``paper`` (as published) and True for ``resnet``.
    """

    arch: str = "paper"
    widths: Sequence[int] = ()
    depths: Sequence[int] = ()
    norm: str = "batch"
    normalize_input: Optional[bool] = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {ARCHITECTURES}")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"norm must be 'batch' or 'group', got {self.norm!r}")
        if self.arch == "paper":
            self.widths = tuple(self.widths) or (32, 64, 128, 256, 256, 512, 512)
            self.depths = ()
        else:
            self.widths = tuple(self.widths) or (32, 64, 128, 256, 512)
            self.depths = tuple(self.depths) or (1, 2, 2, 2, 1)
            if len(self.depths) != len(self.widths):
                raise ValueError(f"resnet needs one depth per stage: widths {self.widths}, depths {self.depths}")
        if any(int(w) < 1 for w in self.widths) or any(int(d) < 1 for d in self.depths):
            raise ValueError(f"widths and depths must be positive, got {self.widths}, {self.depths}")
        if self.normalize_input is None:
            self.normalize_input = self.arch == "resnet"

    @property
    def num_features(self) -> int:
        return int(self.widths[-1])

    def to_dict(self) -> dict:
        """Plain-Python form (lists for tuples), as stored in model files and checkpoints."""
        d = asdict(self)
        d["widths"], d["depths"] = [int(w) for w in d["widths"]], [int(x) for x in d["depths"]]
        return d


class SiameseNet(nn.Module):
    """Twin network ``d̂_p(p_i, p_j) = d_f(G_w(p_i), G_w(p_j))`` (radians).

    ``SiameseNet("paper")`` or ``SiameseNet(SiameseConfig(...))``; keyword arguments
    fill a :class:`SiameseConfig`. ``forward(a, b)`` gives row-wise distances with
    gradients; :meth:`features` is the batched inference path (eval mode, autocast
    on GPU, optional ``torch.compile``); :meth:`distance` / :meth:`pairwise_distance`
    compare features; :meth:`save` / :meth:`load` use one ``.pt`` file with the config.
    """

    def __init__(self, config: Union[SiameseConfig, str, None] = None, **kwargs):
        super().__init__()
        if isinstance(config, str):
            config = SiameseConfig(arch=config, **kwargs)
        elif config is None:
            config = SiameseConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a SiameseConfig or keyword arguments, not both")
        self.config = config
        if config.arch == "paper":
            self.extractor = _PaperCNN(config.widths)
        else:
            self.extractor = _ResNet(config.widths, config.depths, config.norm)
        self._compiled = None

    # -- features ----------------------------------------------------------- #
    @property
    def num_features(self) -> int:
        return self.config.num_features

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def compile(self, **kwargs) -> "SiameseNet":
        """Use ``torch.compile(extractor, **kwargs)`` for every forward (weights shared)."""
        object.__setattr__(self, "_compiled", torch.compile(self.extractor, **kwargs))
        return self

    def embed(self, images: Tensor) -> Tensor:
        """Features ``(N, F)`` of images ``(N, [1,] H, W)`` with autograd (training path).

        Images go to the network's device and dtype layout (channels_last on CUDA);
        call inside ``torch.autocast`` for mixed precision. No value checks (hot path).
        """
        x = check_images(images).to(self.device, non_blocking=True)
        x = x.float()
        if self.config.normalize_input:
            mean = x.mean(dim=(-2, -1), keepdim=True)
            std = x.std(dim=(-2, -1), keepdim=True)
            x = (x - mean) / (std + 1e-6)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        run = self._compiled if self._compiled is not None else self.extractor
        return run(x)

    @torch.no_grad()
    def features(self, images, batch_size: int = 1024, amp: Union[bool, torch.dtype] = True) -> Tensor:
        """Features ``(N, F)`` float32 on the network's device, in eval mode, batch by batch.

        ``images``: ``(N, [1,] H, W)`` tensor or numpy array on any device (moved per batch);
        non-finite values raise ValueError. ``amp``: True for bfloat16 autocast on CUDA
        (float16 where bf16 is unsupported), a dtype to choose, False for float32.
        """
        images = check_images(images)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = self.device
        dtype = _autocast_dtype(device, amp)
        was_training = self.training
        self.eval()
        try:
            out = []
            for start in range(0, images.shape[0], batch_size):
                x = images[start:start + batch_size].to(device, non_blocking=True)
                if not torch.isfinite(x).all():
                    raise ValueError(f"images {start}..{start + x.shape[0] - 1} contain NaN or infinite values")
                with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                    out.append(self.embed(x).float())
        finally:
            self.train(was_training)
        if not out:
            return torch.empty(0, self.num_features, device=device)
        return torch.cat(out)

    # -- distances ---------------------------------------------------------- #
    @staticmethod
    def distance(fa: Tensor, fb: Tensor) -> Tensor:
        """Row-wise d̂_p of features (radians); see :func:`feature_distance`."""
        return feature_distance(fa, fb)

    @staticmethod
    def pairwise_distance(fa: Tensor, fb: Optional[Tensor] = None) -> Tensor:
        """All-pairs d̂_p matrix of features (radians); see :func:`pairwise_feature_distance`."""
        return pairwise_feature_distance(fa, fb)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """d̂_p(a_k, b_k) for two equal-length image stacks, with gradients (one forward pass)."""
        a, b = check_images(a, "a"), check_images(b, "b")
        if a.shape != b.shape:
            raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        f = self.embed(torch.cat((a, b)))
        return feature_distance(f[: a.shape[0]], f[a.shape[0]:])

    # -- persistence -------------------------------------------------------- #
    def save(self, path: Union[str, os.PathLike], overwrite: bool = False, **metadata) -> None:
        """Write config, weights and ``metadata`` (plain Python values) to one ``.pt`` file, atomically."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
        payload = {
            "format": _FORMAT,
            "version": 1,
            "config": self.config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "metadata": metadata,
        }
        atomic_save(payload, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], map_location="cpu") -> "SiameseNet":
        """Rebuild a network written by :meth:`save` (its metadata in ``.metadata``)."""
        payload = _load_payload(path, map_location)
        cfg = payload["config"]
        model = cls(SiameseConfig(**cfg))
        model.load_state_dict(payload["state_dict"])
        model.metadata = payload.get("metadata", {})
        return model


def _load_payload(path, map_location) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling/zip errors come in many types
        raise ValueError(f"{path} is not a cryoorient model file ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a cryoorient Siamese network file")
    return payload


def atomic_save(obj, path: Union[str, os.PathLike]) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _autocast_dtype(device: torch.device, amp: Union[bool, torch.dtype]) -> Optional[torch.dtype]:
    """Autocast dtype for inference/training on ``device``: None = float32."""
    if isinstance(amp, torch.dtype):
        if amp not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"amp dtype must be bfloat16, float16 or float32, got {amp}")
        return None if amp == torch.float32 else amp
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# --------------------------------------------------------------------------- #
# Euclidean baseline (Appendix E)
# --------------------------------------------------------------------------- #
class EuclideanBaseline:
    """The paper's baseline ``d̂_p = g(‖p_i − p_j‖₂)`` with ``g`` fitted to radians.

    The raw Euclidean distance has no unit of angle, so it is calibrated on training
    pairs by :meth:`fit`: ``kind="isotonic"`` (best non-decreasing map, least squares;
    the strongest monotone calibration, hence the fairest comparison) or
    ``"linear"`` (least-squares ``a·x + b``). The output is clipped to [0, π].
    """

    def __init__(self):
        self.knots_x: Optional[np.ndarray] = None
        self.knots_y: Optional[np.ndarray] = None

    @staticmethod
    def features(images, batch_size: int = 1024) -> Tensor:
        """Flattened images ``(N, H·W)`` float32 (the 'features' of this baseline)."""
        images = check_images(images)
        return images.reshape(images.shape[0], -1).float()

    def fit(self, fa: Tensor, fb: Tensor, d_q: Tensor, kind: str = "isotonic") -> "EuclideanBaseline":
        """Fit ``g`` on pairs (row-wise features ``fa``, ``fb``) with true distances ``d_q``."""
        x = torch.linalg.vector_norm(fa - fb, dim=-1).double().cpu().numpy()
        y = torch.as_tensor(d_q).double().cpu().numpy().reshape(-1)
        if x.shape != y.shape or x.size < 2:
            raise ValueError(f"need >= 2 pairs with one d_q each, got {x.size} pairs and {y.size} distances")
        if kind == "linear":
            a, b = np.polyfit(x, y, 1)
            lo, hi = x.min(), x.max()
            self.knots_x, self.knots_y = np.array([lo, hi]), np.array([a * lo + b, a * hi + b])
        elif kind == "isotonic":
            self.knots_x, self.knots_y = _isotonic_knots(x, y)
        else:
            raise ValueError(f"kind must be 'isotonic' or 'linear', got {kind!r}")
        return self

    def _calibrate(self, x: Tensor) -> Tensor:
        if self.knots_x is None:
            raise RuntimeError("EuclideanBaseline.fit must be called before computing distances")
        kx = torch.as_tensor(self.knots_x, dtype=x.dtype, device=x.device)
        ky = torch.as_tensor(self.knots_y, dtype=x.dtype, device=x.device)
        if kx.numel() == 1:
            return ky.expand_as(x).clamp(0.0, math.pi)
        # Piecewise-linear through the knots, constant beyond the end knots (like np.interp).
        x = x.clamp(kx[0], kx[-1])
        i = torch.searchsorted(kx, x.contiguous()).clamp(1, kx.numel() - 1)
        x0, x1, y0, y1 = kx[i - 1], kx[i], ky[i - 1], ky[i]
        t = (x - x0) / torch.where(x1 > x0, x1 - x0, torch.ones_like(x1))
        return (y0 + t * (y1 - y0)).clamp(0.0, math.pi)

    def distance(self, fa: Tensor, fb: Tensor) -> Tensor:
        """Calibrated row-wise distance (radians)."""
        return self._calibrate(torch.linalg.vector_norm(fa.float() - fb.float(), dim=-1))

    def pairwise_distance(self, fa: Tensor, fb: Optional[Tensor] = None) -> Tensor:
        """Calibrated all-pairs distance matrix (radians)."""
        fb = fa if fb is None else fb
        return self._calibrate(torch.cdist(fa.float(), fb.float()))


def _isotonic_knots(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares non-decreasing fit of y on x (pool adjacent violators); returns
    the block centres (mean x) and block values, both increasing."""
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    vals, wts, xsum = [], [], []
    for xi, yi in zip(xs, ys):
        vals.append(yi)
        wts.append(1.0)
        xsum.append(xi)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w = wts[-2] + wts[-1]
            v = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w
            s = xsum[-2] + xsum[-1]
            del vals[-1], wts[-1], xsum[-1]
            vals[-1], wts[-1], xsum[-1] = v, w, s
    kx = np.asarray(xsum) / np.asarray(wts)
    return kx, np.asarray(vals)


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
