"""cryoorient.orientations.global_search: global projection matching from random starts, shifts, CTF."""

import math

import pytest
import torch
from _ctf_stack import ctf_projections

from cryoorient.geometry import quat_distance, quat_multiply, quat_to_matrix, random_quaternions
from cryoorient.imaging.phantom import default_density
from cryoorient.imaging.project import FourierProjector
from cryoorient.maps.fsc import fsc
from cryoorient.maps.refine import _rotvec_to_quat
from cryoorient.maps.transforms import density_centre, shift_map
from cryoorient.orientations import global_search as gs
from cryoorient.orientations import polar_matching as pm
from cryoorient.orientations.align import align_orientations
from cryoorient.orientations.global_search import SEPARATED, global_search
from cryoorient.orientations.polar_matching import direction_grid

BOX, PIXEL, P = 32, 3.0, 500
FAST = {"minibatch": 128, "steps": 40}  # exploration small enough for the CPU (defaults: 256 and 40)


@pytest.fixture(scope="module")
def phantom():
    return torch.from_numpy(default_density(box_size=BOX, voxel_size=PIXEL, resolution=2 * PIXEL))


@pytest.fixture(scope="module")
def stack(phantom):
    """CTF-affected 32² projections of the phantom (defocus 0.8–2.5 µm, astigmatism up to 0.1 µm), the
    particles shifted by N(0, 0.75 px) clipped at 1.5 px, white noise at 0 dB (variance of the clean images)."""
    q, t, ctf, clean = ctf_projections(phantom, P, PIXEL, shift_sigma=0.75, shift_clip=1.5)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(5)) * clean.std()
    return q, t, ctf, clean + noise


def _shift_error(q_est, t_est, t_true):
    """Per-particle shift errors (pixels) once the map's offset c (a global 3D translation, which moves every
    shift by the projection (A c)_xy) is fitted out."""
    A = quat_to_matrix(q_est)[:, :2, :]
    d = t_est - t_true
    c = torch.linalg.lstsq(A.reshape(-1, 3), d.reshape(-1)).solution
    return torch.linalg.vector_norm(d - A @ c, dim=1)


