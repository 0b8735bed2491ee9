"""Simulated cryo-EM datasets: p = C_φ S_t P_θ x + n, written as RELION particles.

A dataset directory holds

* ``particles.mrcs`` — float32 image stack ``[n, size, size]``, pixel size = map voxel size;
* ``particles.star`` — RELION 3.1 STAR file with the ground truth: ``rlnAngleRot/Tilt/Psi``
  (degrees; the images are generated from ``A = geometry.euler_to_matrix`` of exactly these
  values), ``rlnOriginXAngst/YAngst`` and, with a CTF, ``rlnDefocusU/V``, ``rlnDefocusAngle``,
  ``rlnCtfBfactor``, ``rlnPhaseShift`` plus the optics group (voltage, Cs, Q0);
* ``simulation.json`` — every setting, the normalisation and the noise level.

Conventions
-----------
* Orientation: see :mod:`cryoorient.project` (RELION's ``A``, map frame -> image frame).
* Shift ``t`` (pixels, x/y): the projection is translated by ``+t`` (``S_t p(s) = p(s − t)``,
  :mod:`cryoorient.shift`). RELION's origin is what brings the particle back to the centre,
  so ``rlnOriginXAngst = −t_x · pixel_size`` (likewise y); RELION's ``predictObservation``
  shifts the reference projection by ``−origin``, which reproduces our images.
* Normalisation (the paper's "global standardisation", §3.1): clean images (projection,
  shift, CTF) are mapped by one affine map ``(p − μ) / s`` for the whole dataset, ``μ`` and
  ``s`` the pixel mean and standard deviation of the pilot: the first chunks that cover
  1,000 images (or all of them if fewer).
  Then noise ``n ~ N(0, σ² I)`` is added. ``snr_db`` sets ``σ² = S / 10^(snr_db/10)`` with
  ``S`` the signal variance of those images (:mod:`cryoorient.noise`; ``S`` ≈ 1 after the
  normalisation, so the paper's σ² = 16 is ≈ −12 dB).
* Projector: :class:`cryoorient.project.FourierProjector` with ``pad``-fold oversampling.
  ``interpolation="auto"`` (default) uses cubic B-spline interpolation on CUDA (≈ 0.05 % error
  against closed-form projections) and trilinear on the CPU, 5–8× faster there with ≈ 2.5 %
  error (far below any realistic noise level); ``"cubic"`` or ``"linear"`` force one.
  ``projector="astra"`` projects with the ASTRA Toolbox's GPU ray integrator instead
  (:mod:`cryoorient.imaging.astra`, same convention; shifts and CTF as for the native one).
* Randomness: all per-particle parameters (angles, shifts, defocus) are drawn on the CPU in
  float64 from ``seed`` and do not depend on the device or the chunk size. The noise is
  drawn chunk by chunk on the compute device from ``seed`` and the chunk's first index: the
  same ``seed``, device type and ``chunk_size`` give the same stack.
* Writing is atomic (``io.output_dir``): everything goes to a temporary directory next to the
  target, renamed into place at the end; on any error or interruption nothing is left behind.
  An existing target is refused unless ``force=True``, and even then unless cryoorient wrote it
  (then it is replaced only once the new dataset is complete).
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from .. import __version__
from .ctf import ctf_2d, random_defocus
from ..geometry import (
    asymmetric_unit_quaternions, euler_to_matrix, euler_to_quat, quat_to_euler, random_euler, random_quaternions,
)
from .noise import add_white_noise, sigma2_for_snr, signal_variance
from .project import FourierProjector
from .shift import SHIFT_DISTRIBUTIONS, random_shifts

__all__ = [
    "SimulationSettings",
    "ParticleParameters",
    "draw_parameters",
    "load_volume",
    "simulated_particles",
    "ImageSimulator",
    "simulate",
    "SimulatedDataset",
    "load_dataset",
    "simulation_bytes",
    "ORIENTATION_MODES",
]

#: Orientation distributions: uniform on SO(3); independent uniform RELION Euler angles within
#: ``euler_ranges`` (not uniform on SO(3), the paper's footnote 6); uniform on the asymmetric unit of
#: ``symmetry`` (``geometry.asymmetric_unit_quaternions``).
ORIENTATION_MODES = ("uniform", "euler", "asymmetric_unit")
#: Projectors: the native Fourier-slice one, or ASTRA's ray integrator (GPU; optional).
PROJECTORS = ("fourier", "astra")
STACK_NAME, STAR_NAME, SETTINGS_NAME = "particles.mrcs", "particles.star", "simulation.json"
PILOT_IMAGES = 1000


@dataclass
class SimulationSettings:
    """Parameters of a simulated dataset (lengths in Å, angles in degrees, voltage in kV, Cs in mm)."""

    n: int
    size: int | None = None
    orientations: str = "uniform"
    euler_ranges: tuple = ((-180.0, 180.0), (0.0, 180.0), (-180.0, 180.0))
    symmetry: str = "C1"
    shift_distribution: str = "triangular"
    shift_max: float = 0.0
    shift_unit: str = "px"
    ctf: bool = False
    defocus_min: float = 10000.0
    defocus_max: float = 25000.0
    astigmatism: float = 0.0
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    b_factor: float = 0.0
    phase_shift: float = 0.0
    snr_db: float | None = None
    sigma2: float | None = None
    normalize: bool = True
    seed: int = 0
    chunk_size: int = 1000
    interpolation: str = "auto"
    pad: float = 2.0
    projector: str = "fourier"

    def check(self) -> None:
        """Raise ValueError naming the first bad setting."""
        _positive_int(self.n, "n (number of projections)")
        if self.size is not None:
            _positive_int(self.size, "size (image edge, pixels)")
            if self.size < 2:
                raise ValueError(f"size (image edge) must be >= 2 pixels, got {self.size}")
        _positive_int(self.chunk_size, "chunk_size")
        if self.orientations not in ORIENTATION_MODES:
            raise ValueError(f"orientations must be one of {ORIENTATION_MODES}, got {self.orientations!r}")
        ranges = np.asarray(self.euler_ranges, dtype=float)
        if ranges.shape != (3, 2) or not np.all(np.isfinite(ranges)) or np.any(ranges[:, 0] > ranges[:, 1]):
            raise ValueError(f"euler_ranges must be 3 (low, high) pairs in degrees, got {self.euler_ranges!r}")
        if self.shift_distribution not in SHIFT_DISTRIBUTIONS:
            raise ValueError(f"shift_distribution must be one of {SHIFT_DISTRIBUTIONS}, got {self.shift_distribution!r}")
        if not (math.isfinite(self.shift_max) and self.shift_max >= 0):
            raise ValueError(f"shift_max must be a finite number >= 0, got {self.shift_max!r}")
        if self.shift_unit not in ("px", "A"):
            raise ValueError(f"shift_unit must be 'px' or 'A', got {self.shift_unit!r}")
        if self.snr_db is not None and self.sigma2 is not None:
            raise ValueError("give either snr_db or sigma2, not both")
        if self.sigma2 is not None and not (math.isfinite(self.sigma2) and 0 <= self.sigma2 <= 1e6):
            raise ValueError(f"sigma2 (noise variance) must be in [0, 1e6], got {self.sigma2!r}")
        if self.snr_db is not None and not (math.isfinite(self.snr_db) and -60 <= self.snr_db <= 60):
            raise ValueError(f"snr_db must be a finite number of dB in [-60, 60], got {self.snr_db!r}")
        if self.ctf:
            random_defocus(0, self.defocus_min, self.defocus_max, self.astigmatism)  # validates the ranges
            ctf_2d(2, 1.0, self.defocus_min, voltage=self.voltage, cs=self.cs,
                   amplitude_contrast=self.amplitude_contrast, b_factor=self.b_factor, phase_shift=self.phase_shift)
        if self.projector not in PROJECTORS:
            raise ValueError(f"projector must be one of {PROJECTORS}, got {self.projector!r}")
        if self.interpolation not in ("auto", "cubic", "linear"):
            raise ValueError(f"interpolation must be 'auto', 'cubic' or 'linear', got {self.interpolation!r}")
        if isinstance(self.pad, bool) or not isinstance(self.pad, (int, float)) or not 1 <= self.pad <= 8:
            raise ValueError(f"pad (Fourier oversampling) must be a number in [1, 8], got {self.pad!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")


def _positive_int(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


@dataclass
class ParticleParameters:
    """Ground truth of every particle (CPU float64 tensors, first dimension n).

    ``angles``: RELION (rot, tilt, psi) degrees (n, 3); ``shifts``: (n, 2) pixels (x, y), the image
    content is moved by +t; ``defocus``: (n, 3) (U Å, V Å, angle °) or None without a CTF.
    """

    angles: Tensor
    shifts: Tensor
    defocus: Tensor | None = None

    @property
    def matrices(self) -> Tensor:
        """RELION matrices ``A`` (n, 3, 3)."""
        return euler_to_matrix(*self.angles.unbind(1))

    @property
    def quaternions(self) -> Tensor:
        """Quaternions (n, 4), ``w >= 0``, of ``A`` (``geometry.euler_to_quat``)."""
        return euler_to_quat(*self.angles.unbind(1))


def draw_parameters(settings: SimulationSettings, pixel_size: float) -> ParticleParameters:
    """Draw every particle's orientation, shift and defocus from ``settings.seed`` (CPU, float64)."""
    settings.check()
    n = settings.n
    seeds = np.random.SeedSequence(settings.seed).generate_state(3, dtype=np.uint64)
    streams = [torch.Generator().manual_seed(int(s)) for s in seeds]
    if settings.orientations == "euler":
        rot_r, tilt_r, psi_r = (tuple(r) for r in settings.euler_ranges)
        angles = torch.stack(random_euler(n, rot_r, tilt_r, psi_r, generator=streams[0], dtype=torch.float64), 1)
    else:
        if settings.orientations == "uniform":
            q = random_quaternions(n, generator=streams[0], dtype=torch.float64)
        else:
            q = asymmetric_unit_quaternions(n, settings.symmetry, generator=streams[0], dtype=torch.float64)
        angles = torch.stack(quat_to_euler(q), 1)
    scale = 1.0 if settings.shift_unit == "px" else 1.0 / pixel_size
    shifts = random_shifts(n, settings.shift_distribution, settings.shift_max * scale, generator=streams[1])
    defocus = None
    if settings.ctf:
        defocus = torch.stack(
            random_defocus(n, settings.defocus_min, settings.defocus_max, settings.astigmatism, generator=streams[2]), 1
        )
        defocus = _star_round(defocus)
    # Round to what the STAR file stores (6 decimals), so that the file is the exact ground truth.
    origins = _star_round(-shifts * pixel_size)
    return ParticleParameters(_star_round(angles), -origins / pixel_size, defocus)


