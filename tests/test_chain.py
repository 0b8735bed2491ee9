"""cryoorient.orientations.chain: ab initio -> global search -> refinement -> centred maps, checkpoints and resume."""

import numpy as np
import pytest
import torch
from _ctf_stack import ctf_projections

from cryoorient.imaging.ctf import ctf_2d
from cryoorient.imaging.phantom import default_density
from cryoorient.maps.fsc import fsc
from cryoorient.maps.transforms import align_map
from cryoorient.orientations import chain
from cryoorient.orientations.align import align_orientations
from cryoorient.io import centre_of_mass
from cryoorient.orientations.chain import run_chain, star_ctf
from cryoorient.orientations.polar_matching import COARSE_AGREEMENT
from cryoorient.orientations.global_result import GlobalIteration, GlobalResult

BOX, PIXEL, P = 32, 3.0, 300
GLOBAL = {"restarts": 1, "minibatch": 128, "steps": 20}  # a global search small enough for the CPU


@pytest.fixture(scope="module")
def stack():
    """Noiseless CTF-affected 32² projections of the phantom (defocus 0.8–2.5 µm, astigmatism up to
    0.1 µm), the particles shifted by N(0, 1.5 px) clipped at 3 px."""
    vol = torch.from_numpy(default_density(box_size=BOX, voxel_size=PIXEL, resolution=6.0))
    q, t, ctf, images = ctf_projections(vol, P, PIXEL, shift_sigma=1.5, shift_clip=3.0)
    return vol, q, t, ctf, images


@pytest.fixture(scope="module")
def chained(stack):
    vol, q, t, ctf, images = stack
    return run_chain(images, pixel_size=PIXEL, ctf=ctf, global_options=GLOBAL, refine_options={"rounds": 3})


def test_chain_recovers_orientations_shifts_and_map(stack, chained):
    vol, q, t, ctf, images = stack
    res = chained
    assert res.abinitio.phase_flipped and res.abinitio.determined, res.abinitio.summary()
    assert align_orientations(q, res.abinitio.quaternions).error < 0.3
    assert align_orientations(q, res.searched.quaternions).error < 0.15  # within its grid's spacing, 1.5/12 rad
    assert align_orientations(q, res.quaternions).error < 0.1
    # the planted shifts, with the map centred on its centre of mass as the phantom is
    err = torch.linalg.vector_norm(res.shifts - t, dim=1)
    assert float(err.mean()) < 0.5 and float(err.max()) < 1.5, (err.mean(), err.max())
    assert torch.allclose(res.origins_angst, -res.shifts * PIXEL)
    v = res.refined.map.double()
    assert np.linalg.norm(centre_of_mass((v - v.mean() - v.std()).clamp(min=0).numpy(), 1.0)) < 0.05
    assert res.refined.half_maps.shape == (2, BOX, BOX, BOX)
    # the map is the phantom (up to the arbitrary rotation and hand)
    aligned = align_map(res.refined.map, vol, voxel_size=PIXEL)
    assert float(np.mean(fsc(aligned.aligned, vol, PIXEL).fsc[:8])) > 0.9
    lines = res.summary()
    assert lines[0].startswith("ab initio: 300 orientations determined")
    assert lines[1].startswith("global search: start") and "FSC 0.143" in lines[3]
    head = "global search iterations (band, half maps, changed, time, coarse to fine or full and the probe's "
    steps = lines[2].removeprefix(head + "agreement): ").split("; ")
    assert len(steps) == len(res.searched.iterations) >= 1  # one entry per iteration, its own figures
    for step, it in zip(steps, res.searched.iterations):
        probe = "" if it.coarse is None else f" {'coarse' if it.coarse >= COARSE_AGREEMENT else 'full'} {it.coarse:.0%}"
        assert step == f"{it.band} px {it.resolution:.2f} Å {it.changed:.1%} {it.seconds:.1f} s{probe}"
        assert it.seconds > 0
    assert sum(it.seconds for it in res.searched.iterations) <= res.searched.stage_seconds["iterate"]


def test_a_map_not_beyond_the_band_the_half_sets_shared_is_said(chained):
    """The refinement keeps the global search's half sets. Pure noise: the gold-standard resolution does not pass
    the band up to which both half sets met one map, and the chain says so; the phantom's images pass it, unsaid."""
    noise = torch.randn(P, BOX, BOX, generator=torch.Generator().manual_seed(3))
    res = run_chain(noise, pixel_size=PIXEL, global_options=GLOBAL, refine_options={"rounds": 2})
    assert torch.equal(res.refined.half, res.searched.half) and torch.equal(chained.refined.half, chained.searched.half)
    assert res.refined.resolution >= res.searched.shared_resolution
    assert chained.refined.resolution < chained.searched.shared_resolution
    said = [f"the half maps' FSC 0.143 resolution, {r.refined.resolution:.2f} Å, is not beyond the "
            f"{r.searched.shared_resolution:.2f} Å up to which both half sets" in " ".join(r.warnings)
            for r in (res, chained)]
    assert said == [True, False], res.warnings


