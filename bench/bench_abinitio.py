"""Ab-initio orientations (cryoorient.orientations.abinitio) against the number of images: time and E_OR.

    python bench/bench_abinitio.py --P 1650 5000 10000 --landmarks 5000 0    # CUDA
    python bench/bench_abinitio.py --P 30000 100000 --landmarks 5000 2000
    python bench/bench_abinitio.py --device cpu --P 1650 --landmarks 0

Each P simulates its own 5j0n dataset (``--map``; 116², uniform orientations, white noise σ² = 16
on the standardised images: the ``unseen`` protocol of snn_paper.py without its split), then
times :func:`cryoorient.orientations.abinitio.estimate_orientations` on the images already on the device
(synchronised; the simulation is not timed) for each ``--landmarks`` value (0: the graph on all
images) and reports E_OR against the true orientations (cryoorient.orientations.align).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _timing import skip_reason

from cryoorient.orientations.abinitio import estimate_orientations
from cryoorient.orientations.align import align_orientations
from cryoorient.geometry import euler_to_quat
from cryoorient.imaging.simulate import SimulationSettings, load_dataset, simulate

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", default=str(SHARED / "maps" / "5j0n.mrc"))
    p.add_argument("--P", type=int, nargs="+", default=[1650, 5000, 10000], help="numbers of images")
    p.add_argument("--landmarks", type=int, nargs="+", default=[5000], help="landmark counts (0: all images)")
    p.add_argument("--size", type=int, default=116)
    p.add_argument("--sigma2", type=float, default=16.0)
    p.add_argument("--neighbors", type=int, default=10)
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    device = torch.device(args.device)
    if (reason := skip_reason(device, args.map)) is not None:
        print(f"bench_abinitio: {reason}; skipped")
        return 0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, {args.size}², σ² = {args.sigma2}, {args.neighbors} neighbours")
    print(f"{'P':>7} {'landmarks':>9} {'seconds':>8} {'E_OR rad':>9} {'median':>7}")
    for P in args.P:
        settings = SimulationSettings(n=P, size=args.size, sigma2=args.sigma2, seed=args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            simulate(args.map, Path(tmp) / "data", settings, device=device, progress=False)
            data = load_dataset(Path(tmp) / "data")
            images = torch.from_numpy(np.array(data.images, dtype=np.float32)).to(device)
        q_true = euler_to_quat(*data.params.angles.unbind(1))
        done = set()
        for landmarks in args.landmarks:
            used = "all" if not landmarks or landmarks >= P else landmarks
            if used in done:
                continue  # the same run as before
            done.add(used)
            sync()
            t = time.perf_counter()
            res = estimate_orientations(images, neighbors=args.neighbors, landmarks=landmarks or None, seed=args.seed,
                                        centre=False, device=device)  # centred, CTF-free projections
            sync()
            seconds = time.perf_counter() - t
            a = align_orientations(q_true, res.quaternions)
            print(f"{P:>7} {used:>9} {seconds:>8.2f} {a.error:>9.4f} {float(a.errors.median()):>7.4f}", flush=True)
        del images
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