def _star_round(values: Tensor) -> Tensor:
    """Round to the 6 decimals that the STAR file stores."""
    return torch.round(values, decimals=6)


def load_volume(
    source, size: int | None = None, pixel_size: float | None = None, resolution: float | None = None
) -> tuple[np.ndarray, float]:
    """A cubic ``[z, y, x]`` float32 map and its voxel size (Å) from a map or an atomic model.

    ``source``: an ``.mrc``/``.map`` path (non-cubic maps are zero-padded to a cube,
    ``io.read_map(pad_to_cube=True)``), a ``.cif``/``.pdb`` path (density on a ``size``³ grid of
    ``pixel_size`` Å at ``resolution`` Å, default ``2·pixel_size``, ``io.density_from_model``),
    or a ``(volume, voxel_size)`` pair.
    """
    from ..io import density_from_model, pad_to_cube, read_map
    from ..io.structure import is_model_path

    if isinstance(source, tuple):
        volume, voxel = source
        volume = pad_to_cube(np.asarray(volume, dtype=np.float32))
    else:
        path = Path(os.fspath(source))
        if is_model_path(path):
            if size is None or pixel_size is None:
                raise ValueError(f"a map from the atomic model '{path}' needs size and pixel_size")
            res = 2.0 * pixel_size if resolution is None else resolution
            volume, voxel = density_from_model(path, size, pixel_size, res), float(pixel_size)
        else:
            volume, voxel = read_map(path, pad_to_cube=True, voxel_size=pixel_size)  # pixel_size overrides
    voxel = float(voxel)
    if not (math.isfinite(voxel) and voxel > 0):
        raise ValueError(f"the map's voxel size must be positive (Å), got {voxel!r}; pass --pixel-size")
    if volume.ndim != 3 or min(volume.shape) < 2:
        raise ValueError(f"the map must be 3D with at least 2 voxels per edge, got shape {volume.shape}")
    if not np.all(np.isfinite(volume)):
        raise ValueError("the map contains NaN or infinite values")
    if not np.any(volume):
        raise ValueError("the map is all zeros")
    return volume, voxel