def test_candidates_follow_the_projection_convention(phantom):
    """Projections at a candidate's orientation score best at that candidate (directions × in-plane angles)."""
    search = pm.PolarSearch(phantom.float(), 10, {"sampling": 1.5, "budget": 1 << 23})
    J, L = len(search.dirs), search.L
    flat = torch.tensor([0, 5 * L + 3, (J // 2) * L + L // 4, (J - 1) * L + L - 1])
    q = search.orientations(flat)
    images = FourierProjector(phantom.float(), pad=2.0).images(q.float())
    stack = pm.ParticleStack(images, None, BOX, "cpu", 64, seed=0)
    scores = search.scores(stack, torch.arange(len(flat)), BOX, torch.zeros(len(flat), 2))
    assert torch.equal(scores.argmax(1), flat)
    assert float(scores.amax(1).min()) > 0.99
    dirs = quat_to_matrix(direction_grid(2000))[:, 2]  # viewing directions cover the sphere evenly
    assert abs(float(dirs.mean(0).norm())) < 0.01 and abs(float(dirs[:, 2].abs().mean()) - 0.5) < 0.01


def _bare_search(coefficients: float) -> pm.PolarSearch:
    """A PolarSearch with only what the log-posterior needs: N = ``coefficients`` real coefficients."""
    search = pm.PolarSearch.__new__(pm.PolarSearch)
    search.count = torch.tensor([coefficients / 2])
    return search


def test_draws_follow_the_posterior_over_offsets_directions_and_angles():
    """Draw frequencies of the 2·2·3 candidates of (L, S, J) = (3, 2, 2) NCCs against the posterior's closed form
    N (c² − c_max²) / (2 (1 − c_max²)) (N = 2000) plus the shift prior, each candidate by its flat index
    (s·J + j)·L + l; a candidate log 3 below the best is drawn 1/4 as often; candidates hundreds below never;
    when the best NCC is about 0 every candidate draws alike (c <= 0 counts as 0). The sampler gets numerators and
    norms (random per particle, offset and direction), as :meth:`PolarSearch.numerators` gives them."""
    search, rows = _bare_search(2000), 60000
    c2 = math.sqrt(0.25 - math.log(3) / (2000 / 1.5))
    top = torch.tensor([[0.5, c2] + [0.0] * 10])
    low = torch.tensor([[-0.2, -0.1, 0.01] + [0.0] * 9])
    spread = 0.5 + 0.01 * torch.randn(1, 12, generator=torch.Generator().manual_seed(2))
    shifts = torch.tensor([[[0.0, 0.0], [1.0, 0.5]]])
    for case, (scores, prior) in enumerate(((top, math.inf), (low, math.inf), (spread, 3.0))):
        L, S, J = 3, 2, 2  # scores[c], c = (s·J + j)·L + l, as PolarSearch.scores lays them out
        den = torch.rand(rows, S, J, generator=torch.Generator().manual_seed(9)) + 0.5  # the norms
        ncc = scores.view(1, S, J, L) * den[..., None]  # the numerators
        pick = search.sample(ncc, den, shifts.repeat(rows, 1, 1), prior, 1.0, torch.Generator().manual_seed(case))
        freq = torch.bincount(pick, minlength=12).double() / rows
        expected = torch.softmax(search.log_posterior(scores.double(), shifts.double(), prior)[0], 0)
        assert torch.allclose(freq, expected, atol=0.01), (case, freq, expected)
        if case == 0:
            assert abs(float(freq[1]) - 0.25) < 0.01 and int((pick > 1).sum()) == 0


def test_the_shift_prior_weighs_the_draws():
    """Two candidates of equal NCC whose shifts differ in prior by log 3 (|t|² = 2·s²·log 3 against 0): the
    shifted one is drawn 1/4 of the time with the prior, 1/2 without."""
    search, rows, s2 = _bare_search(2000), 40000, 2.0
    ncc = torch.full((rows, 2, 1, 1), 0.5)  # S = 2 offsets of one candidate each
    shifts = torch.tensor([[[0.0, 0.0], [math.sqrt(2 * s2 * math.log(3)), 0.0]]]).repeat(rows, 1, 1)
    for prior, share in ((s2, 0.25), (math.inf, 0.5)):
        pick = search.sample(ncc, torch.ones(rows, 2, 1), shifts, prior, 1.0, torch.Generator().manual_seed(0))
        assert abs(float(pick.double().mean()) - share) < 0.015, (prior, float(pick.double().mean()))


def test_peaks_hold_the_best_candidate_of_all(stack, phantom):
    """The best candidate (highest log-posterior with the shift prior) from the per-offset, per-direction peaks
    over the angles is the best of the full candidate list (:meth:`PolarSearch.scores`), NCC and index; the
    peaks (the numerators' maxima divided by the norm) are the NCC's maxima over the angles, bit for bit, though
    on the CPU the peaks are taken chunk by chunk of directions (:data:`CPU_CHUNK`) and the correlations at once."""
    q, t, ctf, images = stack
    search = pm.PolarSearch(phantom.float(), 8, {"sampling": 1.5, "budget": 1 << 23}, 9)
    particles = pm.ParticleStack(images[:40], ctf, BOX, "cpu", 64, seed=0)
    idx, offsets = torch.arange(40), gs._offsets(particles, 8, 1)
    assert pm.CPU_CHUNK // (search.L * len(idx) * len(offsets)) < len(search.dirs) / 10  # more than 10 chunks
    moved = t[idx][:, None] + offsets.double()
    full = search.scores(particles, idx, BOX, t[idx], offsets)
    best = search.log_posterior(full, moved, 2.0).argmax(1)
    ncc, angle = search.peaks(particles, idx, BOX, t[idx], offsets)
    ncc_all, angle_all = search.correlations(particles, idx, BOX, t[idx], offsets).max(0)
    assert torch.equal(ncc, ncc_all.flatten(1)) and torch.equal(angle, angle_all.flatten(1))
    pair, q_best, ncc_best = search.best(ncc, angle, moved, 2.0)
    assert torch.equal(pair, best // search.L) and torch.equal(q_best, search.orientations(best))
    assert torch.equal(ncc_best, full.gather(1, best[:, None])[:, 0])


def test_the_batch_budget_follows_the_free_gpu_memory(monkeypatch):
    """2^23 correlations a batch on the CPU; on a GPU the largest power of two with 32 bytes free per element,
    capped at 2^30 and never below 2^20."""
    assert pm.batch_budget(torch.device("cpu")) == 1 << 23
    for free, budget in ((80 << 30, 1 << 30), (24 << 30, 1 << 29), (32 << 30, 1 << 30), (1 << 20, 1 << 20)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 80 << 30))
        assert pm.batch_budget(torch.device("cuda")) == budget


def test_angle_counts_cover_the_outer_ring_with_fast_fft_lengths():
    """L is the smallest multiple of 8 of at least 2πK with no prime factor above FFT_PRIME: the old count 8·⌈2πK/8⌉
    where it has none (band 48: 304), the next such length where it has (bands 46–47: 296 = 8·37 → 304)."""
    def largest_prime(n):
        return max(p for p in range(2, n + 1) if n % p == 0 and all(p % d for d in range(2, p)))

    for K in range(1, 97):
        L = pm.angle_count(K)
        assert L % 8 == 0 and L >= 2 * math.pi * K and largest_prime(L) <= pm.FFT_PRIME
        assert all(largest_prime(c) > pm.FFT_PRIME for c in range(8 * math.ceil(2 * math.pi * K / 8), L, 8))
    assert [pm.angle_count(K) for K in (36, 44, 46, 47, 48, 52)] == [232, 280, 304, 304, 304, 336]


def test_a_restricted_set_of_directions_scores_as_the_full_grid(stack, phantom):
    """Peaks over chosen directions per particle (``dirs``) are the full grid's peaks at those directions, and the
    best candidate among them is reported in the full grid's numbering."""
    q, t, ctf, images = stack
    search = pm.PolarSearch(phantom.float(), 8, {"sampling": 1.5, "budget": 1 << 23}, 9)
    particles = pm.ParticleStack(images[:40], ctf, BOX, "cpu", 64, seed=0)
    idx, offsets, J = torch.arange(40), gs._offsets(particles, 8, 1), len(search.dirs)
    moved = t[idx][:, None] + offsets.double()
    ncc, angle = search.peaks(particles, idx, BOX, t[idx], offsets)
    dirs = torch.randint(0, J, (40, 25), generator=torch.Generator().manual_seed(3))
    ncc_r, angle_r = search.peaks(particles, idx, BOX, t[idx], offsets, dirs)
    at = dirs[:, None, :].expand(-1, 9, -1)
    assert torch.allclose(ncc_r, ncc.view(40, 9, J).gather(2, at).flatten(1), atol=1e-5)
    assert torch.equal(angle_r, angle.view(40, 9, J).gather(2, at).flatten(1))
    allowed = torch.full_like(ncc, -2.0).view(40, 9, J).scatter(2, at, ncc.view(40, 9, J).gather(2, at)).flatten(1)
    c_r, q_r, best_r = search.best(ncc_r, angle_r, moved, 2.0, dirs)
    c, q_all, best = search.best(allowed, angle, moved, 2.0)
    assert torch.equal(c_r, c) and torch.equal(q_r, q_all) and torch.allclose(best_r, best, atol=1e-5)


def test_coarse_to_fine_keeps_the_best_candidate(stack, phantom):
    """The coarse grid's neighbourhoods cover the fine grid, each within the coarse spacing; the coarse-to-fine
    search (the 8 best directions at half the band, then the fine grid about them) finds the full search's
    best candidate for nearly every particle of the 0 dB stack (here all 500), and two iterations with it
    reach the orientations of the full search (0.066 rad from the truth, both)."""
    q, t, ctf, images = stack
    opts = {"sampling": 1.5, "budget": 1 << 23, "coarse": 8, "s2": 2.0}
    search = pm.PolarSearch(phantom.float(), 12, opts, 9)
    coarse = pm.coarse_stage(phantom.float(), search, opts, 9)
    rough, near = coarse[:2]
    assert rough.K == 6 and torch.equal(near.unique(), torch.arange(len(search.dirs)))
    view, fine = quat_to_matrix(rough.dirs)[:, 2], quat_to_matrix(search.dirs)[:, 2]  # viewing directions
    cos = (view[:, None] * fine[near]).sum(-1)
    assert float(cos.min()) >= math.cos(math.sqrt(4 * math.pi / len(rough.dirs))) - 1e-9
    particles = pm.ParticleStack(images, ctf, BOX, "cpu", 64, seed=0)
    offsets = gs._offsets(particles, 12, 1)
    found = []
    for stage in (None, coarse):
        qq, tt = torch.empty(P, 4, dtype=torch.float64), t.clone()
        pm.best_candidates(particles, search, qq, tt, BOX, offsets, {**opts, "max_shift": 6.0}, stage)
        found.append(qq)
    same = float((quat_distance(*found) < 1e-9).double().mean())
    assert same > 0.98, same
    assert pm.coarse_stage(phantom.float(), pm.PolarSearch(phantom.float(), 10, opts, 9), opts, 9) is None  # below 12
    assert pm.coarse_stage(phantom.float(), search, {**opts, "coarse": 0}, 9) is None
    kept = {"shifts": t, "ctf": ctf, "pixel_size": PIXEL, "restarts": 0, "steps": 0, "start_band": 12, "iterations": 2}
    errors = [align_orientations(q, global_search(images, q, coarse=c, **kept).quaternions).error for c in (0, 8)]
    assert errors[1] < errors[0] + 0.005, errors


def test_coarse_to_fine_only_where_the_probe_agrees(stack, phantom, monkeypatch):
    """probed_candidates at band 12: on the 0 dB stack the probe's 200 particles find the same candidates coarse to
    fine (8 coarse directions) as in full, and the other 300 are searched coarse to fine; on pure noise with one
    coarse direction kept the two disagree, and the other 300 are searched in full, so that every particle takes
    the full search's candidate. On the CPU the global search probes by default (``coarse`` 16); 0 turns it off."""
    q, t, ctf, images = stack
    calls = []
    real = pm.best_candidates
    monkeypatch.setattr(pm, "best_candidates", lambda *a: calls.append((a[7] is not None, len(a[8]))) or real(*a))
    search = pm.PolarSearch(phantom.float(), 12, {"sampling": 1.5, "budget": 1 << 23}, 9)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(8))
    for data, coarse, agreed in ((images, 8, True), (noise, 1, False)):
        opts = {"sampling": 1.5, "budget": 1 << 23, "coarse": coarse, "s2": 2.0, "max_shift": 6.0,
                "gen": torch.Generator().manual_seed(0)}
        particles = pm.ParticleStack(data, ctf, BOX, "cpu", 64, seed=0)
        offsets = gs._offsets(particles, 12, 1)
        calls.clear()
        qq, tt = torch.empty(P, 4, dtype=torch.float64), t.clone()
        scores, agreement = pm.probed_candidates(particles, search, phantom.float(), qq, tt, BOX, offsets, opts)
        assert (agreement >= pm.COARSE_AGREEMENT) == agreed, agreement
        assert calls == [(True, pm.PROBE), (False, pm.PROBE), (agreed, P - pm.PROBE)]
        q_full, t_full = torch.empty(P, 4, dtype=torch.float64), t.clone()
        full = real(particles, search, q_full, t_full, BOX, offsets, opts)
        same = (quat_distance(qq, q_full) < 1e-9) & (tt == t_full).all(1)
        assert bool(same.all()) if not agreed else float(same.double().mean()) > 0.98
        assert not bool(scores.isnan().any()) and torch.allclose(scores[same], full[same], atol=1e-5)
    monkeypatch.undo()
    kept = {"shifts": t, "ctf": ctf, "pixel_size": PIXEL, "restarts": 0, "steps": 0, "start_band": 12, "iterations": 1,
            "margin": 0, "device": "cpu"}
    probed = global_search(images, q, **kept).iterations[0]
    assert probed.coarse is not None and probed.coarse >= pm.COARSE_AGREEMENT, probed.coarse
    assert global_search(images, q, coarse=0, **kept).iterations[0].coarse is None


def test_the_shift_prior_keeps_noise_dominated_shifts_near_the_truth(phantom):
    """Shift searches against the true projections, shifts N(0, 1.5 px) clipped at 4 px. At noise 10× the
    images' std the likelihood's peak is mostly noise (1.63 px off, zero 1.90 px off); the posterior's
    peak under the true prior is 0.95 px off, and its mean |t|²/2 estimates the prior's variance
    (2.18 px² against 2.25: the EM of the iterations). At noise 1× the prior changes nothing that matters."""
    q, t, ctf, clean = ctf_projections(phantom, 2000, PIXEL, shift_sigma=1.5, shift_clip=4.0)
    F = FourierProjector(phantom.float(), pad=2.0).slices(q.float())
    zero = float(t.norm(dim=1).mean())
    for noise in (10.0, 1.0):
        images = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(5)) * clean.std() * noise
        particles = pm.ParticleStack(images, ctf, BOX, "cpu", 256, seed=0)
        (ml, _), (post, t2) = (pm.shift_peak(particles, torch.arange(len(t)), BOX, F, 12, 8.0, s2) for s2 in (math.inf, 2.25))
        ml, post = (float((s - t).norm(dim=1).mean()) for s in (ml, post))
        if noise > 1:
            assert ml > 0.8 * zero and post < 0.6 * zero and abs(float(t2.mean()) / 2 - 2.25) < 0.3, (ml, post, zero)
        else:
            assert post < 0.15 and abs(post - ml) < 0.01, (ml, post)


def test_recovers_orientations_and_shifts_from_random_starts(stack):
    q, t, ctf, images = stack
    res = global_search(images, None, ctf=ctf, pixel_size=PIXEL, restarts=3, **FAST)
    assert res.start.startswith("random") and list(res.start_scores) == ["random 1", "random 2"] and res.explored is None
    # the first two agree (below), so the third is left out, and the summary says so
    assert res.unexplored == ["random 3"] and "random 3 not explored: two starts of different origins" in res.summary()
    assert res.start_scores[res.start] == max(res.start_scores.values())  # the winner is the best-matching start
    assert f"(mean NCC of the starts: random 1 {res.start_scores['random 1']:.4f}, random 2 " in res.summary()
    # both random starts reach the same orientations: the verdict, computed from them, says so
    assert res.reproducible and res.agreement < 0.15 and {res.start, res.runner_up} == {"random 1", "random 2"}
    assert align_orientations(q, res.quaternions).error < 0.15  # the grid's spacing is 1.5/12 rad at the last band
    err = _shift_error(res.quaternions, res.shifts, t)
    assert float(err.mean()) < 0.3, float(err.mean())
    last = res.iterations[-1]
    assert last.band == 12 and res.map.shape == (last.box,) * 3 and res.resolution < 10
    # stopped by the rule (the band stayed and fewer than 2 % moved by a grid step), before the cap of 10
    assert res.converged and last.changed < 0.02 and len(res.iterations) < 10 and "the cap" not in res.summary()
    assert res.summary().startswith(f"global search: start '{res.start}'") and "; reproducible: starts" in res.summary()
    assert list(res.stage_seconds) == ["explore", "recentre", "iterate"] and min(res.stage_seconds.values()) > 0
    assert sum(res.stage_seconds.values()) <= res.seconds and "explore " in res.summary()


def test_shifts_beyond_the_exploration_grid_are_found(phantom):
    """Particles shifted by N(0, 2.5 px) clipped at 5 px, beyond the exploration's offset grid (±shift_grid·n/(4K),
    0.9 px at band 9 with the CPU's 1, 1.8 px with 2, that of the figures below; with 1 in the recentring too, E_OR
    0.109 rad and 1.8 % off, with 2 there 0.073 rad and 0.2 %): each draw moves the particle's shift, and the winner
    is recentred, so random starts find orientations and shifts, and the shift prior's spread is theirs. Seeds 0–3
    (before the shift prior): E_OR 0.069–0.074 rad, at most 0.2 % of the particles more than 0.3 rad off, shifts
    0.12–0.13 px off; without the recentring 0.10–0.20 rad and 1–5 % (their true shifts the largest); with the
    shifts also kept at the start during the exploration 0.82 rad, 1.05 px."""
    q, t, ctf, clean = ctf_projections(phantom, P, PIXEL, shift_sigma=2.5, shift_clip=5.0)
    images = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(5)) * clean.std()
    res = global_search(images, None, ctf=ctf, pixel_size=PIXEL, restarts=2, max_shift=6.0, **FAST)
    found = align_orientations(q, res.quaternions)
    assert found.error < 0.1 and float((found.errors > 0.3).double().mean()) < 0.01
    assert float(_shift_error(res.quaternions, res.shifts, t).mean()) < 0.2
    # the shift prior's spread, estimated from the data (EM), is the true shifts' (2.43 against 2.42 px)
    rms = math.sqrt(float(t.pow(2).sum(1).mean()) / 2)
    assert abs(res.iterations[-1].shift_sd - rms) < 0.25 and "shift prior σ" in res.summary(), (res.iterations[-1].shift_sd, rms)


