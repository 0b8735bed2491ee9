"""Global orientation and shift search against a low-passed map, iterated with increasing resolution.

Projection matching over all of SO(3), between ab initio orientations and local refinement
(:func:`cryoorient.maps.refine.refine`), which cannot leave the basin it starts in. All comparisons
are at a Fourier band of K pixels (radius in units of 1/(n · pixel size)), on the particles
Fourier-cropped to a working box m ≈ 2K + 8 (so the band is kept, cheaply):

* **Scores** (:mod:`cryoorient.orientations.polar_matching`): the NCC in the band of each particle
  with the CTF-modulated projections of a map along J directions (a Fibonacci sphere of spacing
  ``sampling``/K rad), each at every in-plane rotation of a polar grid of L ≈ 2πK angles, all at once.
* **Exploration** (:func:`_explore`), from the map of a start: stochastic expectation maximisation,
  in the spirit of cryoSPARC's stochastic gradient descent (Punjani et al. 2017). Minibatches of
  particles are inserted each at one orientation and shift offset drawn from its posterior, the
  particle's shift moving to the offset drawn (so shifts travel beyond the offset grid over the
  draws), and the map follows them, kept centred (its density's centre of mass,
  :func:`cryoorient.maps.transforms.density_centre`, at the box centre) and within the particle's
  support (:func:`_support`); the particles then take their best candidates. Orientations are
  thereby found from a poor or random start. The map of random orientations is the particle's
  rotational average, against which every orientation scores alike: the draws break that symmetry
  only if they follow the map's small asymmetries, so the posterior is not tempered by default
  (``beta0`` = 1). Measured on 10⁴ particles of 128² with CTF and shifts, E_OR after the search
  tempered from ``beta0`` = 0.03 → untempered: 5j0n at −16 dB 1.42 → 0.19 rad, 5h73 at −20 dB
  1.33 → 0.33 rad (both with the support; the value was chosen on these two cases).
* **Iterations** (:func:`_iterate`), gold-standard: half maps of the particles' two random half sets at their
  orientations and shifts (:class:`cryoorient.maps.reconstruct.FourierInserter`, with the CTF); each half set is
  searched against its own half map only, each shell weighted by sqrt(FSC), its expected correlation with the
  truth, centred, its particles' shifts moved with it (a map drifted off centre needs shifts beyond ``max_shift``,
  and particles then settle on a wrong orientation that a wrong shift fits); every particle takes its shift
  (cross-correlation with its CTF-modulated projection, peak within ``max_shift`` of the centre, parabola-polished),
  its best orientation, and its shift again, the orientation chosen jointly with a shift offset on a grid of (2·``joint_grid`` + 1)²
  points n/(4K) pixels apart about that shift (:func:`cryoorient.orientations.polar_matching.best_candidates`): at
  low SNR a particle whose shift peak is a noise peak otherwise keeps the orientation that this wrong shift fits
  best. The half maps' FSC-0.143 resolution sets the next band, up to ``max_band``. From the true orientations and
  shifts (``bench/abinitio_realistic.py --oracle``, 10⁴ × 128², 5h73 at −20 dB, the case these defaults were
  chosen on): E_OR 0.218 rad with no joint offsets and the band capped at 32, 0.151 with ``joint_grid`` = 1,
  0.120 with ``max_band`` = 48 too. Then iterations with the band ``margin`` pixels beyond the resolution's
  (RELION's ``--incr_size``), kept if their half maps are finer (:func:`_iterations`). At −20 dB (one seed,
  bench/README) E_OR 0 → 10: 1aki 0.387 → 0.217, 3o5r 0.376 → 0.189, 5zng 0.169 → 0.115, 5j0n 0.077 → 0.073 rad;
  from the first iteration on, 10 broke 3o5r (1.155 rad).
* **Coarse to fine** (``coarse``; by default on the CPU only): at band K ≥ 12 each particle's ``coarse`` best
  directions at band K/2, then the fine grid within the coarse spacing of them only
  (:func:`cryoorient.orientations.polar_matching.direction_neighbours`), as RELION's adaptive oversampling; the
  full search's cost grows as K⁴. At −20 dB it loses particles (bench/README), so each iteration first searches
  a probe of particles both ways and the others coarse to fine only where the two agree
  (:func:`cryoorient.orientations.polar_matching.probed_candidates`).
* **Shift prior** (``shift_prior``, as RELION's sigma_offset): every choice of a shift — the draws, the
  best candidates, the shift searches — weighs the log-likelihood (:meth:`PolarSearch.log_posterior`)
  against a Gaussian prior −|t|²/(2s²) about the box centre, s² per axis re-estimated from the data:
  the drawn shifts' mean |t|²/2 after every exploration step (stochastic EM), the posterior mean of
  |t|²/2 after every iteration (EM). At low SNR a shift chosen among many by the likelihood alone is
  mostly noise, and a wrong shift holds its particle at a wrong orientation.

Starts: the given orientations (the ab initio stage's), as they are and explored, and ``restarts`` sets of random
ones, explored, all at the starting band, one after the other until the start whose particles match best (mean NCC,
computed from the data) and the best of another origin reach the same orientations (the verdict below says
*reproducible*; a further start could only find a better optimum that both missed); the winner is recentred
(:func:`_recentre`: each particle's best candidate about its shift or about the peak of its cross-correlation with
the map's mean projection, which needs no orientation, whichever matches better; a particle with a large shift can
otherwise stay at its mirror view with a wrong shift, each the best given the other), then goes on with iterations
until the band stops growing and fewer than ``tolerance`` of the particles change orientation by more than a grid
step.

A stack of more than ``subset`` particles: the starts are explored on a random subset of that size (the cost
then does not grow with the stack; cryoSPARC's ab initio works on minibatches too), and every particle is
recentred against the winner's map, again from where it moved (a shift climbs by up to two offsets each
time), until fewer than ``tolerance`` change by more than a grid step (at most :data:`JOIN_PASSES` times;
one recentring left those with large shifts wrong more often), before the iterations of all of them.

Half sets (RELION's gold standard): the exploration and the recentring compare every particle with one map, at the
starting band; from the first iteration on, the two random half sets never meet, and are returned for the refinement
to keep (:attr:`GlobalResult.half`). Below :attr:`GlobalResult.shared_resolution` their FSC is no evidence; beyond
it, not proof either: the references' positivity carries harmonics of the shared map further. Pure noise, one map
for both → half sets apart (session 32): 1,000 × 32², 3 Å pixels, shared up to 10.7 Å: half maps 8.50 → 11.95 Å,
refined 9.62 → 12.12 Å; 10⁴ × 128², 1.5 Å, one H100, shared up to 24.0 Å: 6.62 → 15.80 Å, refined 7.12 → 16.64 Å
(the iterations' references not made positive: 23.5 Å, but 2axd at −20 dB 0.096 → 0.106 rad).

Verdict (computed from the data, :mod:`cryoorient.orientations.global_result`): the orientations of the winner
and of the best start of another origin are compared; reproducible, ambiguous, or the runner-up a worse optimum.

Conventions: images (P, n, n) [y, x], centre at pixel n//2; quaternions scalar-first of RELION's
A = Rz(psi)·Ry(tilt)·Rz(rot) (map → image frame), w >= 0; shifts t (P, 2) in pixels (x, y) of the
images, the particle moved by +t (:mod:`cryoorient.imaging.shift`). ``ctf(indices, size)`` -> real
CTFs (B, size, size // 2 + 1) on the ``rfft2`` grid of an image of edge ``size`` at the particles'
pixel size, or None for CTF-free images. The map is in the orientations' frame (any global
rotation, either hand).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..geometry import quat_distance, quat_to_matrix, random_quaternions
from ..maps.fsc import fsc
from ..maps.reconstruct import FourierInserter
from ..maps.transforms import density_centre, particle_radius, shift_map, soft_sphere
from .align import align_orientations
from .global_result import AGREEMENT, SEPARATED, GlobalIteration, GlobalResult
from .polar_matching import (ParticleStack, PolarSearch, batch_budget, best_candidates, clip_shifts, direction_grid,
                             mean_projection, probed_candidates, shift_peak, working_box)

__all__ = ["AGREEMENT", "SEPARATED", "GlobalIteration", "GlobalResult", "direction_grid", "global_search"]

#: Most recentrings of all particles against the map of a subset's winner (``subset``).
JOIN_PASSES = 5
#: ``coarse`` by default on the CPU, where the full search is most of an iteration (a GPU's default is 0: all
#: directions): 2.2× faster iterations, the same E_OR, on the bench's CPU case from the truth (bench/README).
CPU_COARSE = 16
#: ``shift_grid`` by default on a GPU (25 offsets), and the fewest each way the recentring uses. 1 in the GPU's
#: exploration at −20 dB: 5j0n 0.073 → 0.083 rad, and random starts agreed less often (bench/README, session 31).
SHIFT_GRID = 2
#: ``shift_grid`` by default on the CPU: 9 offsets make the exploration's draws 2.8× cheaper (bench/README, session
#: 30). The recentring keeps :data:`SHIFT_GRID`: with 1 there too, the tests' particles shifted by up to 5 px of 32
#: went 0.073 → 0.109 rad, and on a GPU at −20 dB 5j0n 0.073 → 0.146 rad.
CPU_SHIFT_GRID = 1
#: Shells beyond the exploration's band K up to which the half sets are not independent (one map up to K, its
#: interpolation a shell further; on pure noise, 1,000 × 32², K 6–7, the FSC fell below 0.143 at shells 6.2–7.9).
SHARED_SHELLS = 2
#: Smallest standard deviation per axis (pixels) the Gaussian shift prior's estimate may reach.
MIN_SHIFT_SD = 0.5


def _map(stack: ParticleStack, q: Tensor, t: Tensor, m: int, weight_floor: float, pixel_size: float):
    """The two half maps of the particles at (q, t) in the m-box, each shell weighted by sqrt(FSC) (a half map's
    expected correlation with the truth), and their FSC."""
    ins = [FourierInserter(m, pad=2, device=stack.device, weight_floor=weight_floor) for _ in (0, 1)]
    for idx in torch.arange(stack.P).split(stack.batch):
        img = stack.images(idx, m, t[idx])
        c = stack.ctf_at(idx, m, pad=2)
        A = quat_to_matrix(q[idx].to(stack.device)).float()
        for h in (0, 1):
            sel = (stack.half[idx] == h).nonzero().squeeze(1).to(stack.device)
            ins[h].insert(img[sel], A[sel], None if c is None else c[sel])
    halves = [i.volume() for i in ins]
    curve = fsc(halves[0], halves[1], pixel_size * stack.n / m)
    weight = torch.as_tensor(np.sqrt(np.concatenate([[1.0], np.clip(curve.fsc, 0.0, 1.0)])), dtype=torch.float32,
                             device=stack.device)
    k = torch.fft.fftfreq(m, d=1.0 / m, device=stack.device)
    kx = torch.fft.rfftfreq(m, d=1.0 / m, device=stack.device)
    shell = torch.round(torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx ** 2)).long()
    weight = weight[shell.clamp(max=len(weight) - 1)] * (shell < len(weight))
    return [torch.fft.irfftn(torch.fft.rfftn(h) * weight, s=(m, m, m)) for h in halves], curve


def _insert(ins: FourierInserter, stack: ParticleStack, idx: Tensor, m: int, t: Tensor, q: Tensor, rows=None, w=None):
    """Insert particles ``idx`` (at shifts t (B, 2)) into ``ins``, image ``rows[k]`` at orientation q[k]
    with weight w[k] (default: each image once, weight 1)."""
    img, c = stack.images(idx, m, t), stack.ctf_at(idx, m, pad=2)
    if rows is not None:
        img, c = img[rows], None if c is None else c[rows]
    ins.insert(img, quat_to_matrix(q.to(stack.device)).float(), c, None if w is None else w.float())


def _offsets(stack: ParticleStack, K: int, reach: int) -> Tensor:
    """Shift offsets (S, 2) n-pixels: a grid of (2·``reach`` + 1)² points n/(4K) pixels apart."""
    grid = torch.arange(-reach, reach + 1.0, device=stack.device)
    return torch.cartesian_prod(grid, grid) * (stack.n / (4 * K))


def _inserted(stack: ParticleStack, q: Tensor, t: Tensor, m: int, opts: dict) -> FourierInserter:
    """Every particle inserted once at (q, t) into a reconstruction of the m-box."""
    ins = FourierInserter(m, pad=2, device=stack.device, weight_floor=opts["weight_floor"])
    for idx in torch.arange(stack.P).split(stack.batch):
        _insert(ins, stack, idx, m, t[idx], q[idx])
    return ins


def _explore(stack: ParticleStack, q: Tensor, t: Tensor, K: int, opts: dict) -> float:
    """Stochastic expectation maximisation at band K from the map of the particles at (q, t).

    Each of ``steps`` steps draws ``minibatch`` particles and inserts each at one orientation and
    shift offset (``shift_grid`` offsets each way, n/(4K) pixels apart, about t) drawn from its
    posterior against the current map at inverse temperature β (:meth:`PolarSearch.sample`), β rising
    geometrically from ``beta0`` to 1; the particle's shift t moves to the offset drawn (at most
    ``max_shift``). The map's Fourier sums move towards those of the draw, scaled to all P
    particles, by b / H, the horizon H growing from 2b to P. With the shift prior, its variance
    ``opts["s2"]`` is re-estimated after every step as the draws' mean |t|²/2. Then every particle takes
    its best candidate (highest log-posterior) against the final map (q, t updated in place); returns
    their NCC (P,)."""
    m, P, device = working_box(K, stack.m_max), stack.P, stack.device
    offsets, ins = _offsets(stack, K, opts["shift_grid"]), _inserted(stack, q, t, m, opts)
    data, weight, b, steps = ins.data, ins.weight, min(P, opts["minibatch"]), opts["steps"]
    for s in range(steps + 1):
        ins.data, ins.weight = data, weight
        volume = ins.volume()
        c = density_centre(volume)  # the map stays centred (``data`` moves with it)
        ins.translate(-c)
        search = PolarSearch(_support(shift_map(volume, -c), opts, stack.n), K, opts, len(offsets))
        if s == steps:
            break
        draw = FourierInserter(m, pad=2, device=device, weight_floor=opts["weight_floor"])
        beta = opts["beta0"] ** (1 - s / max(1, steps - 1))
        drawn = 0.0
        for idx in torch.randperm(P, generator=opts["gen"])[:b].split(search.rows):
            moved = t[idx][:, None] + offsets.double().cpu()  # (B, S, 2) the candidates' shifts
            num, den = search.numerators(stack, idx, m, t[idx], offsets)
            pick = search.sample(num, den, moved, opts["s2"], beta, opts["device_gen"])
            t[idx] = clip_shifts(moved[torch.arange(len(idx)), pick.cpu() // (len(search.dirs) * search.L)], opts["max_shift"])
            _insert(draw, stack, idx, m, t[idx], search.orientations(pick))
            drawn += float((t[idx] ** 2).sum())
        if math.isfinite(opts["s2"]):  # the prior's variance: the draws' mean |t|² / 2 (stochastic EM)
            opts["s2"] = max(drawn / (2 * b), MIN_SHIFT_SD**2)
        eta = b / (2 * b + (P - 2 * b) * s / max(1, steps - 1))
        data = (1 - eta) * data + (eta * P / b) * draw.data
        weight = (1 - eta) * weight + (eta * P / b) * draw.weight
    return best_candidates(stack, search, q, t, m, offsets, opts)


def _recentre(stack: ParticleStack, q: Tensor, t: Tensor, K: int, opts: dict, volume: Tensor | None = None) -> float:
    """Each particle's best candidate at band K about its shift t and about its blob shift h, the
    cross-correlation peak with the mean projection of the map (:func:`mean_projection`), which needs no
    orientation; the better of the two (log-posterior, with the shift prior) is kept (q, t updated in
    place). Offsets as in :func:`_explore`, at least :data:`SHIFT_GRID` each way.
    A particle held at a wrong orientation by a wrong shift (each the best given the other) is thereby
    freed when its true shift is nearer h. ``volume``: the reference (centred, in the m-box of K; default:
    the map of the particles at (q, t), as :func:`_reference` makes it). Returns the fraction of particles
    that took the candidate about h."""
    m = working_box(K, stack.m_max)
    offsets = _offsets(stack, K, max(opts["shift_grid"], SHIFT_GRID))
    if volume is None:
        volume = _reference(_inserted(stack, q, t, m, opts).volume(), q, t, opts, stack.n)
    search, blob, taken = PolarSearch(volume, K, opts, len(offsets)), mean_projection(volume), 0
    J, S = len(search.dirs), len(offsets)
    for idx in torch.arange(stack.P).split(max(1, search.rows // 2)):
        B, h = len(idx), shift_peak(stack, idx, m, blob, K, opts["max_shift"], opts["s2"])[0]
        ncc, angle = search.peaks(stack, torch.cat([idx, idx]), m, torch.cat([t[idx], h]), offsets)
        ncc, angle = torch.cat([ncc[:B], ncc[B:]], 1), torch.cat([angle[:B], angle[B:]], 1)  # about t, then about h
        moved = torch.cat([t[idx][:, None] + offsets.double().cpu(), h[:, None] + offsets.double().cpu()], 1)
        c, q[idx], _ = search.best(ncc, angle, moved, opts["s2"])
        t[idx] = clip_shifts(moved[torch.arange(B), c // J], opts["max_shift"])
        taken += int((c // J >= S).sum())
    return taken / stack.P


def _particle_diameter(stack: ParticleStack, q: Tensor, t: Tensor, opts: dict) -> float:
    """The particle's diameter D (n-pixels) in the map of (q, t): twice the radius of 98 % of its density
    (:func:`cryoorient.maps.transforms.particle_radius`); for random orientations, the map is the
    particle's rotational average, whose radius is the particle's largest."""
    m = working_box(8, stack.m_max)
    return 2 * particle_radius(_inserted(stack, q, t, m, opts).volume()) * stack.n / m


def _support(volume: Tensor, opts: dict, n: int) -> Tensor:
    """The reference within the particle's support (``opts["support"]``): negative density zeroed, then a
    soft sphere of radius 0.6·D (D the particle's diameter ``opts["diameter"]``, n-pixels) with a
    cosine edge of 0.1·D; the volume unchanged otherwise."""
    if not opts["support"]:
        return volume
    m = volume.shape[0]
    D = opts["diameter"] * m / n
    return volume.clamp_min(0) * soft_sphere(m, 0.6 * D, 0.1 * D, volume.device)


def _reference(volume: Tensor, q: Tensor, t: Tensor, opts: dict, n: int) -> Tensor:
    """``volume`` (m-box) moved so that its density centre (:func:`density_centre`) is at the box centre and
    cut to the support (:func:`_support`); the shifts t (n-pixels) of the particles at q move with it, in
    place (an off-centre map needs larger shifts, and particles then settle on a wrong orientation that a
    wrong shift fits)."""
    c = density_centre(volume)
    t += (quat_to_matrix(q)[:, :2, :] @ c) * (n / volume.shape[0])
    return _support(shift_map(volume, -c), opts, n)


def _iterate(stack: ParticleStack, q: Tensor, t: Tensor, K: int, opts: dict) -> tuple[GlobalIteration, Tensor, Tensor]:
    """One iteration at band K (module docstring); updates q, t and, with the shift prior, ``opts["s2"]`` (the posterior
    mean of |t|²/2) in place; returns its record, the particles' NCC and the mean of the half sets' references."""
    clock, m = time.perf_counter(), working_box(K, stack.m_max)
    halves, curve = _map(stack, q, t, m, opts["weight_floor"], opts["pixel_size"])
    q_old, t_old = q.clone(), t.clone()
    offsets = _offsets(stack, K, opts["joint_grid"])
    (scores, t2), references, agreements = torch.empty(2, stack.P, dtype=torch.float64), [], []
    for h, half_map in enumerate(halves):
        which = (stack.half == h).nonzero()[:, 0]
        t_h = t[which]
        volume = _reference(half_map, q[which], t_h, opts, stack.n)
        t[which] = t_h
        search = PolarSearch(volume, K, opts, len(offsets))
        for idx in which.split(stack.batch):  # the shifts at this band, before the orientations
            t[idx] = search.shifts(stack, idx, m, q[idx], opts["max_shift"], opts["s2"])[0]
        ncc, agreement = probed_candidates(stack, search, volume, q, t, m, offsets, opts, which)
        scores[which], references, agreements = ncc[which], references + [volume], agreements + [agreement]
        for idx in which.split(stack.batch):
            t[idx], t2[idx] = search.shifts(stack, idx, m, q[idx], opts["max_shift"], opts["s2"])
    if math.isfinite(opts["s2"]):  # the prior's variance: the posterior mean of |t|² / 2 (EM)
        opts["s2"] = max(float(t2.mean()) / 2, MIN_SHIFT_SD**2)
    moved = quat_distance(q, q_old)
    record = GlobalIteration(band=K, box=m, resolution=curve.resolution(0.143), directions=len(search.dirs),
                             angles=search.L, mean_score=float(scores.mean()),
                             changed=float((moved > opts["sampling"] / K).double().mean()),
                             mean_rotation=float(moved.mean()),
                             mean_shift=float(torch.linalg.vector_norm(t - t_old, dim=1).mean()),
                             shift_sd=math.sqrt(opts["s2"]), coarse=None if None in agreements else min(agreements),
                             seconds=time.perf_counter() - clock)
    return record, scores.clone(), (references[0] + references[1]) / 2


def _run(stack: ParticleStack, q: Tensor, t: Tensor, K: int, opts: dict, bar, margin: int) -> tuple:
    """Iterations (:func:`_iterate`) from band K until the band stays and fewer than ``opts["tolerance"]`` of the
    particles move by more than a grid step, at most ``opts["iterations"]`` (at least one); the next band is the
    half maps' resolution band plus ``margin`` (never lower, at most ``opts["top"]``). Returns the records, the last
    NCC, the last reference and whether they stopped by that rule (False: at the cap)."""
    history = []
    for _ in range(max(1, opts["iterations"])):
        record, scores, volume = _iterate(stack, q, t, K, opts)
        history.append(record)
        bar.update(1)
        bar.set_postfix(band=K, ncc=f"{record.mean_score:.4f}", changed=f"{record.changed:.3f}")
        grown = min(opts["top"], max(K, _band(stack, record, opts) + margin))
        if grown == K and record.changed < opts["tolerance"]:
            return history, scores, volume, True
        K = grown
    return history, scores, volume, False


def _band(stack: ParticleStack, record: GlobalIteration, opts: dict) -> int:
    """The band (Fourier pixels of the n-box) of the resolution of ``record``'s half maps."""
    return round(stack.n * opts["pixel_size"] / record.resolution)


def _iterations(stack: ParticleStack, q: Tensor, t: Tensor, K: int, opts: dict, bar) -> tuple:
    """:func:`_run` from band K; then, with ``opts["margin"]`` > 0 and room below the top, :func:`_run` on with the
    margin, kept only if its half maps are finer (else q, t and the shift prior go back). Returns the kept records,
    last NCC and reference, whether they stopped by the rule, the margin's records and whether kept (None: none)."""
    history, scores, volume, converged = _run(stack, q, t, K, opts, bar, 0)
    beyond = min(opts["top"], _band(stack, history[-1], opts) + opts["margin"])
    if not opts["margin"] or beyond <= history[-1].band:
        return history, scores, volume, converged, [], None
    saved = q.clone(), t.clone(), opts["s2"]
    bar.total += max(1, opts["iterations"])
    more, scores2, volume2, converged2 = _run(stack, q, t, beyond, opts, bar, opts["margin"])
    if more[-1].resolution < history[-1].resolution:
        return history + more, scores2, volume2, converged2, more, True
    q.copy_(saved[0]), t.copy_(saved[1]), opts.update(s2=saved[2])
    return history, scores, volume, converged, more, False


def _origin(start: str) -> str:
    """The origin of a start: "given" for the given orientations (as they are or explored), else the start."""
    return "given" if start.startswith("given") else start


def global_search(images, q_init, *, shifts=None, ctf=None, pixel_size: float = 1.0, restarts: int = 2,
                  steps: int = 40, minibatch: int | None = None, beta0: float = 1.0, shift_grid: int | None = None,
                  joint_grid: int = 1, iterations: int = 10, start_band: int | None = None, max_band: int = 48,
                  margin: int = 10,
                  sampling: float = 1.5,
                  max_shift: float | None = None, tolerance: float = 0.02, weight_floor: float = 0.01,
                  support: bool = True, recentre: bool = True, shift_prior: bool = True, subset: int | None = 20000,
                  coarse: int | None = None, seed: int = 0, device=None, progress: bool = False) -> GlobalResult:
    """Orientations and shifts of ``images`` (P, n, n) by global projection matching (module docstring).

    ``q_init`` (P, 4): the given start (e.g. ab initio orientations), or None for random starts only;
    ``shifts`` (P, 2): starting shifts (pixels, default 0); ``ctf``: see the module docstring;
    ``pixel_size``: Å (reported resolutions only). Exploration (:func:`_explore`) of each start (the given one, also
    kept as it is, and up to ``restarts`` random ones, until two of different origins agree) at ``start_band``
    (Fourier pixels of the n-box; default 5.75·n/D for the particle's diameter D, :func:`_particle_diameter`,
    clamped to [6, top]): ``steps`` draws of ``minibatch`` particles (default a tenth of the particles explored, at
    least 256), inverse temperature from ``beta0`` to 1, shift offsets on a grid of (2·``shift_grid`` + 1)² points
    n/(4K) pixels apart (default :data:`CPU_SHIFT_GRID` on the CPU, :data:`SHIFT_GRID` on a GPU; the recentring's at
    least :data:`SHIFT_GRID`).
    ``support``: the references are cut to the particle's support (:func:`_support`). The start of the best mean NCC
    is recentred (``recentre``, :func:`_recentre`) and then runs up to ``iterations`` of projection matching with
    shift searches (each orientation chosen jointly with a shift offset on a grid of (2·``joint_grid`` + 1)² points
    about the particle's shift peak), its band following the half maps' FSC-0.143 resolution (never decreasing, at
    most ``max_band`` and n/2 − 4), until the band stays and fewer than ``tolerance`` of the particles move by more
    than a grid step; ``margin`` > 0: then up to ``iterations`` more with the band ``margin`` Fourier pixels beyond
    the resolution, kept if their half maps are finer (:func:`_iterations`). ``sampling``:
    direction spacing in units of 1/band rad (in-plane ≈ 1/band). ``max_shift``: pixels from the centre (default n/8).
    ``shift_prior``: a Gaussian prior on the shifts (module docstring), its standard deviation per
    axis starting at n/16 pixels. ``weight_floor``: of the reconstructions (:class:`FourierInserter`).
    ``subset``: above this many particles the starts are explored on a random subset of that size, and
    every particle is then recentred against the map of the winner's subset, up to :data:`JOIN_PASSES`
    times (whatever ``recentre`` says); None: all particles are explored. ``coarse``: directions kept per
    particle at half the band before the fine search about them, where a probe finds it safe
    (:func:`~cryoorient.orientations.polar_matching.probed_candidates`; 0: all directions; default
    :data:`CPU_COARSE` on the CPU, 0 on a GPU).
    ``seed``: random starts, draws, half sets and the subset.
    """
    t0 = time.perf_counter()
    P, n = len(images), images.shape[-1]
    if len(images.shape) != 3 or images.shape[1] != n or n < 24 or n % 2:
        raise ValueError(f"images must be a stack (P, n, n) of even n >= 24; got shape {tuple(images.shape)}")
    if P < 4:
        raise ValueError(f"global search needs at least 4 images; got {P}")
    top = min(int(max_band), n // 2 - 4)
    if start_band is not None and not 2 <= start_band <= top:
        raise ValueError(f"start_band must be in [2, {top}] (max_band, n/2 - 4); got {start_band}")
    if not 0 < beta0 <= 1:
        raise ValueError(f"beta0 (the exploration's first inverse temperature) must be in (0, 1]; got {beta0}")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    coarse = (CPU_COARSE if device.type == "cpu" else 0) if coarse is None else coarse
    shift_grid = (CPU_SHIFT_GRID if device.type == "cpu" else SHIFT_GRID) if shift_grid is None else shift_grid
    if any(int(v) != v or v < 0 for v in (shift_grid, joint_grid, coarse, margin)):
        raise ValueError(f"shift_grid, joint_grid, coarse and margin must be integers >= 0; got {shift_grid!r}, "
                         f"{joint_grid!r}, {coarse!r}, {margin!r}")
    if q_init is None and restarts < 1:
        raise ValueError("no start: give q_init or restarts >= 1")
    if minibatch is not None and not (int(minibatch) == minibatch and minibatch >= 1):
        raise ValueError(f"minibatch must be None or an integer >= 1; got {minibatch!r}")
    if subset is not None and subset < 4:
        raise ValueError(f"subset must be None or at least 4 particles; got {subset}")
    opts = {"pixel_size": float(pixel_size), "sampling": float(sampling), "weight_floor": float(weight_floor),
            "max_shift": n / 8 if max_shift is None else float(max_shift), "steps": int(steps), "beta0": float(beta0),
            "shift_grid": int(shift_grid), "joint_grid": int(joint_grid), "coarse": int(coarse),
            "support": bool(support), "margin": int(margin), "iterations": int(iterations),
            "tolerance": float(tolerance), "top": top,
            "s2": (n / 16) ** 2 if shift_prior else math.inf,
            "budget": batch_budget(device), "gen": torch.Generator().manual_seed(seed),
            "device_gen": torch.Generator(device=device).manual_seed(seed)}
    full = ParticleStack(images, ctf, working_box(top, n), device, 1024 if device.type == "cuda" else 256, seed)
    t_start = torch.zeros(P, 2, dtype=torch.float64) if shifts is None else torch.as_tensor(shifts).double().cpu()
    chosen = None if subset is None or P <= subset else torch.randperm(P, generator=opts["gen"])[:subset].sort()[0]
    stack = full if chosen is None else full.subset(chosen)
    opts["minibatch"] = max(256, stack.P // 10) if minibatch is None else int(minibatch)
    pick = (lambda x: x) if chosen is None else (lambda x: x[chosen])  # noqa: E731
    given = [] if q_init is None else [pick(torch.as_tensor(q_init).double().cpu())]
    starts = [(name, q.clone(), k) for q in given for name, k in (("given as is", 0), ("given", opts["steps"]))
              if k or name == "given as is"]
    starts += [(f"random {k + 1}", random_quaternions(stack.P, generator=seed + 1 + k, dtype=torch.float64),
                opts["steps"]) for k in range(int(restarts))]
    opts["diameter"] = _particle_diameter(stack, starts[0][1], pick(t_start), opts)
    K = start_band or int(min(top, max(6, round(5.75 * n / max(opts["diameter"], 1.0)))))
    bar = tqdm(total=len(starts) + iterations, desc="global search", unit="it", disable=not progress)
    trials, clock = [], time.perf_counter()
    agreement = separation = None
    for name, q, steps in starts:  # until the winner and the best start of another origin agree
        t, own = pick(t_start).clone(), {**opts, "steps": steps}
        ncc = _explore(stack, q, t, K, own)
        trials.append((float(ncc.mean()), name, q, t, own["s2"], ncc))
        bar.update(1)
        winner = max(trials, key=lambda trial: trial[0])
        others = [trial for trial in trials if _origin(trial[1]) != _origin(winner[1])]
        runner_up = max(others, key=lambda trial: trial[0]) if others else None
        agreement = None if runner_up is None else align_orientations(winner[2], runner_up[2]).error
        if agreement is not None and agreement < AGREEMENT:
            break
    _, name, q, t, opts["s2"], ncc = winner
    unexplored = [start[0] for start in starts[len(trials):]]
    bar.total -= len(unexplored)
    stage_seconds = {"explore": time.perf_counter() - clock}
    if runner_up is not None:
        d = ncc - runner_up[5]
        separation = float(d.mean() / (d.std() / math.sqrt(len(d))).clamp_min(1e-12))
    clock = time.perf_counter()
    if chosen is not None:  # the others join: every particle against the map of the subset's winner
        volume = _reference(_inserted(stack, q, t, working_box(K, stack.m_max), opts).volume(), q, t, opts, n)
        q_all, t_all = torch.empty(P, 4, dtype=torch.float64), t_start.clone()
        q_all[chosen], t_all[chosen] = q, t
        stack, q, t = full, q_all, t_all
        recentred = _recentre(stack, q, t, K, opts, volume)
        for _ in range(JOIN_PASSES - 1):  # again from where each moved, until few move (a shift climbs each time)
            q_old = q.clone()
            recentred = _recentre(stack, q, t, K, opts, volume)
            if float((quat_distance(q, q_old) > opts["sampling"] / K).double().mean()) < opts["tolerance"]:
                break
    else:
        recentred = _recentre(stack, q, t, K, opts) if recentre else None
    stage_seconds["recentre"], clock = time.perf_counter() - clock, time.perf_counter()
    history, scores, volume, converged, beyond, beyond_kept = _iterations(stack, q, t, K, opts, bar)
    stage_seconds["iterate"] = time.perf_counter() - clock
    bar.close()
    return GlobalResult(quaternions=q, shifts=t, scores=scores, map=volume.cpu(),
                        map_pixel_size=pixel_size * n / history[-1].box, resolution=history[-1].resolution,
                        start=name, start_scores={trial[1]: trial[0] for trial in trials}, unexplored=unexplored,
                        runner_up=None if runner_up is None else runner_up[1], agreement=agreement,
                        separation=separation,
                        recentred=recentred, explored=None if chosen is None else len(chosen),
                        iterations=history, converged=converged, beyond=beyond, beyond_kept=beyond_kept,
                        half=stack.half.clone(), shared_resolution=pixel_size * n / (K + SHARED_SHELLS), seconds=time.perf_counter() - t0, stage_seconds=stage_seconds)
