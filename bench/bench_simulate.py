"""Benchmark: simulate a particle dataset end to end (projection, shifts, CTF, noise, .mrcs + STAR on disk).

    python bench/bench_simulate.py                                  # 5,000 × 116² on the CPU, with noise
    python bench/bench_simulate.py --device cuda -n 100000 --size 128 --map-size 128 --ctf --shift-max 5 --snr -12

The map is cryoorient's built-in pseudo-molecule (``phantom.default_density``) on a ``--map-size``³
grid, or ``--map PATH``. Prints a table: total wall time of ``cryoorient.imaging.simulate.simulate``
(including the map's Fourier transform, the pilot, writing and fsync), images per second,
MB/s written, and the compute-only time of the same images (no disk) for comparison.
The output goes to a temporary directory next to ``--out`` (default: the system temp dir)
and is deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from _timing import synchronize  # noqa: E402
from cryoorient.imaging.phantom import default_density  # noqa: E402
from cryoorient.imaging.simulate import ImageSimulator, SimulationSettings, draw_parameters, simulate  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=5000)
    p.add_argument("--size", type=int, default=116, help="image edge (pixels)")
    p.add_argument("--map-size", type=int, default=None, help="built-in map edge (default: --size)")
    p.add_argument("--map", help="use this map (.mrc) instead of the built-in one")
    p.add_argument("--pixel-size", type=float, default=1.5, help="Å, built-in map voxel size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--ctf", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--shift-max", type=float, default=0.0, help="pixels, triangular")
    p.add_argument("--snr", type=float, default=-12.0, help="dB (default -12, the paper's σ² = 16)")
    p.add_argument("--no-noise", action="store_true")
    p.add_argument("--chunk-size", type=int, default=1000)
    p.add_argument("--interpolation", choices=["auto", "cubic", "linear"], default="auto")
    p.add_argument("--pad", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--compute-only", action="store_true", help="skip the end-to-end run with disk output")
    p.add_argument("--out", default=None, help="directory in which to write the dataset (default: temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the dataset")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.map:
        source = args.map
    else:
        edge = args.map_size or args.size
        source = (default_density(edge, args.pixel_size, resolution=2 * args.pixel_size), args.pixel_size)
    settings = SimulationSettings(
        n=args.n, size=args.size, ctf=args.ctf, shift_max=args.shift_max,
        snr_db=None if args.no_noise else args.snr, chunk_size=args.chunk_size,
        interpolation=args.interpolation, pad=args.pad,
    )
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")
    print(f"n={args.n} size={args.size} ctf={args.ctf} shift_max={args.shift_max} "
          f"noise={'none' if args.no_noise else f'{args.snr} dB'} interpolation={args.interpolation} pad={args.pad} "
          f"chunk={args.chunk_size}")
    rows = []

    from cryoorient.imaging.simulate import load_volume

    volume, voxel = load_volume(source, args.size)
    params = draw_parameters(settings, voxel)
    synchronize(device)
    t0 = time.perf_counter()
    sim = ImageSimulator(volume, voxel, settings, params, device)
    for _, images in sim.chunks():
        pass
    synchronize(device)
    rows.append(("compute only (no disk)", time.perf_counter() - t0, None))
    print(f"interpolation used: {sim.interpolation}")

    if not args.compute_only:
        parent = Path(args.out) if args.out else Path(tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="bench_simulate.", dir=parent))
        try:
            t0 = time.perf_counter()
            out = simulate(source, work / "dataset", settings, device=device, progress=False)
            synchronize(device)
            dt = time.perf_counter() - t0
            size_mb = sum(f.stat().st_size for f in out.iterdir()) / 1e6
            rows.append(("end to end (.mrcs + STAR)", dt, size_mb))
            if args.keep:
                print(f"dataset kept in {out}")
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)

    print(f"{'stage':<28}{'seconds':>10}{'images/s':>12}{'MB/s':>10}")
    for name, dt, mb in rows:
        rate = f"{mb / dt:10.0f}" if mb else f"{'':>10}"
        print(f"{name:<28}{dt:10.2f}{args.n / dt:12.0f}{rate}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