def test_a_subset_explores_and_every_particle_finds_its_orientation(phantom, monkeypatch):
    """Above ``subset`` particles the starts are explored on a random subset; every particle (the other 60 %
    too) is then recentred against the winner's map until few move, and iterated: the data of the test
    above, all 500 particles recovered (0.071 rad, 0.2 % more than 0.3 rad off; explored from all 500:
    0.072 rad, 0.2 %; with one recentring 0.081 rad, 0.6 %, all of them outside the subset)."""
    q, t, ctf, clean = ctf_projections(phantom, P, PIXEL, shift_sigma=2.5, shift_clip=5.0)
    images = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(5)) * clean.std()
    explored, explore = [], gs._explore
    monkeypatch.setattr(gs, "_explore", lambda stack, *a: explored.append(stack.P) or explore(stack, *a))
    res = global_search(images, None, ctf=ctf, pixel_size=PIXEL, restarts=2, max_shift=6.0, subset=200,
                        recentre=False, **FAST)
    assert explored == [200, 200]  # the starts saw the subset only
    assert res.recentred is not None and len(res.scores) == P  # all particles recentred, then iterated
    assert res.explored == 200 and "starts explored on 200 of 500 particles" in res.summary()
    found = align_orientations(q, res.quaternions)  # one recentring: 0.081 rad, 3 particles wrong
    assert found.error < 0.077 and int((found.errors > 0.3).sum()) <= 2, (found.error, int((found.errors > 0.3).sum()))
    assert float(_shift_error(res.quaternions, res.shifts, t).mean()) < 0.2
    with pytest.raises(ValueError, match="subset"):
        global_search(images, None, subset=3)


