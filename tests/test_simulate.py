"""Datasets: noise level, STAR ground truth and RELION origin sign, determinism, atomic writes,
bad input, CLI, shared maps and structures, splits and pair sampling."""

import json
import math
import os

import numpy as np
import pytest
import torch

from cryoorient.cli import main
from cryoorient.geometry import (
    quat_distance, quat_to_matrix, random_quaternions, symmetric_quat_distance, to_asymmetric_unit,
)
from cryoorient.io import FormatError, read_star
from cryoorient.imaging.noise import add_white_noise, ncc_log_likelihood, sigma2_for_snr, signal_variance, snr_db
from cryoorient.learning.pairs import PairSampler, sample_pairs, split_indices
from cryoorient.imaging.project import FourierProjector, project_real
from cryoorient.imaging.shift import shift_images
from cryoorient.imaging.simulate import ImageSimulator, SimulationSettings, draw_parameters, load_dataset, simulate

N = 32
BLOBS = [((6.0, 0.0, 0.0), 2.5, 1.0), ((0.0, -7.0, 2.0), 3.0, 0.7), ((-3.0, 4.0, -6.0), 2.0, 0.9)]


def blob_map(n=N):
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return sum(a * np.exp(-((x - m[0]) ** 2 + (y - m[1]) ** 2 + (z - m[2]) ** 2) / (2 * s * s)) for m, s, a in BLOBS)


SOURCE = (blob_map().astype(np.float32), 2.0)


def rel_err(a, b):
    return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max())


