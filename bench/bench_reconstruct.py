"""Reconstruction speed and quality: direct Fourier inversion (`cryoorient.maps.reconstruct`).

Speed: N images of n² (random content: the work does not depend on it) with uniform random
orientations into an n³ map, images already on the device, timed after one warm-up batch.
Quality (--map): projections of a map (the Fourier-slice projector, no noise) reconstructed
with the true orientations; FSC 0.5 / 0.143 against the map and the Nyquist limit.

    python bench/bench_reconstruct.py --device cuda -n 100000 --size 128
    python bench/bench_reconstruct.py --device cuda -n 20000 --map ../shared/data/maps/5j0n.mrc
"""

from __future__ import annotations

import argparse
import time

import torch

from _timing import synchronize

from cryoorient.geometry import random_quaternions
from cryoorient.imaging.project import FourierProjector
from cryoorient.io import read_map
from cryoorient.maps.fsc import fsc
from cryoorient.maps.reconstruct import reconstruct


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=100_000, help="number of images")
    p.add_argument("--size", type=int, default=128, help="image edge (speed run)")
    p.add_argument("--map", help="map (.mrc) for the quality run (padded to a cube)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=2048)
    args = p.parse_args()
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    q = random_quaternions(args.n, generator=0, device=dev)
    if args.map:
        vol, voxel = read_map(args.map, pad_to_cube=True)
        proj = FourierProjector(torch.from_numpy(vol).to(dev), vol.shape[0], 2.0, "cubic" if dev.type == "cuda" else "linear")
        images = torch.cat([proj.images(qc) for qc in q.split(args.batch_size)])
        rec = reconstruct(images, q, batch_size=args.batch_size, device=dev, progress=False).cpu()
        r = fsc(rec, vol, voxel)
        print(f"{name}: {args.n} projections of {args.map} ({vol.shape[0]}³, {voxel:.3f} Å), true orientations: "
              f"FSC 0.5 {r.resolution(0.5):.2f} Å, 0.143 {r.resolution(0.143):.2f} Å, Nyquist {2 * voxel:.2f} Å")
        return
    images = torch.randn(args.n, args.size, args.size, device=dev)
    reconstruct(images[: args.batch_size], q[: args.batch_size], batch_size=args.batch_size, device=dev, progress=False)
    synchronize(dev)
    t = time.perf_counter()
    reconstruct(images, q, batch_size=args.batch_size, device=dev, progress=False)
    synchronize(dev)
    dt = time.perf_counter() - t
    print(f"{name}: {args.n} images of {args.size}² into {args.size}³ in {dt:.2f} s ({args.n / dt:.0f} images/s)")


if __name__ == "__main__":
    main()