def test_recentring_and_joint_offsets_free_particles_held_at_their_mirror_view_by_a_wrong_shift(phantom):
    """The quarter of the particles with the largest shifts start at their mirror view (rotated by π about
    the image's x axis) with shift 0, the others at the truth. Orientations chosen at the shift peak alone
    (``joint_grid`` = 0): iterations keep most of them there (85 %), the recentring frees most (14 % left).
    Chosen jointly with the shift offsets about the peak (``joint_grid`` = 1, the default): iterations
    alone free some (58 % left), with the recentring 2 % are left."""
    q, t, ctf, clean = ctf_projections(phantom, P, PIXEL, shift_sigma=2.5, shift_clip=5.0)
    images = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(5)) * clean.std()
    held = t.norm(dim=1) > t.norm(dim=1).quantile(0.75)
    start, shifts = q.clone(), t.clone()
    start[held], shifts[held] = quat_multiply(torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64), q[held]), 0.0
    opts = {"ctf": ctf, "restarts": 0, "steps": 0, "iterations": 3, "start_band": 10, "pixel_size": PIXEL,
            "max_shift": 8.0}
    left = {}
    for joint_grid in (0, 1):
        for recentre in (True, False):
            res = global_search(images, start, shifts=shifts, recentre=recentre, joint_grid=joint_grid, **opts)
            assert (res.recentred is None) != recentre and ("recentred" in res.summary()) == recentre
            errors = quat_distance(res.quaternions, q)  # the others stay at the truth: no frame to align
            assert float((errors[~held] > 0.3).double().mean()) < 0.01
            left[joint_grid, recentre] = float((errors[held] > 0.3).double().mean())
    assert left[0, False] > 0.75 and left[0, True] < 0.3, left
    assert left[1, False] < 0.7 and left[1, True] < 0.06, left