# ------------------------------------------------------------------- noise ---
@pytest.mark.parametrize("snr", [-12.0, 6.0])
def test_noise_at_target_snr(snr):
    settings = SimulationSettings(n=1000, snr_db=snr, shift_max=2.0, chunk_size=250, seed=1)
    params = draw_parameters(settings, 2.0)
    sim = ImageSimulator(SOURCE[0], 2.0, settings, params)
    clean = torch.cat([(sim.clean(a, a + 250) - sim.mean) / sim.std for a in range(0, 1000, 250)])
    noisy = torch.cat([img for _, img in sim.chunks()])
    assert abs(snr_db(clean, noisy - clean) - snr) <= 0.2
    # standardised clean data: mean 0, variance 1 over the whole set
    assert float(clean.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(clean.var(unbiased=False)) == pytest.approx(1.0, rel=1e-5)


def test_paper_sigma2_16_is_minus_12_db():
    settings = SimulationSettings(n=400, sigma2=16.0, chunk_size=400)
    sim = ImageSimulator(SOURCE[0], 2.0, settings, draw_parameters(settings, 2.0))
    clean = (sim.clean(0, 400) - sim.mean) / sim.std
    noise = next(sim.chunks())[1] - clean
    assert signal_variance(noise) == pytest.approx(16.0, rel=0.01)
    # signal variance of standardised images is ≈ 1 (exactly 1 minus the spread of the image means)
    assert sim.pilot_snr_db == pytest.approx(-12.04, abs=0.1)


def test_noise_helpers():
    g = torch.Generator().manual_seed(0)
    signal = torch.randn(1000, 24, 24, generator=g, dtype=torch.float64) * 3
    sigma2 = sigma2_for_snr(signal_variance(signal), -5.0)
    noisy = add_white_noise(signal, sigma2, torch.Generator().manual_seed(1))
    assert abs(snr_db(signal, noisy - signal) + 5.0) < 0.05
    assert add_white_noise(signal, 0.0) is signal
    with pytest.raises(ValueError, match="SNR"):
        sigma2_for_snr(1.0, 100.0)
    with pytest.raises(ValueError, match="sigma2"):
        add_white_noise(signal, -1.0)


# ------------------------------------------------------- dataset round trip ---
def test_ncc_log_likelihood_is_the_gaussian_one_at_the_best_scale():
    """Against the closed form: an image x of N values and candidate references r_k; the Gaussian
    log-likelihood −||x − α_k r_k||² / (2 s) at each reference's best scale α_k >= 0, with s the best
    candidate's residual power per value, differs from ncc_log_likelihood by one constant per image."""
    g = torch.Generator().manual_seed(3)
    N, B, C = 200, 4, 30
    x = torch.randn(B, 1, N, dtype=torch.float64, generator=g)
    refs = torch.randn(B, C, N, dtype=torch.float64, generator=g)
    refs[:, 0] = x[:, 0] + 0.8 * torch.randn(B, N, dtype=torch.float64, generator=g)  # one close candidate
    dot = (x * refs).sum(-1)
    ncc = dot / (x.norm(dim=-1) * refs.norm(dim=-1))
    alpha = (dot / refs.pow(2).sum(-1)).clamp_min(0)
    residual = (x - alpha[..., None] * refs).pow(2).sum(-1)  # (B, C)
    s = residual.amin(1, keepdim=True) / N
    exact = -residual / (2 * s)
    for beta in (1.0, 0.3):
        got = ncc_log_likelihood(ncc, 1, N, beta)
        assert float(got.amax(1).abs().max()) < 1e-9  # the best candidate at 0
        diff = got - beta * exact
        assert float((diff - diff[:, :1]).abs().max()) < 1e-8 * float(exact.abs().max())
    assert bool((ncc < 0).any())  # the negative ones count as 0 (α = 0: residual ||x||²), checked above too
    assert torch.allclose(ncc_log_likelihood(ncc.T, 0, N), ncc_log_likelihood(ncc, 1, N).T)


def test_dataset_round_trip_and_relion_origin_sign(tmp_path):
    settings = SimulationSettings(n=40, shift_max=4.0, normalize=False, chunk_size=16, interpolation="cubic")
    out = simulate(SOURCE, tmp_path / "ds", settings, progress=False)
    ds = load_dataset(out)
    assert ds.images.shape == (40, N, N) and ds.images.dtype == np.float32
    assert sorted(os.listdir(out)) == [".cryoorient", "particles.mrcs", "particles.star", "simulation.json"]
    # the STAR file is the exact ground truth that the images were made from
    truth = draw_parameters(settings, 2.0)
    torch.testing.assert_close(ds.params.angles, truth.angles, rtol=0, atol=1e-9)
    torch.testing.assert_close(ds.params.shifts, truth.shifts, rtol=0, atol=1e-9)
    assert ds.params.shifts.abs().max() > 1.0
    # RELION: the observed image is the reference projection shifted by -origin
    star = read_star(out / "particles.star")
    A = quat_to_matrix(ds.params.quaternions)
    origin_px = torch.from_numpy(np.stack([star.origin_x_angst, star.origin_y_angst], 1)) / 2.0
    expected = FourierProjector(torch.from_numpy(SOURCE[0]).double())(A, shifts=-origin_px)
    torch.testing.assert_close(torch.from_numpy(np.array(ds.images)).double(), expected, rtol=0, atol=2e-4)
    # and undoing the shift (+origin) gives the independent real-space projection
    back = shift_images(torch.from_numpy(np.array(ds.images)).double(), origin_px)
    assert rel_err(back, project_real(torch.from_numpy(SOURCE[0]).double(), A)) < 0.03
    record = json.loads((out / "simulation.json").read_text())
    assert record["settings"]["n"] == 40 and record["pixel_size"] == 2.0


def test_ctf_parameters_in_star(tmp_path):
    settings = SimulationSettings(n=12, ctf=True, defocus_min=8000, defocus_max=9000, astigmatism=300,
                                  b_factor=20.0, chunk_size=12, sigma2=0.5)
    out = simulate(SOURCE, tmp_path / "ctf", settings, progress=False)
    star = read_star(out / "particles.star")
    mean = (star.defocus_u + star.defocus_v) / 2
    assert np.all((mean >= 8000) & (mean <= 9000)) and np.all(star.defocus_u >= star.defocus_v)
    assert np.all(star.voltage == 300.0) and np.all(star.spherical_aberration == 2.7)
    assert np.allclose(star.data["rlnCtfBfactor"], 20.0)
    torch.testing.assert_close(load_dataset(out).params.defocus, draw_parameters(settings, 2.0).defocus)


def test_deterministic_and_chunk_independent_parameters(tmp_path):
    s1 = SimulationSettings(n=30, shift_max=3.0, snr_db=-3.0, chunk_size=8, seed=5)
    a = simulate(SOURCE, tmp_path / "a", s1, progress=False)
    b = simulate(SOURCE, tmp_path / "b", s1, progress=False)
    # (the MRC headers differ only by mrcfile's creation-time label)
    assert np.array_equal(load_dataset(a).images, load_dataset(b).images)
    assert (a / "particles.star").read_text() == (b / "particles.star").read_text()
    other = draw_parameters(SimulationSettings(n=30, shift_max=3.0, chunk_size=30, seed=5), 2.0)
    torch.testing.assert_close(load_dataset(a).params.angles, other.angles, rtol=0, atol=1e-9)
    assert not torch.equal(draw_parameters(SimulationSettings(n=30, seed=6), 2.0).angles, other.angles)


@pytest.mark.parametrize("mode", ["euler", "asymmetric_unit"])
def test_orientation_modes(mode):
    s = SimulationSettings(n=500, orientations=mode, euler_ranges=((0, 360), (0, 90), (0, 360)), symmetry="D2")
    p = draw_parameters(s, 1.0)
    if mode == "euler":
        assert p.angles[:, 1].min() >= 0 and p.angles[:, 1].max() <= 90 and p.angles[:, 0].min() >= 0
    else:
        q = p.quaternions
        d = quat_distance(q, to_asymmetric_unit(q, "D2"))
        assert float(d.max()) < 1e-5


# ----------------------------------------------------------- atomic output ---
def test_existing_output_refused_and_force_replaces(tmp_path):
    s = SimulationSettings(n=5, chunk_size=5)
    out = simulate(SOURCE, tmp_path / "ds", s, progress=False)
    before = (out / "particles.star").read_text()
    with pytest.raises(FileExistsError, match="force"):
        simulate(SOURCE, out, SimulationSettings(n=6, chunk_size=6), progress=False)
    assert (out / "particles.star").read_text() == before
    simulate(SOURCE, out, SimulationSettings(n=6, chunk_size=6), force=True, progress=False)
    assert load_dataset(out).images.shape[0] == 6
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    import cryoorient.io

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cryoorient.io, "write_star", broken)
    with pytest.raises(OSError, match="disk full"):
        simulate(SOURCE, tmp_path / "ds", SimulationSettings(n=5, chunk_size=2), progress=False)
    assert os.listdir(tmp_path) == []


