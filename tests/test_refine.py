import math

import numpy as np
import pytest
import torch

from _eor_helpers import mean_error
from cryoorient.cli import main
from cryoorient.imaging.ctf import ctf_2d
from cryoorient.geometry import (euler_to_quat, quat_distance, quat_multiply, quat_to_euler, quat_to_matrix,
                                 random_quaternions)
from cryoorient.io import Particles, read_particles, read_star, write_map, write_stack, write_star
from cryoorient.imaging.phantom import default_density
from cryoorient.imaging.project import project_real
from cryoorient.maps.transforms import mirror
from cryoorient.imaging.project import FourierProjector
from cryoorient.maps.half_maps import HalfMaps
from cryoorient.maps.refine import _Band, _matching_scale, _rotvec_to_quat, _Search, mirror_orientations, refine
from cryoorient.imaging.shift import shift_images

N_IMAGES, BOX, VOXEL = 300, 32, 4.0


def _perturb(q, mean_angle, seed):
    """Rotate each orientation by a random rotation vector of mean length ``mean_angle`` (rad)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(q.shape[0], 3, generator=g, dtype=torch.float64) * (mean_angle / (2 * math.sqrt(2 / math.pi)))
    return quat_multiply(_rotvec_to_quat(v), q)


@pytest.fixture(scope="module")
def toy():
    """A clean phantom, its real-space projections at random orientations, shifted by up to 1.5 px."""
    vol = torch.from_numpy(default_density(box_size=BOX, voxel_size=VOXEL, resolution=10.0)).double()
    q = random_quaternions(N_IMAGES, generator=1, dtype=torch.float64)
    t = (torch.rand(N_IMAGES, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1) * 1.5
    images = shift_images(project_real(vol, q), t).float()
    return vol.float(), q, t, images


def test_refinement_recovers_perturbed_orientations_and_shifts(toy):
    vol, q, t, images = toy
    q0 = _perturb(q, 0.2, seed=2)
    start = mean_error(q, q0)
    assert 0.17 < start < 0.23
    res = refine(images, q0, rounds=4, pixel_size=VOXEL, progress=False, device="cpu")
    end = mean_error(q, res.quaternions)
    assert end < 0.05 < start, (start, end)
    assert torch.linalg.vector_norm(res.shifts - t, dim=1).mean() < 0.3
    # the first round's map is blurred by the start errors; the last one is not
    assert res.rounds[0].mean_score < res.rounds[-1].mean_score
    assert res.rounds[0].radius == 0.25 and res.rounds[-1].radius < 0.1
    assert res.resolution <= res.rounds[0].resolution
    # each round's half maps are no worse than those it started from: all rounds kept
    assert res.rounds[0].resolution_after < res.rounds[0].resolution
    assert res.stopped is None and res.kept == 4 and len(res.rounds) == 4
    assert res.half_maps.shape == (2, BOX, BOX, BOX) and res.map.shape == (BOX, BOX, BOX)
    assert set(res.half.tolist()) == {0, 1} and abs(int(res.half.sum()) - N_IMAGES // 2) <= 1
    assert torch.allclose(res.origins_angst, -res.shifts * VOXEL)
    # the refined map is the phantom (same hand)
    corr = np.corrcoef(res.map.flatten().numpy(), vol.flatten().numpy())[0, 1]
    assert corr > 0.9
    assert res.handedness_flipped is None
    assert res.soft_scale is not None and 0 < res.soft_scale <= 1


def test_mirrored_orientations_give_the_same_images_of_the_mirrored_map(toy):
    vol = toy[0].double()
    q = random_quaternions(5, generator=7, dtype=torch.float64)
    a = project_real(vol, q)
    b = project_real(mirror(vol).double(), mirror_orientations(q))
    assert torch.allclose(a, b, atol=1e-5 * a.abs().max())
    assert not torch.allclose(a, project_real(mirror(vol).double(), q), atol=1e-2 * a.abs().max())


def test_handedness_is_reported_against_a_reference(toy):
    vol, q, t, images = toy
    same = refine(images, q, shifts=t, rounds=0, pixel_size=VOXEL, reference=vol, progress=False)
    assert same.handedness_flipped is False and same.reference_fsc > 0.8
    assert same.hand_correlations[0] > same.hand_correlations[1]  # (same, mirror)
    assert same.soft_scale is None  # no search, no soft assignment: the maps of the given orientations
    # orientations of the mirror image reconstruct the mirrored map
    mirrored = refine(images, mirror_orientations(q), shifts=t, rounds=0, pixel_size=VOXEL, reference=vol,
                      progress=False)
    assert mirrored.handedness_flipped is True and mirrored.reference_fsc > 0.8
    assert mirrored.hand_correlations == pytest.approx(same.hand_correlations[::-1], abs=0.02)
    assert mirrored.rounds == [] and mirrored.resolution == pytest.approx(same.resolution, rel=0.05)


@pytest.mark.slow
def test_handedness_against_a_reference_in_another_frame(toy):
    vol, q, t, images = toy
    turn = random_quaternions(1, generator=9, dtype=torch.float64)
    res = refine(images, quat_multiply(mirror_orientations(q), turn), shifts=t, rounds=0, pixel_size=VOXEL,
                 reference=vol, align_reference=True, progress=False)
    assert res.handedness_flipped is True and res.reference_fsc > 0.8
    assert res.hand_correlations[1] > res.hand_correlations[0] + 0.1


def _toy_search(vol, q, t, images, radius=0.1, step=0.5):
    """Scores of the first 20 toy images on a local grid around their true orientations and shifts."""
    search = _Search(_Band(BOX, 10.0, np.ones(BOX // 2), "cpu"), 2, 1, "cpu")
    r = torch.full((20,), radius, dtype=torch.float64)
    s = torch.full((20,), step, dtype=torch.float64)
    scores = search.score(FourierProjector(vol, pad=2), images[:20], None, q[:20], t[:20], r, s)
    return search, scores, r, s


def test_soft_assignment_concentrates_on_the_best_match_of_clean_images(toy):
    vol, q, t, images = toy
    search, scores, r, step = _toy_search(vol, q, t, images)

    def posterior(scores, scale):  # over the 8 candidates of highest NCC
        return search.posterior(*scores.flatten(1).topk(8, dim=1), q[:20], t[:20], r, step, scale)

    qc, tc, w = posterior(scores, 1.0)
    assert qc.shape == (20, 8, 4) and tc.shape == (20, 8, 2)
    assert torch.allclose(w.sum(1), torch.ones(20, dtype=w.dtype))
    assert bool((w[:, 0] > 0.9).all()), w[:, 0]
    assert float(quat_distance(qc[:, 0], q[:20]).max()) < 1e-6  # the most probable candidate is the truth
    assert float((tc[:, 0] - t[:20]).abs().max()) < 1e-9
    # the candidates are those the indices name: candidate k·S + s is lattice point k at shift offset s
    which = torch.tensor([[5 * 9 + 7]] * 20)
    qk, tk, wk = search.posterior(scores.flatten(1)[:, 5 * 9 + 7 : 5 * 9 + 8], which, q[:20], t[:20], r, step, 1.0)
    assert torch.equal(qk[:, 0], search.candidates(q[:20], r)[:, 5]) and bool((wk == 1).all())
    assert torch.allclose(tk[:, 0], t[:20] + search.offsets[7] * step[:, None])
    # noise spreads the posterior, and a higher temperature spreads it further
    noisy = images[:20] + 2 * images.std() * torch.randn(images[:20].shape, generator=torch.Generator().manual_seed(8))
    scores = _toy_search(vol, q, t, noisy)[1]
    w_noisy, w_hot = posterior(scores, 1.0)[2], posterior(scores, 0.2)[2]
    assert w_hot[:, 0].mean() < w_noisy[:, 0].mean() < w[:, 0].mean()
    # the 8 of highest NCC are the 8 most probable at any temperature, their weights those of the whole grid's posterior
    for scale, got in ((1.0, w_noisy), (0.2, w_hot)):
        full = torch.softmax(search.log_prob(scores, scale), 1).topk(8, dim=1)[0]
        assert torch.allclose(got, full / full.sum(1, keepdim=True), rtol=1e-9, atol=0)


def test_temperature_calibration_matches_unbiased_sharpness(toy):
    search = _toy_search(*toy)[0]
    other = 0.4 + 0.1 * torch.rand(50, 33, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cmax = other.flatten(1).amax(1)[:, None, None]
    # scores whose log-likelihood differences are twice as large: calibrated to half the inverse temperature
    own = torch.sqrt(cmax**2 + 2 * (other**2 - cmax**2))
    assert _matching_scale(own, other, search) == pytest.approx(0.5, rel=1e-3)
    assert _matching_scale(other, other, search) == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("groups", [1, 3])
def test_each_group_is_compared_with_its_half_map_without_it(toy, groups):
    vol, q, t, images = toy
    N = 60
    half = torch.arange(N) % 2
    group = (torch.arange(N) // 2) % groups
    ctf = lambda idx, size: ctf_2d(size, VOXEL, torch.full((len(idx),), 15000.0), torch.full((len(idx),), 14000.0),  # noqa: E731
                                   torch.full((len(idx),), 30.0))
    recon = HalfMaps(images[:N], half, group, ctf, BOX, 2, 0.01, VOXEL, 4.0, "cpu", 16)
    ins, maps = recon.half_maps(q[:N], t[:N])[:2]
    seen = []
    for h, members, reference in recon.references(ins, maps, q[:N], t[:N]):
        assert bool((half[members] == h).all())
        seen += members.tolist()
        rest = torch.nonzero(half == h).squeeze(1)
        if groups > 1:  # the half map of the half's other particles, reconstructed afresh
            rest = rest[~torch.isin(rest, members)]
        alone = recon._new()
        for idx in rest.split(16):
            recon._insert(alone, idx, q[:N, None], t[:N, None], None)
        alone = alone.volume()
        assert float((reference - alone).abs().max()) < 1e-4 * float(alone.abs().max())
    assert sorted(seen) == list(range(N))  # every particle once, in one group


def test_soft_insertion_merges_the_shifts_of_one_orientation_exactly(toy):
    # each particle at 6 candidates: 3 orientations, each at 2 shifts, weights falling, the last under 1 % of the
    # first (left out); merged insertion (one image per orientation) against one insertion per kept candidate
    vol, q, t, images = toy
    N, C = 24, 6
    g = torch.Generator().manual_seed(5)
    qc = random_quaternions(N * 3, generator=2, dtype=torch.float64).view(N, 3, 4)[:, [0, 1, 0, 2, 1, 2]]
    tc = torch.randn(N, C, 2, generator=g, dtype=torch.float64)
    w = torch.tensor([1.0, 0.5, 0.3, 0.2, 0.1, 0.005], dtype=torch.float64).repeat(N, 1)
    ctf = lambda idx, size: ctf_2d(size, VOXEL, 15000.0 + 100 * idx.double(), 14000.0 + 100 * idx.double(),  # noqa: E731
                                   torch.full((len(idx),), 30.0))
    recon = HalfMaps(images[:N], torch.zeros(N, dtype=torch.long), torch.zeros(N, dtype=torch.long), ctf, BOX, 2,
                     0.01, VOXEL, 4.0, "cpu", 7)
    merged, empty = recon.inserters(qc, tc, w)  # every particle in half set 0: half set 1 stays empty
    assert float(empty.weight.abs().max()) == 0
    single = recon._new()
    kept = w[0, :5] / w[0, :5].sum()
    for i in range(N):
        for k in range(5):
            moved = shift_images(images[i : i + 1], -tc[i, k : k + 1].float())
            single.insert(moved, quat_to_matrix(qc[i, k : k + 1]).float(), ctf(torch.tensor([i]), 2 * BOX),
                          kept[k : k + 1].float())
    for a, b in ((merged.data, single.data), (merged.weight, single.weight)):
        assert float((a - b).abs().max()) < 1e-5 * float(b.abs().max())
    assert float(single.weight.abs().max()) > 0


def test_rounds_stop_where_the_half_maps_get_worse_and_keep_their_start(toy):
    # started at the true orientations and shifts of images at -10 dB, the rounds can only move particles
    # towards their own noise: the second round's half maps are worse than the first's, whose are kept
    vol, q, t, clean = toy
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(5)) * (clean.var() * 10).sqrt()
    images = clean + noise
    kw = dict(shifts=t, pixel_size=VOXEL, progress=False, device="cpu")
    best = refine(images, q, rounds=3, **kw)
    second = best.rounds[1]
    assert len(best.rounds) == 2 and second.resolution_after > second.resolution and best.kept == 1
    assert second.resolution == best.rounds[0].resolution_after
    assert best.stopped == (f"round 2's orientations gave half maps at {second.resolution_after:.2f} Å, worse than "
                            f"{second.resolution:.2f} Å before it: stopped, the orientations of round 1 kept")
    one = refine(images, q, rounds=1, **kw)
    assert one.stopped is None and one.kept == 1 and one.rounds[0].resolution_after > one.rounds[0].resolution
    assert torch.equal(best.quaternions, one.quaternions) and torch.equal(best.shifts, one.shifts)
    assert torch.equal(best.scores, one.scores) and best.resolution == one.resolution
    last = refine(images, q, rounds=3, keep_best=False, **kw)
    assert len(last.rounds) == 3 and last.kept == 3 and last.stopped is None
    assert mean_error(q, last.quaternions) > mean_error(q, best.quaternions)


def test_the_first_round_is_judged_where_the_half_sets_are_given(toy):
    # half sets given (found apart, as the global search's): the first round of the test above, coarser half maps
    # than its start's, is judged and not kept; from a perturbed start on clean images, finer, it is kept
    vol, q, t, clean = toy
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(5)) * (clean.var() * 10).sqrt()
    kw = dict(pixel_size=VOXEL, progress=False, device="cpu")
    free = refine(clean + noise, q, shifts=t, rounds=1, **kw)  # a new random split: the first round kept unjudged
    given = refine(clean + noise, q, shifts=t, rounds=3, half=free.half, **kw)
    first = given.rounds[0]
    assert first.resolution_after == free.rounds[0].resolution_after > first.resolution == free.rounds[0].resolution
    assert len(given.rounds) == 1 and given.kept == 0 and free.kept == 1
    assert given.stopped == (f"round 1's orientations gave half maps at {first.resolution_after:.2f} Å, worse than "
                             f"{first.resolution:.2f} Å before it: stopped, the orientations given kept")
    assert float(quat_distance(given.quaternions, q).max()) < 1e-6 and torch.equal(given.shifts, t)
    assert bool(torch.isnan(given.scores).all()) and mean_error(q, given.quaternions) < mean_error(q, free.quaternions)
    better = refine(clean, _perturb(q, 0.2, seed=2), rounds=1, half=free.half, **kw)
    assert better.rounds[0].resolution_after < better.rounds[0].resolution
    assert better.kept == 1 and better.stopped is None


def test_leaving_the_group_out_frees_particles_that_their_own_noise_holds():
    # pure noise, compared up to Fourier radius 10: the only thing a half map holds of an image is the image's
    # own noise, at its current orientation; with the whole half maps that holds it there, with its group
    # left out nothing does and the particles wander through the trust region
    N, n = 200, 24
    images = torch.randn(N, n, n, generator=torch.Generator().manual_seed(0))
    q = random_quaternions(N, generator=1, dtype=torch.float64)
    kw = dict(rounds=2, min_band=10, soft=False, keep_best=False, pixel_size=4.0, progress=False, device="cpu")
    moved = {g: float(quat_distance(q, refine(images, q, groups=g, **kw).quaternions).mean()) for g in (1, 4)}
    assert moved[1] < 0.5 * moved[4] and moved[4] > 0.15, moved


def test_hard_final_maps_on_request(toy):
    vol, q, t, images = toy
    q0 = _perturb(q[:100], 0.1, seed=3)
    half = (torch.arange(100) // 7) % 2  # half sets given (as the global search's) are kept
    res = refine(images[:100], q0, shifts=t[:100], rounds=1, pixel_size=VOXEL, soft=False, half=half, progress=False)
    assert res.soft_scale is None and mean_error(q[:100], res.quaternions) < 0.5 * mean_error(q[:100], q0)
    assert torch.equal(res.half, half)
    with pytest.raises(TypeError, match="soft must be True or False"):
        refine(images, q, soft="yes", progress=False)
    with pytest.raises(TypeError, match="keep_best must be True or False"):
        refine(images, q, keep_best="no", progress=False)


def test_refinement_with_ctf(toy):
    vol, q, t, _ = toy
    n = 100
    du = torch.linspace(5000.0, 20000.0, n, dtype=torch.float64)

    def ctf(idx, size):
        return ctf_2d(size, VOXEL, du[idx], voltage=300.0, cs=2.7, amplitude_contrast=0.1)

    images = torch.fft.irfft2(torch.fft.rfft2(project_real(vol.double(), q[:n]).float()) * ctf(torch.arange(n), BOX),
                              s=(BOX, BOX))
    q0 = _perturb(q[:n], 0.1, seed=4)
    res = refine(images, q0, ctf=ctf, rounds=3, pixel_size=VOXEL, progress=False)
    assert mean_error(q[:n], res.quaternions) < 0.5 * mean_error(q[:n], q0)


@pytest.mark.cuda
def test_refinement_on_cuda_matches_the_cpu(toy):
    vol, q, t, images = toy
    q0 = _perturb(q, 0.1, seed=6)
    kw = dict(shifts=t, rounds=2, pixel_size=VOXEL, progress=False)
    gpu = refine(images, q0, device="cuda", **kw)
    cpu = refine(images, q0, device="cpu", **kw)
    assert mean_error(q, gpu.quaternions) < 0.5 * mean_error(q, q0)
    assert mean_error(cpu.quaternions, gpu.quaternions) < 0.01
    assert gpu.resolution == pytest.approx(cpu.resolution, rel=0.05)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda im, q: (im, q[:-1]), r"q_init must have shape \(300, 4\)"),
        (lambda im, q: (im[:, :, :-1], q), "square images"),
        (lambda im, q: (im[0], q), "square images"),
        (lambda im, q: (torch.where(torch.arange(300)[:, None, None] == 17, float("nan"), im), q), "NaN or infinite values .the first: image 17."),
        (lambda im, q: (im, torch.where(torch.arange(300)[:, None] == 3, float("nan"), q)), "q_init contains NaN"),
        (lambda im, q: (im, torch.zeros_like(q)), "zero quaternions"),
    ],
)
def test_bad_inputs_raise_clear_errors(toy, change, message):
    _, q, _, images = toy
    im, qq = change(images, q)
    with pytest.raises(ValueError, match=message):
        refine(im, qq, rounds=1, progress=False)


def test_the_caller_s_shifts_are_not_modified(toy):
    """Refinement moves its own copy of the shifts (a float64 CPU tensor or an array were once updated in place)."""
    vol, q, t, images = toy
    for given in (t[:40].clone() + 0.7, t[:40].numpy() + 0.7):
        before = given.copy() if isinstance(given, np.ndarray) else given.clone()
        res = refine(images[:40], q[:40], shifts=given, rounds=1, passes=1, pixel_size=VOXEL, soft=False,
                     progress=False)
        assert not torch.equal(res.shifts, torch.as_tensor(before))  # the search moved them
        np.testing.assert_array_equal(np.asarray(given), np.asarray(before))


def test_bad_options_raise_clear_errors(toy):
    vol, q, _, images = toy
    with pytest.raises(ValueError, match="rounds"):
        refine(images, q, rounds=-1, progress=False)
    with pytest.raises(ValueError, match="shifts must have shape"):
        refine(images, q, shifts=torch.zeros(5, 2), progress=False)
    with pytest.raises(ValueError, match="reference must be a"):
        refine(images, q, reference=vol[:-1], progress=False)
    with pytest.raises(ValueError, match="must return shape"):
        refine(images, q, ctf=lambda idx, size: torch.ones(len(idx), size, size), rounds=0, progress=False)
    for half in (torch.zeros(N_IMAGES), torch.arange(N_IMAGES) % 3, torch.arange(5) % 2):
        with pytest.raises(ValueError, match="half must give each of the 300 particles a half set, 0 or 1"):
            refine(images, q, half=half, progress=False)
    for groups in (0, 2.5, True):
        with pytest.raises(ValueError, match="groups must be a positive integer"):
            refine(images, q, groups=groups, progress=False)


def test_cli_refines_a_star_file(toy, tmp_path, capsys):
    vol, q, t, images = toy
    n = 120
    write_stack(tmp_path / "particles.mrcs", images[:n].numpy(), pixel_size=VOXEL)
    write_map(tmp_path / "initial.mrc", vol.numpy(), voxel_size=VOXEL)
    q0 = _perturb(q[:n], 0.1, seed=5)
    rot, tilt, psi = (a.numpy() for a in quat_to_euler(q0))
    star = tmp_path / "particles.star"
    origin = -t[:n].numpy() * VOXEL  # RELION origins (Å) of the true shifts
    write_star(star, Particles.create("particles.mrcs", np.arange(n), VOXEL, BOX, root=tmp_path, rot=rot, tilt=tilt,
                                      psi=psi, origin_x_angst=origin[:, 0], origin_y_angst=origin[:, 1]))
    out = tmp_path / "refined.star"
    args = ["refine", str(star), "--map", str(tmp_path / "initial.mrc"), "-o", str(out), "--rounds", "2",
            "--device", "cpu", "--same-frame"]
    assert main(args + ["--output-map", str(tmp_path / "refined.mrc")]) == 0
    text = capsys.readouterr().out
    assert "hand: same (correlation" in text and "final resolution" in text
    refined = read_star(out)
    assert len(refined) == n and refined.image_names[0].endswith("@particles.mrcs")
    q1 = euler_to_quat(*(torch.from_numpy(a) for a in refined.angles.T))
    assert mean_error(q[:n], q1) < 0.6 * mean_error(q[:n], q0)
    origin = torch.from_numpy(np.stack([refined.origin_x_angst, refined.origin_y_angst], 1))
    assert torch.linalg.vector_norm(origin / -VOXEL - t[:n], dim=1).mean() < 0.2
    assert sorted(set(refined.data["rlnRandomSubset"])) == [1, 2]
    assert (tmp_path / "refined.mrc").exists()
    # the input's half sets are kept (written back as given); ones that are not 1 and 2 are refused
    again = ["refine", str(out), "--map", str(tmp_path / "initial.mrc"), "--rounds", "0", "--device", "cpu", "-o"]
    subsets = np.where(np.arange(n) % 5 == 0, 1, 2)
    refined.data["rlnRandomSubset"] = subsets
    write_star(tmp_path / "halves.star", refined)
    assert main(again[:1] + [str(tmp_path / "halves.star")] + again[2:] + [str(tmp_path / "kept.star")]) == 0
    assert "half sets: the input's rlnRandomSubset" in capsys.readouterr().out
    np.testing.assert_array_equal(read_star(tmp_path / "kept.star").data["rlnRandomSubset"], subsets)
    refined.data["rlnRandomSubset"] = subsets + 1
    write_star(tmp_path / "bad.star", refined)
    assert main(again[:1] + [str(tmp_path / "bad.star")] + again[2:] + [str(tmp_path / "bad_out.star")]) == 2
    assert "rlnRandomSubset must be 1 or 2" in capsys.readouterr().err and not (tmp_path / "bad_out.star").exists()
    # no overwrite without --force
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert main(args + ["--rounds", "0", "--force"]) == 0
    assert main(args + ["--rounds", "1", "--hard", "--force"]) == 0
    assert "final resolution" in capsys.readouterr().out
    # cryoSPARC out, by the suffix: with no rounds, the starting orientations
    assert main(args[:5] + [str(tmp_path / "refined.cs")] + args[6:] + ["--rounds", "0", "-q"]) == 0
    q_cs = euler_to_quat(*(torch.from_numpy(a) for a in read_particles(tmp_path / "refined.cs").angles.T))
    assert float(quat_distance(q_cs, q0).max()) < 1e-4


def test_cli_rejects_particles_without_orientations(toy, tmp_path, capsys):
    vol, _, _, images = toy
    write_stack(tmp_path / "p.mrcs", images[:8].numpy(), pixel_size=VOXEL)
    write_map(tmp_path / "m.mrc", vol.numpy(), voxel_size=VOXEL)
    write_star(tmp_path / "p.star", Particles.create("p.mrcs", np.arange(8), VOXEL, BOX, root=tmp_path))
    assert main(["refine", str(tmp_path / "p.star"), "--map", str(tmp_path / "m.mrc"), "-o",
                 str(tmp_path / "o.star")]) == 2
    assert "rlnAngleRot" in capsys.readouterr().err
