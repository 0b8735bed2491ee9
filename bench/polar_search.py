"""One pass of the global search's projection matching at band K: seconds, batch size, share of the GPU's peak.

    python bench/polar_search.py --device cuda --band 48 --P 2000                # the top band of a 128² run
    python bench/polar_search.py --device cuda --band 48 --budget 28 30 --profile
    python bench/polar_search.py --device cpu --size 64 --band 18 --P 200        # the CPU case's top band
    python bench/polar_search.py --device cuda --band 22 --P 1000 --draws        # an exploration step's draws

Every iteration of :func:`cryoorient.orientations.global_search.global_search` makes this pass over every
particle (``polar_matching.best_candidates``: J directions × L in-plane angles × S = 9 joint shift offsets each, the
complex GEMM of the polar spectra, an inverse FFT over the angles, the best angle per offset and
direction); at 10⁵ particles its passes at bands 40–48 are half the run (bench/README). Data: ``--P``
images of 5j0n (``--map``) at ``--size``², the acceptance's CTF and shifts, −20 dB (``abinitio_realistic.
simulate_case``); the reference is the true map in the band's working box, searched at the true shifts.

Variants, each timed on the same particles (median of ``--reps`` passes, synchronised):
``peaks``: :meth:`PolarSearch.peaks` as the search runs it (the numerators' maximum over the angles, then
divided by the norm); ``divide first``: the NCC of every angle, then the maximum (``correlations().max(0)``,
the code before session 23: one more pass over all L angles); ``compiled``: ``peaks`` under
``torch.compile`` (reported as failed where Inductor cannot take the complex GEMM and FFT). Per ``--budget``
(log2 of a batch's correlations, elements: the particles per batch; default the search's own,
:func:`~cryoorient.orientations.polar_matching.batch_budget`: 30 on a GPU with 32 GiB free, 23 on the CPU):
seconds per pass, ms per particle, the complex GEMM's FLOP/s (8·M·K·J·S per particle, M = L/2 + 1
angular frequencies, K rings) against the GPU's FP32 peak, and the bytes the correlations move (GEMM
output M complex, inverse FFT in and out, the maximum's read: (16·M + 8·L)·J·S per particle) against
its HBM peak (``_peak``: no fraction for an unknown GPU or the CPU). ``--profile``: the top operations
by device time of one pass of the first variant (torch.profiler).

``--draws``: the exploration's draws instead (``global_search._explore``: :data:`~cryoorient.orientations.
global_search.SHIFT_GRID` = 2, 25 shift offsets, each particle's candidate drawn from its posterior,
:meth:`PolarSearch.sample`), the posterior's sums over the angles by ``cryoorient.ops.angle_sums`` ("kernel"),
by its plain-PyTorch reference (``ops._torch_impl.angle_sums``, "eager": every weight stored) and by that reference
under ``torch.compile``; bytes moved (16·M + 12·L)·J·S per particle (GEMM output, inverse FFT in and out, the
maximum's read and the sums' read).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import torch
from _peak import device_name, lookup
from _timing import skip_reason, wall_median_ms
from abinitio_realistic import simulate_case

from cryoorient.maps.transforms import resample_map, resize_map
from cryoorient.imaging.simulate import load_volume
from cryoorient.ops import _torch_impl as ref
from cryoorient.orientations import polar_matching
from cryoorient.orientations.global_search import SHIFT_GRID, _offsets
from cryoorient.orientations.polar_matching import ParticleStack, PolarSearch, batch_budget, working_box

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
JOINT_GRID = 1  # the global search's default: (2·1 + 1)² = 9 shift offsets
KERNEL = polar_matching.angle_sums  # the op, restored after each draw of another variant


def _pass(fn, stack: ParticleStack, rows: int, t: torch.Tensor) -> None:
    """``fn(idx, t)`` over every particle in batches of ``rows``."""
    for idx in torch.arange(stack.P).split(rows):
        fn(idx, t[idx])


def _draws(search: PolarSearch, stack: ParticleStack, m: int, offsets: torch.Tensor, sums):
    """A draw of every particle of a batch as the exploration makes it, the sums over the angles by ``sums``."""
    gen = torch.Generator(device=stack.device).manual_seed(0)

    def draw(idx, t):
        polar_matching.angle_sums = sums
        try:
            num, den = search.numerators(stack, idx, m, t, offsets)
            return search.sample(num, den, t[:, None].double().cpu() + offsets.double().cpu(), 9.0, 1.0, gen)
        finally:
            polar_matching.angle_sums = KERNEL
    return draw


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", default=str(SHARED / "maps" / "5j0n.mrc"))
    p.add_argument("--P", type=int, default=2000, help="particles per pass")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--band", type=int, default=48, help="Fourier band K, pixels of the n-box")
    p.add_argument("--budget", type=int, nargs="+",
                   help="log2 of a batch's correlations (elements); default: the search's own (batch_budget)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="top operations of one pass (torch.profiler)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--draws", action="store_true", help="time the exploration's draws (module docstring)")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if (reason := skip_reason(device, args.map)) is not None:
        print(f"polar_search: {reason}; skipped")
        return 0
    n, K = args.size, args.band
    if not 2 <= K <= n // 2 - 4:
        raise SystemExit(f"polar_search: --band must be in [2, {n // 2 - 4}] for --size {n}; got {K}")
    case = SimpleNamespace(P=args.P, size=n)
    images, _, t_true, ctf, _ = simulate_case(args.map, None, case, -20.0, 0, device)
    m = working_box(K, n)
    volume = resize_map(torch.as_tensor(load_volume(args.map, n, None)[0], device=device), n)  # the images' box
    reference = resample_map(volume, 1.0, n / m)[0].float()
    stack = ParticleStack(images, ctf, m, device, 1024 if device.type == "cuda" else 256, 0)
    # as an iteration makes them (the exploration: SHIFT_GRID each way), n/(4K) pixels apart
    offsets = _offsets(stack, K, SHIFT_GRID if args.draws else JOINT_GRID)
    peak = lookup(device_name(device)) if device.type == "cuda" else None
    print(f"device: {device_name(device)}; {args.P} particles of {n}², band {K} (working box {m}), "
          f"{len(offsets)} shift offsets")
    for budget in args.budget or [batch_budget(device).bit_length() - 1]:
        search = PolarSearch(reference, K, {"sampling": 1.5, "budget": 1 << budget}, len(offsets))
        J, L, S, rows = len(search.dirs), search.L, len(offsets), search.rows
        flop = 8 * (L // 2 + 1) * K * J * S * args.P
        moved = (16 * (L // 2 + 1) + (12 if args.draws else 8) * L) * J * S * args.P
        if args.draws:
            variants = {"kernel": _draws(search, stack, m, offsets, KERNEL),
                        "eager": _draws(search, stack, m, offsets, ref.angle_sums)}
            if not args.no_compile:
                variants["compiled"] = _draws(search, stack, m, offsets, torch.compile(ref.angle_sums))
        else:
            variants = {"peaks": lambda idx, t: search.peaks(stack, idx, m, t, offsets),
                        "divide first": lambda idx, t: search.correlations(stack, idx, m, t, offsets).max(0)}
            if not args.no_compile:
                variants["compiled"] = torch.compile(variants["peaks"])
        print(f"budget 2^{budget}: {rows} particles per batch; J {J} directions, L {L} angles")
        base = None
        for name, fn in variants.items():
            try:
                sec = wall_median_ms(lambda: _pass(fn, stack, rows, t_true), args.reps) / 1e3
            except Exception as err:  # noqa: BLE001 - Inductor's refusal is a result here
                print(f"  {name:>12}: failed ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
                continue
            base = sec if base is None else base
            share = "" if peak is None else (f", {flop / sec / peak.fp32:.1%} of FP32 peak, "
                                             f"{moved / sec / peak.hbm:.1%} of HBM peak")
            print(f"  {name:>12}: {sec:.3f} s per pass, {1e3 * sec / args.P:.3f} ms per particle, "
                  f"{sec / base:.2f}× the time of {next(iter(variants))}; GEMM {flop / sec / 1e12:.2f} TFLOP/s, correlations "
                  f"{moved / sec / 1e9:.0f} GB/s{share}", flush=True)
        if args.profile:
            acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                            if device.type == "cuda" else [])
            with torch.profiler.profile(activities=acts) as prof:
                _pass(next(iter(variants.values())), stack, rows, t_true)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=48))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
