"""Particle files by suffix (read_particles / write_particles), and the real RELION and cryoSPARC
files of ../shared/data/formats read against their raw numbers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import cryoorient.io as cio
from cryoorient.geometry import euler_to_quat, quat_distance
from cryoorient.io import FormatError

Rotation = pytest.importorskip("scipy.spatial.transform").Rotation


def _formats(shared_data):
    d = shared_data / "formats"
    if not d.is_dir():
        pytest.skip(f"{d} not available")
    return d


@pytest.mark.parametrize("name, n, pixel", [("relion31.v2.star", 5, [2.806]),
                                            ("relion31.6opticsgroups.star", 139, [1.24, 1.25]),
                                            ("relion5.star", 17, [0.89]),
                                            ("cryosparc_P12_J24_001_particles.cs", 2019, [2.95]),
                                            ("cryosparc_J2_particles_exported.cs", 22, [1.345])])
def test_real_files_counts_and_pixel_sizes(shared_data, name, n, pixel):
    p = cio.read_particles(_formats(shared_data) / name, require_pixel_size=True)
    assert len(p) == n
    np.testing.assert_allclose(np.unique(p.pixel_size), pixel, rtol=1e-6)


def test_real_relion_values(shared_data):
    d = _formats(shared_data)
    p = cio.read_particles(d / "relion31.v2.star")  # first row of the file, optics table
    assert p.image_names[0] == "000001@relion31.mrcs"
    assert (p.defocus_u[0], p.defocus_v[0], p.defocus_angle[0]) == (13108.082418, 12845.582418, -160.39)
    assert (p.voltage[0], p.spherical_aberration[0], p.amplitude_contrast[0]) == (300.0, 0.01, 0.1)
    assert (p.rot[0], p.tilt[0], p.psi[0]) == (-102.30296, 82.318041, 124.706463)
    assert (p.origin_x_angst[0], p.origin_y_angst[0]) == (0.019324, -0.64686)
    six = cio.read_particles(d / "relion31.6opticsgroups.star")
    np.testing.assert_array_equal(np.bincount(six.optics_group)[1:], [48, 29, 5, 7, 26, 24])
    row = six.image_names.index("56@Polish/job203/Micrographs2/b4_0028_shiny.mrcs")  # group 4: Cs 2.6
    assert (six.optics_group[row], six.spherical_aberration[row], six.defocus_u[row]) == (4, 2.6, 7326.912115)
    assert six.pixel_size[six.optics_group == 2][0] == 1.24
    r5 = cio.read_particles(d / "relion5.star")
    assert r5.image_names[1] == "2@toy_images_b.mrcs"
    assert (r5.defocus_u[0], r5.defocus_angle[0], r5.voltage[0], r5.spherical_aberration[0]) == (
        11949.06133, 49.059993, 100.0, 1.6)


def test_real_cryosparc_values(shared_data):
    d = _formats(shared_data)
    raw = np.load(d / "cryosparc_P12_J24_001_particles.cs")
    p = cio.read_particles(d / "cryosparc_P12_J24_001_particles.cs")
    path = raw["blob/path"][0].decode()
    assert p.image_names[:2] == [f"000001@{path}", f"000002@{path}"]
    np.testing.assert_allclose(p.defocus_u, raw["ctf/df1_A"], rtol=1e-7)
    np.testing.assert_allclose(p.defocus_v[0], 45309.79296875)
    np.testing.assert_allclose(p.defocus_angle[0], np.degrees(-1.3636448383331299))
    assert (p.voltage[0], p.spherical_aberration[0]) == (200.0, 2.0)
    np.testing.assert_allclose(p.amplitude_contrast[0], 0.07, rtol=1e-6)
    np.testing.assert_allclose(p.origin_x_angst[:2], np.array([11.334375381469727, 1.265625]) * 2.95, rtol=1e-6)
    np.testing.assert_allclose(p.origin_y_angst[:2], np.array([-1.828125, -4.640625]) * 2.95, rtol=1e-6)
    np.testing.assert_array_equal(p.data["rlnRandomSubset"][:4], [2, 1, 1, 1])
    # the angles are the same rotations as the file's rotation vectors
    back = cio.cryosparc.euler_to_pose(p.rot, p.tilt, p.psi)
    q_file, q_back = (torch.from_numpy(np.roll(Rotation.from_rotvec(r).as_quat(), 1, axis=1)) for r in
                      (raw["alignments3D/pose"].astype(np.float64), back))
    assert float(quat_distance(q_file, q_back).max()) < 1e-6

    two_d = cio.read_particles(d / "cryosparc_J2_particles_exported.cs")
    assert two_d.angles is None and two_d.origin_x_angst is None  # no 3D pose: absent, not zeros
    assert two_d.image_names[0] == "000001@J1/imported/000090334788266266069_18jam15b_0345_ali_DW.mrcs"
    assert (two_d.defocus_u[0], two_d.defocus_v[0], two_d.voltage[0]) == (16412.177734375, 16236.259765625, 300.0)
    np.testing.assert_allclose(two_d.defocus_angle[0], np.degrees(0.861639142036438))


@pytest.mark.parametrize("name", ["relion31.6opticsgroups.star", "relion5.star",
                                  "cryosparc_P12_J24_001_particles.cs", "cryosparc_J2_particles_exported.cs"])
def test_real_files_missing_images_one_clear_error(shared_data, name):
    p = cio.read_particles(_formats(shared_data) / name)
    first = p.stack_paths[0]
    with pytest.raises(FileNotFoundError) as err:
        cio.read_particle_images(p)
    assert str(err.value).startswith(f"particle stack not found: '{first}'")
    assert "\n" not in str(err.value)


def test_real_relion_images_read_permissively(shared_data):
    """relion31.mrcs has neither the 'MAP ' identifier nor a machine stamp: read, with one warning."""
    p = cio.read_particles(_formats(shared_data) / "relion31.v2.star")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = cio.read_particle_images(p)
    assert images.shape == (5, 256, 256) and np.isfinite(images).all() and images.std() > 0
    assert len(caught) == 1 and "relion31.mrcs" in str(caught[0].message)
    assert "'MAP ' identifier" in str(caught[0].message)


def test_real_star_to_cs_and_back(shared_data, tmp_path):
    p = cio.read_particles(_formats(shared_data) / "relion31.6opticsgroups.star")
    cio.write_particles(tmp_path / "p.cs", p)
    q = cio.read_particles(tmp_path / "p.cs")
    assert q.image_names == [f"{i + 1:06d}@{s}" for i, s in zip(p.indices, p.stack_names_for(tmp_path / "p.cs"))]
    qa, qb = (euler_to_quat(*torch.from_numpy(x.angles).T) for x in (p, q))
    assert float(quat_distance(qa, qb).max()) < 1e-6
    np.testing.assert_array_equal(q.optics_group, p.optics_group)
    np.testing.assert_allclose(q.spherical_aberration, p.spherical_aberration, rtol=1e-6)


def test_read_particles_dispatch(tmp_path):
    cio.write_stack(tmp_path / "s.mrcs", np.zeros((3, 8, 8)), 1.7)
    bare = cio.read_particles(tmp_path / "s.mrcs")
    assert len(bare) == 3 and bare.angles is None
    np.testing.assert_allclose(bare.pixel_size, 1.7)
    np.testing.assert_array_equal(bare.image_size, 8)
    np.testing.assert_allclose(cio.read_particles(tmp_path / "s.mrcs", pixel_size=2.0).pixel_size, 2.0)
    with pytest.raises(ValueError, match="--pixel-size"):
        cio.read_particles(tmp_path / "s.mrcs", pixel_size=0.0)
    cio.write_particles(tmp_path / "s.star", bare)
    cio.write_particles(tmp_path / "s.cs", bare)
    for name in ("s.star", "s.cs"):
        assert cio.read_particles(tmp_path / name).stack_paths == [tmp_path / "s.mrcs"] * 3
    with pytest.raises(FormatError, match=r"unknown particle file type '\.txt'"):
        cio.read_particles(tmp_path / "p.txt")
    with pytest.raises(FormatError, match="expected .star, .cs"):
        cio.write_particles(tmp_path / "p.mrcs", bare)


def test_write_recovered_star_by_suffix(tmp_path):
    from cryoorient.geometry import random_quaternions

    p = cio.Particles.create("s.mrcs", range(5), pixel_size=1.2, image_size=16, root=tmp_path,
                             origin_x_angst=3.0, defocus_u=15000.0)
    q = random_quaternions(5, generator=1, dtype=torch.float64)
    for name in ("r.star", "r.cs"):
        cio.write_recovered_star(p, q, tmp_path / name)
        back = cio.read_particles(tmp_path / name)
        got = euler_to_quat(*torch.from_numpy(back.angles).T)
        assert float(quat_distance(got, q).max()) < 1e-5
        np.testing.assert_allclose(back.origin_x_angst, 0.0)
        np.testing.assert_allclose(back.pixel_size, 1.2, rtol=1e-6)
        np.testing.assert_allclose(back.defocus_u, 15000.0)