def test_the_blob_is_the_mean_projection(phantom):
    """The mean projection from :func:`pm.mean_projection`: a spherical Gaussian's is its projection along any axis;
    the phantom's is the mean of its projections at 3,000 random orientations."""
    ax = torch.arange(BOX, dtype=torch.float32) - BOX // 2
    gauss = torch.exp(-(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2) / (2 * 3.0**2))
    for volume, q in ((gauss, random_quaternions(1, generator=1)), (phantom.float(), random_quaternions(3000, generator=1))):
        mean = FourierProjector(volume, pad=2.0).images(q.float()).mean(0)
        expected = torch.fft.rfft2(torch.fft.ifftshift(mean))
        blob = pm.mean_projection(volume)[0]
        assert float((blob - expected).abs().max() / expected.abs().max()) < 0.03


def test_the_support_keeps_the_particle_and_drops_negative_and_distant_density(phantom):
    """The reference cut to the support: negative density zeroed, density beyond 0.7·D gone, the particle
    within 0.6·D unchanged; nothing changes with ``support`` off."""
    v = phantom.float() - 0.1 * float(phantom.max())  # some density negative
    v[2, 2, 2] = 5.0  # far from the centre (25 voxels)
    D = 20.0  # diameter, in pixels of an n = 64 box: 10 voxels of this 32-box
    cut = gs._support(v, {"support": True, "diameter": D}, 64)
    assert float(cut.min()) == 0.0 and cut[2, 2, 2] == 0.0
    ax = torch.arange(BOX) - BOX // 2
    r = torch.sqrt(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2)
    assert torch.equal(cut[r <= 6], v[r <= 6].clamp_min(0)) and float(cut[r >= 7].abs().max()) == 0.0
    assert torch.equal(gs._support(v, {"support": False, "diameter": D}, 64), v)


