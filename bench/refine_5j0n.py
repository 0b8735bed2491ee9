"""Refinement benchmark on 5j0n: accuracy from perturbed truth at several noise levels, and speed.

    python bench/refine_5j0n.py                      # accuracy table: 1,650 images of 64², clean/0/-6/-12 dB
    python bench/refine_5j0n.py --noise clean --threads 2          # CPU speed: 1,650 images of 64²
    python bench/refine_5j0n.py --n 100000 --box 128 --noise clean --device cuda --skip-truth   # GPU speed

The map (../shared/data/maps/5j0n.mrc, padded to a cube and Fourier-resampled to
``--box``) is projected at uniformly random orientations (cubic-interpolation Fourier
projector), the clean images standardised to zero mean and unit variance over the set
and white noise of variance σ² added (σ² = 10^(-SNR/10), the paper's convention; σ² = 16
is "-12 dB"). Refinement starts from the truth rotated by random rotation vectors of
mean angle ``--start-error`` (0.2 rad, a stand-in for recovered orientations). E_OR is
the mean d_q after alignment (``cryoorient.orientations.align`` when installed, else after the best
global rotation, the start sharing the truth's frame; "frame" is the error without it). The resolution reached
(half-map FSC = 0.143) is compared with that of the same images and half sets reconstructed at the
true orientations; "vs map" is the resolution at FSC = 0.5 of the average of the two half maps
against the map the images were simulated from (no gold standard involved), for both. ``--hard``
turns the final soft assignment off (``refine(soft=False)``); "T scale" is the calibrated inverse
temperature of the soft assignment.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from cryoorient.maps.fsc import fsc
from cryoorient.geometry import quat_conjugate, quat_distance, quat_multiply, random_quaternions
from cryoorient.io import read_map
from cryoorient.imaging.project import FourierProjector
from cryoorient.maps.refine import _rotvec_to_quat, refine

MAP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "maps" / "5j0n.mrc"
NOISE = {"clean": None, "0dB": 1.0, "-6dB": 10 ** 0.6, "sigma2=16": 16.0}
TARGET = {"clean": 0.01, "0dB": 0.05, "-6dB": 0.10, "sigma2=16": 0.15}


def resample(volume: torch.Tensor, size: int) -> torch.Tensor:
    """Fourier crop or zero-pad a cubic map to edge ``size`` (centre voxel n//2 kept at size//2)."""
    n = volume.shape[0]
    spec = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(volume.double())))
    out = torch.zeros((size,) * 3, dtype=spec.dtype)
    m = min(n, size)
    a, b = n // 2 - m // 2, size // 2 - m // 2
    out[b : b + m, b : b + m, b : b + m] = spec[a : a + m, a : a + m, a : a + m]
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(out))).real.float() * (size / n) ** 3


def orientation_error(q_true: torch.Tensor, q_est: torch.Tensor) -> float:
    """E_OR: ``cryoorient.orientations.align`` when installed, else mean d_q after the best global rotation g (q_est ≈ q_true·g)."""
    try:
        from cryoorient.orientations.align import align_orientations
    except ImportError:
        m = quat_multiply(quat_conjugate(q_true), q_est)
        g = torch.linalg.eigh(m.T @ m).eigenvectors[:, -1]
        return float(quat_distance(quat_multiply(q_true, g.expand_as(m)), q_est).mean())
    return float(align_orientations(q_true, q_est).error)


def versus_map(result, volume, pixel) -> float:
    """Resolution (Å) at FSC = 0.5 of the mean of a refinement's half maps against the simulated map."""
    return fsc(result.half_maps.mean(0), volume, pixel).resolution(0.5)


def simulate(volume, n_images, device, seed=0, batch=4096):
    q = random_quaternions(n_images, generator=seed, dtype=torch.float64)
    proj = FourierProjector(volume.to(device), pad=2, interpolation="cubic")
    images = torch.cat([proj.images(q[s : s + batch].float()).cpu() for s in range(0, n_images, batch)])
    images = (images - images.mean()) / images.std()
    return images, q


def perturb(q, mean_angle, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(q.shape[0], 3, generator=g, dtype=torch.float64) * (mean_angle / (2 * math.sqrt(2 / math.pi)))
    return quat_multiply(_rotvec_to_quat(v), q)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--map", type=Path, default=MAP)
    ap.add_argument("--n", type=int, default=1650)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--noise", nargs="+", default=list(NOISE), choices=list(NOISE))
    ap.add_argument("--start-error", type=float, default=0.2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--skip-truth", action="store_true", help="skip the reconstruction at true orientations")
    ap.add_argument("--hard", action="store_true", help="final maps from best-match orientations (no soft assignment)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    vol, voxel = read_map(args.map, pad_to_cube=True)
    n0 = vol.shape[0]
    vol = resample(torch.from_numpy(vol), args.box)
    pixel = voxel * n0 / args.box
    t0 = time.perf_counter()
    clean, q_true = simulate(vol, args.n, args.device)
    print(f"5j0n: {args.n} images of {args.box}² at {pixel:.3f} Å/px, simulated in {time.perf_counter() - t0:.1f} s; "
          f"device {args.device}, {torch.get_num_threads()} CPU threads")
    q0 = perturb(q_true, args.start_error, seed=1)
    e0 = orientation_error(q_true, q0)

    header = (f"{'noise':>10} {'E_OR start':>10} {'E_OR end':>9} {'frame':>7} {'target':>7} {'res (Å)':>8} "
              f"{'res truth':>9} {'within 10%':>10} {'vs map':>7} {'truth':>6} {'T scale':>7} {'time (s)':>9}  "
              "resolution per round (Å)   mirrored")
    print("\n" + header, flush=True)
    for name in args.noise:
        s2 = NOISE[name]
        g = torch.Generator().manual_seed(2)
        images = clean if s2 is None else clean + math.sqrt(s2) * torch.randn(clean.shape, generator=g)
        if args.device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = refine(images, q0, rounds=args.rounds, pixel_size=pixel, device=args.device,
                     batch_size=args.batch_size, reference=vol, soft=not args.hard, progress=False)
        if args.device != "cpu":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        e1 = orientation_error(q_true, res.quaternions)
        e1_frame = float(quat_distance(q_true, res.quaternions).mean())
        truth_res = truth_map = float("nan")
        if not args.skip_truth:
            truth = refine(images, q_true, rounds=0, pixel_size=pixel, device=args.device, progress=False)
            truth_res, truth_map = truth.resolution, versus_map(truth, vol, pixel)
        per_round = " ".join(f"{r.resolution:.1f}" for r in res.rounds) + f" {res.resolution:.1f}"
        ok = "-" if math.isnan(truth_res) else ("yes" if res.resolution <= 1.1 * truth_res else "no")
        scale = "-" if res.soft_scale is None else f"{res.soft_scale:.3f}"
        print(f"{name:>10} {e0:10.4f} {e1:9.4f} {e1_frame:7.4f} {TARGET[name]:7.2f} {res.resolution:8.2f} "
              f"{truth_res:9.2f} {ok:>10} {versus_map(res, vol, pixel):7.2f} {truth_map:6.2f} {scale:>7} {dt:9.1f}  "
              f"{per_round}   {res.handedness_flipped}", flush=True)


if __name__ == "__main__":
    main()