def test_resume_skips_finished_stages(stack, tmp_path, monkeypatch):
    vol, q, t, ctf, images = stack
    work = tmp_path / "work"
    opts = {"global_options": {"restarts": 0, "steps": 0, "iterations": 1}, "refine_options": {"rounds": 1, "soft": False}}
    first = run_chain(images, pixel_size=PIXEL, ctf=ctf, workdir=work, stop_after="abinitio", **opts)
    assert first.refined is None and first.searched is None and (work / "abinitio.pt").exists()
    assert not (work / "global.pt").exists() and not (work / "refine.pt").exists()
    with pytest.raises(FileExistsError, match="resume"):
        run_chain(images, pixel_size=PIXEL, ctf=ctf, workdir=work, **opts)

    def recomputed(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(chain, "estimate_orientations", recomputed)
    searched = run_chain(images, pixel_size=PIXEL, ctf=ctf, workdir=work, resume=True, stop_after="global", **opts)
    assert torch.equal(searched.abinitio.quaternions, first.abinitio.quaternions) and searched.refined is None
    assert torch.equal(searched.quaternions, searched.searched.quaternions) and (work / "global.pt").exists()
    monkeypatch.setattr(chain, "global_search", recomputed)
    resumed = run_chain(images, pixel_size=PIXEL, ctf=ctf, workdir=work, resume=True, **opts)
    assert torch.equal(resumed.searched.quaternions, searched.searched.quaternions)
    assert resumed.refined is not None and len(resumed.refined.rounds) == 1 and (work / "refine.pt").exists()
    monkeypatch.setattr(chain, "refine", recomputed)
    again = run_chain(images, pixel_size=PIXEL, ctf=ctf, workdir=work, resume=True, **opts)  # nothing left to run
    assert torch.equal(again.quaternions, resumed.quaternions)
    # other images, CTF or options do not resume from these checkpoints
    with pytest.raises(ValueError, match="other images"):
        run_chain(images.flip(0), pixel_size=PIXEL, ctf=ctf, workdir=work, resume=True, **opts)
    with pytest.raises(ValueError, match="other images"):
        run_chain(images, pixel_size=PIXEL, ctf=None, workdir=work, resume=True, **opts)
    # nor does a package whose stage defaults differ from those the checkpoints were written under
    other = {**chain.STAGE_DEFAULTS["global_search"], "max_band": 32}
    monkeypatch.setitem(chain.STAGE_DEFAULTS, "global_search", other)
    with pytest.raises(ValueError, match="other images"):
        run_chain(images, pixel_size=PIXEL, ctf=ctf, workdir=work, resume=True, **opts)
    monkeypatch.undo()
    # nor a package whose stages' results hold other fields (a checkpoint of an older result lacks the new ones)
    fields = {**chain.RESULT_FIELDS, "GlobalResult": chain.RESULT_FIELDS["GlobalResult"][:-1]}
    monkeypatch.setattr(chain, "RESULT_FIELDS", fields)
    with pytest.raises(ValueError, match="another version"):
        run_chain(images, pixel_size=PIXEL, ctf=ctf, workdir=work, resume=True, **opts)
    monkeypatch.undo()
    restart = run_chain(images, pixel_size=PIXEL, ctf=ctf, workdir=work, force=True, stop_after="abinitio", **opts)
    assert restart.refined is None and not (work / "refine.pt").exists()  # starting over drops the later stages
    assert not (work / "global.pt").exists()
    with pytest.raises(ValueError, match="stop_after"):
        run_chain(images, pixel_size=PIXEL, stop_after="maps")
    with pytest.raises(ValueError, match="run_chain sets"):
        run_chain(images, pixel_size=PIXEL, refine_options={"ctf": None})
    with pytest.raises(ValueError, match="run_chain sets"):
        run_chain(images, pixel_size=PIXEL, global_options={"shifts": None})
    with pytest.raises(ValueError, match=r"must not set \['half'\]: run_chain sets"):  # the global search's
        run_chain(images, pixel_size=PIXEL, refine_options={"half": None})


def test_unreproducible_global_search_is_said(stack, monkeypatch):
    """A global search whose independent starts disagree gives a warning line, which says whether the particles
    matched the runner-up about as well or worse; one whose starts agree, none."""
    vol, q, t, ctf, images = stack
    seen = {}

    def fake(images, q_init, **kwargs):
        res = GlobalResult(quaternions=q_init, shifts=kwargs["shifts"], scores=torch.zeros(len(q_init)),
                           map=vol, map_pixel_size=PIXEL, resolution=10.0, start="random 1",
                           start_scores={"random 1": 0.5, "random 2": 0.5}, runner_up="random 2", agreement=seen["agreement"],
                           separation=seen["separation"],
                           iterations=[GlobalIteration(8, 24, 10.0, 100, 56, 0.5, 0.0, 0.0, 0.0)])
        return res

    monkeypatch.setattr(chain, "global_search", fake)
    # disagreeing starts matched about as well: NOT reproducible; a runner-up that matched worse: not reproduced,
    # said as such; agreeing starts: nothing
    for agreement, separation, said in ((1.2, 2.0, "NOT"), (0.05, 2.0, None), (1.2, 12.0, "worse")):
        seen["agreement"], seen["separation"] = agreement, separation
        res = run_chain(images, pixel_size=PIXEL, ctf=ctf, stop_after="global")
        said_not = any("NOT reproducible (1.200 rad" in w for w in res.warnings)
        said_worse = any("not reproduced (1.200 rad from another start, which the particles matched worse, paired z "
                         "12.0)" in w for w in res.warnings)
        assert (said_not, said_worse) == (said == "NOT", said == "worse"), res.warnings
        assert ("; NOT reproducible: starts 'random 1' and 'random 2'" in res.searched.summary()) == (said == "NOT")
        assert ("the runner-up a worse optimum" in res.searched.summary()) == (said == "worse")


def test_a_global_search_stopped_at_its_cap_is_said(stack, monkeypatch):
    """A global search whose iterations ended at the cap, not by the stopping rule, gives a warning line with the
    fraction still moving; one that converged, none."""
    vol, q, t, ctf, images = stack
    seen = {}

    def fake(images, q_init, **kwargs):
        return GlobalResult(quaternions=q_init, shifts=kwargs["shifts"], scores=torch.zeros(len(q_init)), map=vol,
                            map_pixel_size=PIXEL, resolution=10.0, start="given", start_scores={"given": 0.5},
                            iterations=[GlobalIteration(8, 24, 10.0, 100, 56, 0.5, 0.184, 0.0, 0.0)] * 3,
                            converged=seen["converged"])

    monkeypatch.setattr(chain, "global_search", fake)
    for converged in (False, True):
        seen["converged"] = converged
        res = run_chain(images, pixel_size=PIXEL, ctf=ctf, stop_after="global", global_options={"iterations": 3})
        said = [w for w in res.warnings if "stopped at its cap of 3 iterations, not converged: 18.4% of the "
                "particles changed orientation by more than a grid step in the last (it stops below 2.0%" in w
                and w.endswith("band 8 px; a higher cap: global option 'iterations', cryoorient abinitio --iterations)")]
        assert len(said) == (not converged), res.warnings


def test_star_ctf_on_a_device_and_the_checkpoint_key(tmp_path, device):
    """The CTF is computed on the command's device; the checkpoints' key is the CPU's, so that a run
    on the GPU resumes on the CPU."""
    from cryoorient.io import Particles
    from cryoorient.orientations.chain import _data_key

    p = Particles.create("stack.mrcs", np.arange(20), 2.0, 32, root=tmp_path, defocus_u=np.linspace(8e3, 2.5e4, 20),
                         defocus_v=np.linspace(7.9e3, 2.49e4, 20), defocus_angle=np.linspace(0, 170, 20))
    ctf = star_ctf(p, device=device)[0]
    assert ctf(torch.tensor([3, 1]), 32).device.type == device.type
    images = torch.randn(20, 32, 32, generator=torch.Generator().manual_seed(0))
    assert _data_key(images, ctf, 2.0) == _data_key(images, star_ctf(p)[0], 2.0)
    assert _data_key(images, ctf, 2.0) != _data_key(images, None, 2.0)


def test_star_ctf(tmp_path):
    from cryoorient.io import Particles

    def particles(**cols):
        return Particles.create("stack.mrcs", np.arange(4), 2.0, 32, root=tmp_path, **cols)

    with_ctf = particles(defocus_u=[1e4, 1.2e4, 1.4e4, 2e4], defocus_v=[1e4, 1.1e4, 1.4e4, 1.9e4],
                         defocus_angle=[0.0, 10.0, 20.0, 30.0], voltage=300.0, spherical_aberration=2.7,
                         amplitude_contrast=0.1)
    ctf, flipped, notes = star_ctf(with_ctf)
    c = ctf(torch.tensor([3, 1]), 32)
    assert c.shape == (2, 32, 17) and not flipped and "STAR" in notes[0]
    assert torch.allclose(c[0], ctf_2d(32, 2.0, 2e4, 1.9e4, 30.0)[0])
    ctf, _, notes = star_ctf(with_ctf, ignore_ctf=True)
    assert ctf is None and "ignored" in notes[0]
    assert star_ctf(particles())[0] is None and "no CTF columns" in star_ctf(particles())[2][0]
    with_ctf.data["rlnCtfDataArePhaseFlipped"] = 1
    assert star_ctf(with_ctf)[1] is True
    with_ctf.data["rlnCtfDataAreCtfPremultiplied"] = 1
    with pytest.raises(ValueError, match="premultiplied"):
        star_ctf(with_ctf)