def test_pure_noise_is_not_reproducible():
    """Images of noise alone: random starts reach unrelated orientations, and the verdict says so; as none agree,
    every start is explored."""
    noise = torch.randn(200, BOX, BOX, generator=torch.Generator().manual_seed(8))
    res = global_search(noise, None, restarts=3, minibatch=64, steps=10, iterations=1, start_band=6, margin=0)
    assert res.reproducible is False and res.agreement > 1.0
    assert list(res.start_scores) == ["random 1", "random 2", "random 3"] and res.unexplored == []
    assert "not explored" not in res.summary()
    assert res.ambiguous and res.separation < SEPARATED  # neither start's orientations match better
    assert "NOT reproducible: starts 'random" in res.summary()
    # one iteration allowed, and noise particles move anywhere in it: stopped at the cap, and said
    assert res.iterations[-1].changed > 0.2 and not res.converged
    assert "1 iterations (the cap: not converged) to band 6 px" in res.summary()
    given = global_search(noise, random_quaternions(200, generator=9, dtype=torch.float64), restarts=0, steps=2,
                          minibatch=64, iterations=1, start_band=6)
    assert given.reproducible is None and given.runner_up is None  # one origin (the given orientations) only
    assert "reproducibility not checked" in given.summary()


def test_each_half_set_meets_its_own_half_map_only(stack, monkeypatch):
    """An iteration (here coarse to fine, with a probe) leaves the particles of half set 0 where it does whatever
    the images of half set 1 hold: their half maps never meet from the iterations on (gold standard). What the
    half sets share is the FSC that weighs each shell of both references (as in RELION), held fixed here."""
    q, t, ctf, images = stack
    curves = []

    def first_fsc(a, b, voxel_size):
        curves.append(curves[0] if curves else fsc(a, b, voxel_size))
        return curves[-1]

    monkeypatch.setattr(gs, "fsc", first_fsc)
    half = torch.randperm(P, generator=torch.Generator().manual_seed(0)) % 2  # ParticleStack's half sets of seed 0
    other = images.clone()
    other[half == 1] = torch.randn(int((half == 1).sum()), BOX, BOX, generator=torch.Generator().manual_seed(4))
    runs = []
    for imgs in (images, other):
        opts = {"pixel_size": PIXEL, "sampling": 1.5, "weight_floor": 0.01, "max_shift": BOX / 8, "joint_grid": 1,
                "coarse": 8, "support": True, "diameter": 20.0, "s2": 1.0, "budget": 1 << 23,
                "gen": torch.Generator().manual_seed(1)}
        stack_ = pm.ParticleStack(imgs, ctf, BOX, "cpu", 256, seed=0)
        assert torch.equal(stack_.half, half)
        q1, t1 = _rotvec_to_quat(0.05 * torch.randn(P, 3, generator=torch.Generator().manual_seed(2)).double()), t.clone()
        q1 = quat_multiply(q1, q)
        record, scores, _ = gs._iterate(stack_, q1, t1, 12, opts)
        assert record.coarse is not None  # the probe ran in each half set
        runs.append((q1, t1, scores))
    (qa, ta, sa), (qb, tb, sb) = runs
    h0, h1 = half == 0, half == 1
    assert torch.equal(qa[h0], qb[h0]) and torch.equal(ta[h0], tb[h0]) and torch.equal(sa[h0], sb[h0])
    assert not torch.equal(qa[h1], qb[h1])