class ImageSimulator:
    """Clean and noisy images of one map, chunk by chunk, on one device.

    ``ImageSimulator(volume, pixel_size, settings, params, device)``: ``volume`` a cubic
    ``[z, y, x]`` array or tensor. :meth:`clean` gives projection + shift + CTF (not normalised);
    :meth:`chunks` yields ``(start, images)`` with normalisation and noise applied. Building it
    computes the pilot (normalisation, noise level; see the module docstring).
    """

    def __init__(self, volume, pixel_size: float, settings: SimulationSettings, params: ParticleParameters,
                 device: torch.device | str = "cpu") -> None:
        settings.check()
        self.settings, self.params, self.pixel_size = settings, params, float(pixel_size)
        self.device = torch.device(device)
        vol = torch.as_tensor(volume, dtype=torch.float32).to(self.device)
        self.interpolation = settings.interpolation
        if self.interpolation == "auto":
            self.interpolation = "cubic" if self.device.type == "cuda" else "linear"
        if settings.projector == "astra":
            from .astra import AstraProjector, unavailable

            if (reason := unavailable()) is not None:
                raise ValueError(f"the ASTRA projector cannot run here: {reason}")
            self.projector = AstraProjector(vol, settings.size)
        else:
            self.projector = FourierProjector(vol, settings.size, settings.pad, self.interpolation)
        self.size = self.projector.size
        self.mean, self.std, self.sigma2, self.pilot_snr_db = 0.0, 1.0, 0.0, math.inf
        self._calibrate()

    def clean(self, start: int, stop: int) -> Tensor:
        """Projection, shift and CTF of particles ``start:stop``, (m, size, size) float32 on the device."""
        s, p = self.settings, self.params
        rot = euler_to_matrix(*p.angles[start:stop].unbind(1)).to(dtype=torch.float32)
        shifts = p.shifts[start:stop].to(dtype=torch.float32)
        ctf = None
        if s.ctf:
            d = p.defocus[start:stop]
            ctf = ctf_2d(self.projector.box, self.pixel_size, d[:, 0], d[:, 1], d[:, 2], s.voltage, s.cs,
                         s.amplitude_contrast, s.b_factor, s.phase_shift, device=self.device)
        return self.projector.images(rot.to(self.device), shifts.to(self.device), ctf)

    def _calibrate(self) -> None:
        """Normalisation and noise level from the pilot: the first chunks covering ``PILOT_IMAGES``
        images (or all); their clean images are kept and reused by :meth:`chunks`."""
        s = self.settings
        cs = s.chunk_size
        self.pilot = min(s.n, -(-PILOT_IMAGES // cs) * cs)
        self._cache = {a: self.clean(a, min(self.pilot, a + cs)) for a in range(0, self.pilot, cs)}
        total = sq = var = 0.0
        for img in self._cache.values():
            img = img.to(torch.float64)
            total += float(img.sum())
            sq += float((img * img).sum())
            var += signal_variance(img) * img.shape[0]
        count = self.pilot * self.size * self.size
        if s.normalize:
            self.mean = total / count
            self.std = math.sqrt(max(sq / count - self.mean**2, 0.0))
            if not self.std > 0:
                raise ValueError("the clean images are constant: nothing of the map falls in the image box")
        self.signal_variance = var / self.pilot / self.std**2
        if s.snr_db is not None:
            self.sigma2 = sigma2_for_snr(self.signal_variance, s.snr_db)
        elif s.sigma2 is not None:
            self.sigma2 = float(s.sigma2)
        self.pilot_snr_db = 10 * math.log10(self.signal_variance / self.sigma2) if self.sigma2 > 0 else math.inf

    def chunks(self) -> Iterator[tuple[int, Tensor]]:
        """Yield ``(first index, images)`` for all particles in chunks of ``chunk_size``: normalised
        clean images plus noise, float32 on the device."""
        s = self.settings
        for a in range(0, s.n, s.chunk_size):
            b = min(s.n, a + s.chunk_size)
            img = self._cache.pop(a) if a in self._cache else self.clean(a, b)
            if s.normalize:
                img = (img - self.mean) / self.std
            if self.sigma2 > 0:
                gen = torch.Generator(device=self.device).manual_seed(int(s.seed) * 1_000_003 + a)
                img = add_white_noise(img, self.sigma2, gen)
            yield a, img


def simulated_particles(params: ParticleParameters, settings: SimulationSettings, pixel_size: float, size: int,
                        root: Path):
    """The particle table of a simulation (``Particles``, images ``STACK_NAME`` in ``root``): its true angles,
    origins (Å, RELION's: minus the shifts) and CTF, as :func:`simulate` writes it to ``STAR_NAME``."""
    from ..io import Particles

    cols = dict(
        rot=params.angles[:, 0].numpy(), tilt=params.angles[:, 1].numpy(), psi=params.angles[:, 2].numpy(),
        origin_x_angst=(-params.shifts[:, 0] * pixel_size).numpy(),
        origin_y_angst=(-params.shifts[:, 1] * pixel_size).numpy(),
        voltage=settings.voltage, spherical_aberration=settings.cs, amplitude_contrast=settings.amplitude_contrast,
    )
    if params.defocus is not None:
        cols.update(defocus_u=params.defocus[:, 0].numpy(), defocus_v=params.defocus[:, 1].numpy(),
                    defocus_angle=params.defocus[:, 2].numpy(), phase_shift=settings.phase_shift,
                    rlnCtfBfactor=settings.b_factor)
    return Particles.create(STACK_NAME, np.arange(settings.n), pixel_size, size, root=root, **cols)


class _Writer(threading.Thread):
    """Background thread copying (start, array) blocks into a StackWriter, so that computing the
    next chunk overlaps writing the previous one."""

    def __init__(self, stack) -> None:
        super().__init__(daemon=True)
        self.stack, self.queue, self.error = stack, queue.Queue(maxsize=2), None

    def run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self.stack.write(*item)
                except BaseException as err:  # re-raised in the main thread
                    self.error = err

    def put(self, start: int, block: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((start, block))

    def close(self) -> None:
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error


def simulate(
    source,
    out_dir,
    settings: SimulationSettings,
    device: torch.device | str = "cpu",
    force: bool = False,
    progress: bool = True,
    pixel_size: float | None = None,
    resolution: float | None = None,
) -> Path:
    """Simulate ``settings.n`` particle images of ``source`` (see :func:`load_volume`) into ``out_dir``.

    Returns the dataset directory. Raises FileExistsError if it exists and ``force`` is False (or,
    with ``force``, was not written by cryoorient), ValueError for bad settings or maps, an output
    that would hold ``source`` (``io.check_output_dir``) or sizes that cannot fit on the disk or in
    memory (:func:`simulation_bytes`), FileNotFoundError / ``io.FormatError`` for bad files.
    """
    from tqdm.auto import tqdm

    from ..io import StackWriter, output_dir, write_star

    settings.check()
    out = Path(os.fspath(out_dir)).absolute()
    inputs = () if isinstance(source, tuple) else (source,)
    if settings.size is not None:  # before anything is read: n and size alone
        _require_room(settings, settings.size, out)
    with output_dir(out_dir, force=force, inputs=inputs) as tmp:
        volume, voxel = load_volume(source, settings.size, pixel_size, resolution)
        _require_room(settings, volume.shape[0], out)
        params = draw_parameters(settings, voxel)
        sim = ImageSimulator(volume, voxel, settings, params, device)
        with StackWriter(tmp / STACK_NAME, (settings.n, sim.size, sim.size), voxel) as stack:
            writer = _Writer(stack)
            writer.start()
            try:
                with tqdm(total=settings.n, unit="img", desc="simulate", disable=not progress) as bar:
                    for start, images in sim.chunks():
                        writer.put(start, images.cpu().numpy())
                        bar.update(images.shape[0])
            finally:
                writer.close()
        write_star(tmp / STAR_NAME, simulated_particles(params, settings, voxel, sim.size, tmp))
        record = {
            "cryoorient_version": __version__,
            "source": str(source) if not isinstance(source, tuple) else "array",
            "pixel_size": voxel,
            "map_size": int(volume.shape[0]),
            "image_size": sim.size,
            "device": str(sim.device),
            "interpolation": sim.interpolation,
            "settings": asdict(settings),
            "normalisation": {"mean": sim.mean, "std": sim.std, "pilot_images": sim.pilot},
            "noise": {"sigma2": sim.sigma2, "signal_variance": sim.signal_variance, "snr_db": sim.pilot_snr_db},
        }
        (tmp / SETTINGS_NAME).write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    return out


def simulation_bytes(settings: SimulationSettings, map_edge: int) -> tuple[int, int]:
    """Lower bounds of the ``(disk, memory)`` bytes that simulating ``settings`` from a map of edge
    ``map_edge`` takes: the float32 stack and STAR rows; the oversampled Fourier grid (float32 box
    and its complex64 transform), one chunk of images and the float64 per-particle table."""
    size = settings.size or map_edge
    grid = round(settings.pad * max(size, map_edge))
    disk = settings.n * (4 * size * size + 100)
    memory = 12 * grid**3 + 4 * min(settings.chunk_size, settings.n) * size * size + 64 * settings.n
    return disk, memory


def _require_room(settings: SimulationSettings, map_edge: int, out: Path) -> None:
    from ..io import require_resources

    size = settings.size or map_edge
    require_resources(out, *simulation_bytes(settings, map_edge),
                      what=f"simulating {settings.n:,} images of {size}×{size} px")


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"not JSON serialisable: {value!r}")


@dataclass
class SimulatedDataset:
    """A dataset read back: ``images`` (memory-mapped [n, size, size]), ``particles`` (``io.Particles``),
    the ground truth as :class:`ParticleParameters`, and ``record`` (``simulation.json``)."""

    images: np.ndarray
    particles: object
    params: ParticleParameters
    record: dict = field(default_factory=dict)

    @property
    def pixel_size(self) -> float:
        return float(self.record["pixel_size"])


def load_dataset(path) -> SimulatedDataset:
    """Read a directory written by :func:`simulate`."""
    from ..io import read_stack, read_star

    root = Path(os.fspath(path))
    if not (root / SETTINGS_NAME).is_file():
        raise FileNotFoundError(f"'{root}' is not a simulated dataset (no {SETTINGS_NAME})")
    record = json.loads((root / SETTINGS_NAME).read_text())
    particles = read_star(root / STAR_NAME)
    images, _ = read_stack(root / STACK_NAME)
    px = float(record["pixel_size"])
    angles = torch.from_numpy(particles.angles).to(torch.float64)
    shifts = -torch.from_numpy(np.stack([particles.origin_x_angst, particles.origin_y_angst], 1)) / px
    defocus = None
    if particles.defocus_u is not None:
        defocus = torch.from_numpy(np.stack([particles.defocus_u, particles.defocus_v, particles.defocus_angle], 1))
    return SimulatedDataset(images, particles, ParticleParameters(angles, shifts, defocus), record)
