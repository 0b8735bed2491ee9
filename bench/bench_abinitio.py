"""Ab-initio orientations (cryoorient.abinitio) against the number of images: time per stage and E_OR.

    python bench/bench_abinitio.py                               # CUDA: P = 800, 1,650, 5,000 and 10,000
    python bench/bench_abinitio.py --device cpu --P 1650

Each P simulates its own 5j0n dataset (``--map``; 116², uniform orientations, white noise σ² = 16
on the standardised images: the ``unseen`` protocol of snn_paper.py without its split), then times
the neighbour search (polar transform, noise covariance, Wiener filter, rotational alignment of
every image with every image and mirror image) and the frame fit (eigendecomposition of the dense
2P × 2P matrix, alternating least squares, projected power iterations) separately, and reports
E_OR against the true orientations (cryoorient.align). The device is synchronised around each
stage; the simulation is not timed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cryoorient.abinitio import frames_from_neighbors, rotational_neighbors
from cryoorient.align import align_orientations
from cryoorient.geometry import euler_to_quat, matrix_to_quat
from cryoorient.simulate import SimulationSettings, load_dataset, simulate

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def timed(fn, device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", default=str(SHARED / "maps" / "5j0n.mrc"))
    p.add_argument("--P", type=int, nargs="+", default=[800, 1650, 5000, 10000], help="numbers of images")
    p.add_argument("--size", type=int, default=116)
    p.add_argument("--sigma2", type=float, default=16.0)
    p.add_argument("--neighbors", type=int, default=10)
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_abinitio: no CUDA GPU (pass --device cpu); skipped")
        return 0
    if not Path(args.map).is_file():
        print(f"bench_abinitio: map not found: {args.map}; skipped")
        return 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, {args.size}², σ² = {args.sigma2}, {args.neighbors} neighbours")
    print(f"{'P':>7} {'neighbours s':>13} {'frames s':>9} {'total s':>8} {'E_OR rad':>9} {'median':>7}")
    for P in args.P:
        settings = SimulationSettings(n=P, size=args.size, sigma2=args.sigma2, seed=args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            simulate(args.map, Path(tmp) / "data", settings, device=device, progress=False)
            data = load_dataset(Path(tmp) / "data")
            images = torch.from_numpy(np.array(data.images, dtype=np.float32)).to(device)
        q_true = euler_to_quat(*data.params.angles.unbind(1))
        (index, angle, _), t_nb = timed(lambda: rotational_neighbors(images, neighbors=args.neighbors,
                                                                     seed=args.seed, device=device), device)
        (z, _, _), t_fr = timed(lambda: frames_from_neighbors(index, angle, seed=args.seed, device=device), device)
        a1, a2 = z.real, z.imag
        q = matrix_to_quat(torch.stack([a1, a2, torch.linalg.cross(a1, a2)], 1))
        a = align_orientations(q_true, q)
        print(f"{P:>7} {t_nb:>13.2f} {t_fr:>9.2f} {t_nb + t_fr:>8.2f} {a.error:>9.4f} {float(a.errors.median()):>7.4f}",
              flush=True)
        del images
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