def test_pure_noise_half_maps_do_not_pass_the_band_the_half_sets_shared():
    """Pure noise: the half maps of the iterations (and those beyond the resolution, with the margin) fall below
    FSC 0.143 before :attr:`GlobalResult.shared_resolution`; one map for both half sets took them to 8.5 Å here
    (session 32), finer than that band, 10.7 Å."""
    noise = torch.randn(1000, BOX, BOX, generator=torch.Generator().manual_seed(8))
    res = global_search(noise, None, restarts=1, minibatch=128, steps=10, iterations=6, pixel_size=PIXEL)
    assert res.shared_resolution == pytest.approx(BOX * PIXEL / (7 + gs.SHARED_SHELLS))  # the starting band, 7
    assert min(it.resolution for it in res.iterations + res.beyond) >= res.shared_resolution
    assert torch.equal(res.half, torch.randperm(1000, generator=torch.Generator().manual_seed(0)) % 2)
    assert f"(the half sets shared one map up to {res.shared_resolution:.2f} Å)" in res.summary()


def _planted_iterations(monkeypatch, resolution, margin, start):
    """gs._iterations with each iteration's half maps at ``resolution(band)`` Å (n = 64, 2 Å pixels: band
    = 128 / resolution), no particle changing; each iteration adds 1 to q, t and the shift prior's variance.
    Returns the bands searched, the result of _iterations, q and the variance after it."""
    bands = []

    def iterate(stack, q, t, K, opts):
        bands.append(K)
        q += 1
        t += 1
        opts["s2"] += 1
        return gs.GlobalIteration(band=K, box=2 * K + 8, resolution=resolution(K), directions=0, angles=0,
                                  mean_score=0.0, changed=0.0, mean_rotation=0.0, mean_shift=0.0), K, None

    monkeypatch.setattr(gs, "_iterate", iterate)
    bar = type("Bar", (), {"total": 0, "update": lambda self, k: None, "set_postfix": lambda self, **kw: None})()
    opts = {"iterations": 5, "top": 28, "tolerance": 0.02, "pixel_size": 2.0, "margin": margin, "s2": 0.0}
    q, t = torch.zeros(3, 4), torch.zeros(3, 2)
    out = gs._iterations(type("Stack", (), {"n": 64})(), q, t, start, opts, bar)
    return bands, out, q, opts["s2"]


def test_the_band_follows_the_half_maps_resolution_and_the_margin_is_kept_only_if_the_half_maps_get_finer(
        monkeypatch):
    """Each next band: the half maps' resolution band, never lower than the last, at most the top; the iterations
    stop once the band stays and few particles change. Then, with a margin, iterations from there with the band
    that many pixels beyond the resolution: dropped (q, t, the shift prior back where they were) when their half
    maps are no finer, kept when they are; the summary says which, with both resolutions."""
    for margin, start, expected in ((0, 10, [10, 16]), (0, 20, [20]), (5, 10, [10, 16, 21]), (40, 10, [10, 16, 28])):
        bands, (history, last, _, converged, beyond, kept), q, s2 = _planted_iterations(
            monkeypatch, lambda K: 8.0, margin, start)  # 8 Å whatever the band: the resolution's band is 16
        assert bands == expected and converged, (margin, bands)
        assert [it.band for it in history] == expected[:len(expected) - bool(margin)] and last == history[-1].band
        assert kept is (None if not margin else False) and len(beyond) == bool(margin)
        assert float(q[0, 0]) == s2 == len(history)  # the dropped iteration undone
    # the half maps as fine as the band allows: each band's resolution band is the band itself
    bands, (history, last, _, converged, beyond, kept), q, s2 = _planted_iterations(
        monkeypatch, lambda K: 128.0 / K, 5, 10)
    assert bands == [10, 15, 20, 25, 28] and kept and converged and last == 28
    assert [it.band for it in beyond] == [15, 20, 25, 28] and len(history) == 5 and float(q[0, 0]) == s2 == 5
    for planted, word in ((lambda K: 128.0 / K, "kept: half maps 4.57 Å, finer than 12.80 Å without"),
                          (lambda K: 8.0, "dropped: half maps 8.00 Å, not finer than 8.00 Å without")):
        history, _, _, _, beyond, kept = _planted_iterations(monkeypatch, planted, 5, 10)[1]
        res = gs.GlobalResult(quaternions=torch.zeros(3, 4), shifts=torch.zeros(3, 2), scores=torch.zeros(3),
                              map=torch.zeros(1), map_pixel_size=1.0, resolution=history[-1].resolution, start="given",
                              start_scores={"given": 0.0}, iterations=history, beyond=beyond, beyond_kept=kept)
        assert word in res.summary() and ("dropped: 21 px" in res.trajectory()) is (not kept), res.summary()