def test_bad_input(tmp_path):
    s = SimulationSettings(n=5)
    with pytest.raises(FileNotFoundError):
        simulate(tmp_path / "missing.mrc", tmp_path / "o", s, progress=False)
    bad = tmp_path / "corrupt.mrc"
    bad.write_bytes(b"not an mrc file" * 100)
    with pytest.raises(FormatError):
        simulate(bad, tmp_path / "o", s, progress=False)
    with pytest.raises(ValueError, match="all zeros"):
        simulate((np.zeros((8, 8, 8), np.float32), 1.0), tmp_path / "o", s, progress=False)
    for kwargs, msg in [
        (dict(n=0), "n \\(number"), (dict(n=5, size=0), "size"), (dict(n=5, snr_db=80.0), "snr_db"),
        (dict(n=5, sigma2=-1.0), "sigma2"), (dict(n=5, snr_db=0.0, sigma2=1.0), "either"),
        (dict(n=5, shift_max=-1.0), "shift_max"), (dict(n=5, orientations="random"), "orientations"),
        (dict(n=5, ctf=True, defocus_min=-5.0), "defocus_min"), (dict(n=5, chunk_size=0), "chunk_size"),
    ]:
        with pytest.raises(ValueError, match=msg):
            simulate(SOURCE, tmp_path / "o", SimulationSettings(**kwargs), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["corrupt.mrc"]


def test_cli(tmp_path, capsys):
    from cryoorient.io import write_map

    write_map(tmp_path / "m.mrc", SOURCE[0][:, :, 2:-2], 2.0)  # non-cubic: padded to a cube
    out = tmp_path / "ds"
    args = ["simulate", str(tmp_path / "m.mrc"), "-n", "8", "--size", "40", "--snr", "-10", "--ctf",
            "--defocus-min", "1.5", "--defocus-max", "2.0", "--shift-max", "2", "--seed", "3", "-q", "-o", str(out)]
    assert main(args) == 0
    ds = load_dataset(out)
    assert ds.images.shape == (8, 40, 40) and ds.record["map_size"] == N
    assert ds.record["settings"]["defocus_min"] == 15000.0 and ds.record["noise"]["snr_db"] == pytest.approx(-10)
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    assert main(["simulate", str(tmp_path / "nope.mrc"), "-o", str(tmp_path / "x"), "-q"]) == 2
    assert main(["simulate", str(tmp_path / "m.mrc"), "-n", "-3", "-o", str(tmp_path / "x"), "-q"]) == 2
    assert main(["simulate", str(tmp_path / "m.mrc"), "--sigma2", "-2", "-o", str(tmp_path / "x"), "-q"]) == 2
    assert "sigma2" in capsys.readouterr().err
    # a defocus given in Å where µm are asked for (8000 µm) is refused, not simulated
    assert main(["simulate", str(tmp_path / "m.mrc"), "--ctf", "--defocus-min", "8000", "--defocus-max", "25000",
                 "-o", str(tmp_path / "x"), "-q"]) == 2
    assert "in µm" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cuda_dataset_matches_cpu_without_noise(tmp_path, device):
    s = SimulationSettings(n=6, shift_max=2.0, ctf=True, chunk_size=6, interpolation="cubic")
    params = draw_parameters(s, 2.0)
    on_device = torch.cat([img.cpu() for _, img in ImageSimulator(SOURCE[0], 2.0, s, params, device).chunks()])
    on_cpu = torch.cat([img for _, img in ImageSimulator(SOURCE[0], 2.0, s, params, "cpu").chunks()])
    torch.testing.assert_close(on_device, on_cpu, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------- shared data ---
def test_5j0n_map_end_to_end(tmp_path, shared_data):
    settings = SimulationSettings(n=20, size=116, shift_max=3.0, ctf=True, sigma2=16.0, chunk_size=10)
    out = simulate(shared_data / "maps" / "5j0n.mrc", tmp_path / "5j0n", settings, progress=False)
    ds = load_dataset(out)
    assert ds.record["map_size"] == 75 and ds.images.shape == (20, 116, 116)
    assert ds.pixel_size == pytest.approx(3.667, abs=1e-3)
    assert np.all(np.isfinite(ds.images)) and float(np.var(ds.images)) == pytest.approx(17.0, rel=0.15)


def test_structure_end_to_end(tmp_path, shared_data):
    cif = sorted((shared_data / "structures").glob("*.cif"))[0]
    out = simulate(cif, tmp_path / "model", SimulationSettings(n=10, size=48, chunk_size=10), progress=False,
                   pixel_size=2.0)
    ds = load_dataset(out)
    assert ds.images.shape == (10, 48, 48) and float(np.std(ds.images)) == pytest.approx(1.0, rel=0.05)
    with pytest.raises(ValueError, match="size and pixel_size"):
        simulate(cif, tmp_path / "m2", SimulationSettings(n=3), progress=False)


# ------------------------------------------------------------------- pairs ---
def test_split_indices():
    s = split_indices(5000, seed=1)
    assert [s[k].numel() for k in ("train", "val", "test")] == [2500, 850, 1650]
    allidx = torch.cat(list(s.values()))
    assert torch.equal(allidx.sort().values, torch.arange(5000))
    assert all(torch.equal(s[k], split_indices(5000, seed=1)[k]) for k in s)
    assert not torch.equal(s["train"], split_indices(5000, seed=2)["train"])
    with pytest.raises(ValueError, match="fractions"):
        split_indices(10, (0.6, 0.6, 0.1))


def test_pair_sampler_uniform_distances():
    q = random_quaternions(3000, generator=4, dtype=torch.float64)
    split = split_indices(3000, seed=0)["train"]
    sampler = PairSampler(q, split, batch_size=2000, bins=8, seed=7, pilot=1 << 18)
    batches = [b for _, b in zip(range(8), sampler)]
    pairs = torch.cat([p for p, _ in batches])
    d = torch.cat([d for _, d in batches])
    assert pairs.shape == (16000, 2) and bool((pairs[:, 0] != pairs[:, 1]).all())
    assert bool(torch.isin(pairs, split).all())
    torch.testing.assert_close(d, quat_distance(q[pairs[:, 0]], q[pairs[:, 1]]))
    hist = torch.histc(d, bins=8, min=0, max=math.pi)
    assert float((hist / hist.mean() - 1).abs().max()) < 0.1  # uniform on [0, π]
    # without resampling, uniform SO(3) orientations give E[d] = π/2 + 2/π
    plain = PairSampler(q, split, batch_size=20000, uniform=False, seed=7).draw(20000)[1]
    assert float(plain.mean()) == pytest.approx(math.pi / 2 + 2 / math.pi, abs=0.03)
    # reproducible from the seed
    again = PairSampler(q, split, batch_size=2000, bins=8, seed=7, pilot=1 << 18)
    assert torch.equal(next(iter(again))[0], batches[0][0])


def test_sample_pairs_distinct_and_symmetric_distance():
    q = random_quaternions(400, generator=2, dtype=torch.float64)
    pairs, d = sample_pairs(q, torch.arange(100, 300), 3000, symmetry="D2", seed=1, pilot=1 << 17)
    assert pairs.shape == (3000, 2) and bool((pairs[:, 0] < pairs[:, 1]).all())
    assert torch.unique(pairs[:, 0] * 400 + pairs[:, 1]).numel() == 3000
    assert int(pairs.min()) >= 100 and int(pairs.max()) < 300
    torch.testing.assert_close(d, symmetric_quat_distance(q[pairs[:, 0]], q[pairs[:, 1]], "D2"))
    with pytest.raises(ValueError, match="n_pairs"):
        sample_pairs(q, torch.arange(3), 4)


def test_a_map_with_a_zero_cell_needs_and_takes_pixel_size(tmp_path, capsys):
    """A header without voxel size: refused naming --pixel-size; with the flag the run uses it."""
    import mrcfile

    from cryoorient.imaging.phantom import default_density
    from cryoorient.io import write_map

    path = tmp_path / "nocell.mrc"
    write_map(path, default_density(box_size=16, voxel_size=5.0, resolution=12.0), 5.0)
    with mrcfile.open(path, mode="r+") as m:
        m.voxel_size = 0.0
    argv = ["simulate", str(path), "-n", "4", "-o", str(tmp_path / "sim"), "-q", "--device", "cpu"]
    assert main(argv) == 2
    assert "--pixel-size" in capsys.readouterr().err and not (tmp_path / "sim").exists()
    assert main(argv + ["--pixel-size", "4.0"]) == 0
    assert read_star(tmp_path / "sim" / "particles.star").pixel_size[0] == pytest.approx(4.0)


def test_astra_projector_without_astra_is_one_clear_error(tmp_path, capsys):
    from cryoorient.imaging.astra import unavailable

    if unavailable() is None:
        pytest.skip("ASTRA runs here; tests/test_astra.py covers the projector")
    from cryoorient.imaging.phantom import default_density
    from cryoorient.io import write_map

    write_map(tmp_path / "m.mrc", default_density(box_size=16, voxel_size=5.0, resolution=12.0), 5.0)
    argv = ["simulate", str(tmp_path / "m.mrc"), "-n", "4", "-o", str(tmp_path / "sim"), "--projector", "astra",
            "-q", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ASTRA" in err and not (tmp_path / "sim").exists()