def test_a_runner_up_stopped_in_a_worse_optimum_is_told_apart(stack):
    """The true orientations against a random start explored for one step: the two disagree, and the particles
    match the truth's orientations far better: the runner-up's optimum is worse, not the data ambiguous."""
    q, t, ctf, images = stack
    res = global_search(images, q, shifts=t, ctf=ctf, pixel_size=PIXEL, restarts=1, minibatch=128, steps=1,
                        iterations=1)
    assert res.start.startswith("given") and res.runner_up == "random 1"
    assert res.reproducible is False and res.separation > SEPARATED and res.ambiguous is False
    assert "not reproduced, the runner-up a worse optimum: starts 'given" in res.summary()


def test_the_map_is_centred_and_the_shifts_take_the_offset(phantom):
    """Particles of an off-centre map, imaged without shifts: the search centres its reference and the
    shifts take the particle's offset, the projection (A c)_xy of the map's centre c."""
    moved = shift_map(phantom.float(), torch.tensor([2.5, -1.5, 1.0]))
    c = density_centre(moved)  # (x, y, z) voxels: where the particle's density is
    q = random_quaternions(300, generator=11, dtype=torch.float64)
    images = FourierProjector(moved, pad=2.0).images(q.float())
    res = global_search(images, q, restarts=0, steps=0, iterations=2, start_band=10, pixel_size=PIXEL)
    assert float(density_centre(res.map).norm()) < 0.3  # m-box voxels
    err = torch.linalg.vector_norm(res.shifts - quat_to_matrix(q)[:, :2, :] @ c, dim=1)
    assert float(err.mean()) < 0.25, float(err.mean())
    assert align_orientations(q, res.quaternions).error < 0.2  # the grid's spacing is 1.5/10 rad at band 10


def test_the_ctf_is_used(stack):
    """From orientations 0.3 rad off: with the CTF the search finds them; ignoring it, it does worse."""
    q, t, ctf, images = stack
    v = torch.randn(P, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 0.3 / math.sqrt(3)
    start = quat_multiply(_rotvec_to_quat(v), q)
    opts = {"restarts": 0, "steps": 0, "iterations": 4, "start_band": 10, "pixel_size": PIXEL}
    with_ctf = align_orientations(q, global_search(images, start, shifts=t, ctf=ctf, **opts).quaternions).error
    without = align_orientations(q, global_search(images, start, shifts=t, ctf=None, **opts).quaternions).error
    assert with_ctf < 0.1 and without > 2 * with_ctf, (with_ctf, without)


def test_the_exploration_shift_grid_is_one_on_the_cpu_unless_given(stack, monkeypatch):
    """The exploration's offsets: ``shift_grid`` each way, by default CPU_SHIFT_GRID (1) on the CPU; the recentring's
    at least 2 each way (with 1 there too, shifts of up to 5 px in 32 lost 0.04 rad: the test below)."""
    q, t, ctf, images = stack
    seen, offsets = [], gs._offsets

    def recorded(st, K, reach):
        seen.append((reach, len(offsets(st, K, reach))))
        return offsets(st, K, reach)

    monkeypatch.setattr(gs, "_offsets", recorded)
    for grid, expected in ((None, 1), (2, 2), (0, 0)):
        seen.clear()
        global_search(images[:64], q[:64], shifts=t[:64], ctf=ctf, restarts=0, steps=1, minibatch=32, iterations=1,
                      margin=0, shift_grid=grid, device="cpu")
        grids = [expected, expected, max(expected, 2)]  # "given as is", "given" explored, then the recentring
        assert seen[:3] == [(g, (2 * g + 1) ** 2) for g in grids], seen
    assert gs.CPU_SHIFT_GRID == 1 and gs.SHIFT_GRID == 2


def test_refusals(stack):
    q, t, ctf, images = stack
    with pytest.raises(ValueError, match="no start"):
        global_search(images, None, restarts=0)
    with pytest.raises(ValueError, match="even n"):
        global_search(images[:, :31, :31], q)
    with pytest.raises(ValueError, match="start_band"):
        global_search(images, q, start_band=20)
    for beta0 in (0.0, -1.0, 2.0):
        with pytest.raises(ValueError, match="beta0"):
            global_search(images, q, beta0=beta0)
    for grids in ({"joint_grid": -1}, {"joint_grid": 1.5}, {"shift_grid": -2}, {"coarse": -1}, {"coarse": 2.5},
                  {"margin": -1}, {"margin": 0.5}):
        with pytest.raises(ValueError, match="coarse and margin must be integers"):
            global_search(images, q, **grids)
    for minibatch in (0, -5, 2.5):
        with pytest.raises(ValueError, match="minibatch must be None or an integer"):
            global_search(images, q, minibatch=minibatch)
    bad = images.clone()
    bad[7, 3, 3] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        global_search(bad, q)
