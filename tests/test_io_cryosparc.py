"""cryoSPARC .cs particles: the pose convention by reprojection, STAR ↔ .cs round trips, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cryoorient.io as cio
from cryoorient.geometry import euler_to_matrix, euler_to_quat, quat_distance
from cryoorient.io import FormatError

scipy_ndimage = pytest.importorskip("scipy.ndimage")
Rotation = pytest.importorskip("scipy.spatial.transform").Rotation

N, PIXEL = 40, 2.5
ANGLES = np.array([[37.0, 64.0, -112.0], [-150.0, 120.0, 20.0], [80.0, 10.0, 45.0]])  # RELION rot, tilt, psi
ORIGINS = np.array([[2.5, -1.5], [-3.0, 2.0], [1.0, 3.5]])  # RELION origins, pixels


@pytest.fixture(scope="module")
def volume():
    from cryoorient.imaging.phantom import default_density

    return default_density(box_size=N, voxel_size=PIXEL, resolution=7.0).astype(np.float64)


def _cryosparc_image(volume, pose, shift):
    """The particle image under cryoSPARC's model as cryoDRGN and pyem read its files, computed
    without cryoorient: R = expm([r]×) (scipy), image(x, y) = Σ_z V(R (x + s_x, y + s_y, z)),
    coordinates in voxels from the box centre N // 2, tricubic interpolation."""
    R = Rotation.from_rotvec(pose).as_matrix()
    c = np.arange(N, dtype=np.float64) - N // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    pts = np.stack([x + shift[0], y + shift[1], z], axis=-1) @ R.T
    index = [pts[..., 2] + N // 2, pts[..., 1] + N // 2, pts[..., 0] + N // 2]
    return scipy_ndimage.map_coordinates(volume, index, order=3, mode="constant").sum(axis=0)


def _relion_images(volume, angles, origins_px):
    """cryoorient's projection at RELION angles and origins (image moved by -origin)."""
    from cryoorient.imaging.project import FourierProjector

    A = euler_to_matrix(*torch.from_numpy(angles).T)
    shifts = -torch.from_numpy(np.asarray(origins_px, dtype=np.float64))
    return FourierProjector(torch.from_numpy(volume)).images(A, shifts=shifts).numpy()


def _ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _particles(root, angles, origins_px, **columns):
    n = len(angles)
    return cio.Particles.create(root / "stack.mrcs", np.arange(n), pixel_size=PIXEL, image_size=N, root=root,
                                rot=angles[:, 0], tilt=angles[:, 1], psi=angles[:, 2],
                                origin_x_angst=origins_px[:, 0] * PIXEL, origin_y_angst=origins_px[:, 1] * PIXEL,
                                **columns)


def test_written_pose_reprojects_as_cryosparc_model(tmp_path, volume):
    """R = Aᵀ and shift = +origin: the only one of the four candidate conventions under which
    the .cs pose reproduces cryoorient's projection at the RELION angles."""
    cio.write_cs(tmp_path / "p.cs", _particles(tmp_path, ANGLES, ORIGINS))
    raw = np.load(tmp_path / "p.cs")
    ours = _relion_images(volume, ANGLES, ORIGINS)
    for i in range(len(ANGLES)):
        pose, shift = raw["alignments3D/pose"][i].astype(np.float64), raw["alignments3D/shift"][i].astype(np.float64)
        assert _ncc(ours[i], _cryosparc_image(volume, pose, shift)) > 0.999
        transposed = Rotation.from_matrix(Rotation.from_rotvec(pose).as_matrix().T).as_rotvec()
        for wrong in ((transposed, shift), (pose, -shift), (transposed, -shift)):
            assert _ncc(ours[i], _cryosparc_image(volume, *wrong)) < 0.9


def test_read_pose_reprojects_as_cryosparc_model(tmp_path, volume):
    """A hand-made .cs (poses drawn as rotation vectors): read_cs's RELION angles and origins give
    cryoorient projections equal to cryoSPARC's model images."""
    rng = np.random.default_rng(3)
    poses = Rotation.random(4, random_state=5).as_rotvec()
    shifts = rng.uniform(-3, 3, size=(4, 2))
    arr = np.zeros(4, dtype=[("blob/path", "S12"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4"),
                             ("alignments3D/pose", "<f4", (3,)), ("alignments3D/shift", "<f4", (2,))])
    arr["blob/path"], arr["blob/idx"], arr["blob/psize_A"] = b">stack.mrcs", np.arange(4), PIXEL
    arr["alignments3D/pose"], arr["alignments3D/shift"] = poses, shifts
    with open(tmp_path / "hand.cs", "wb") as fh:
        np.save(fh, arr)
    p = cio.read_cs(tmp_path / "hand.cs")
    assert p.image_names[0] == "000001@stack.mrcs"  # cryoSPARC's '>' import mark dropped
    origins_px = np.stack([p.origin_x_angst, p.origin_y_angst], axis=1) / PIXEL
    ours = _relion_images(volume, p.angles, origins_px)
    for i in range(4):
        model = _cryosparc_image(volume, arr["alignments3D/pose"][i].astype(np.float64),
                                 arr["alignments3D/shift"][i].astype(np.float64))
        assert _ncc(ours[i], model) > 0.999


def test_star_cs_star_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    angles = np.stack([rng.uniform(-180, 180, n), np.degrees(np.arccos(rng.uniform(-1, 1, n))),
                       rng.uniform(-180, 180, n)], axis=1)
    angles[:4] = [[0, 0, 0], [10, 0, -30], [45, 180, 20], [0, 90, 180]]  # identity, gimbal lock, 180° turns
    origins = rng.uniform(-8, 8, size=(n, 2))
    group = np.where(np.arange(n) < 120, 1, 2)
    p = _particles(tmp_path, angles, origins, optics_group=group,
                   defocus_u=rng.uniform(8000, 30000, n), defocus_v=rng.uniform(8000, 30000, n),
                   defocus_angle=rng.uniform(-180, 180, n), voltage=np.where(group == 1, 300.0, 200.0),
                   spherical_aberration=np.where(group == 1, 2.7, 2.0), amplitude_contrast=0.07,
                   phase_shift=rng.uniform(0, 90, n), rlnRandomSubset=rng.integers(1, 3, n))
    cio.write_star(tmp_path / "a.star", p)
    a = cio.read_star(tmp_path / "a.star")
    cio.write_particles(tmp_path / "b.cs", a)
    cio.write_particles(tmp_path / "c.star", cio.read_particles(tmp_path / "b.cs"))
    c = cio.read_star(tmp_path / "c.star")

    assert c.image_names == a.image_names and c.stack_paths == a.stack_paths
    qa, qc = (euler_to_quat(*torch.from_numpy(x.angles).T) for x in (a, c))
    assert float(quat_distance(qa, qc).max()) < 1e-6
    for attr in ("origin_x_angst", "origin_y_angst"):
        np.testing.assert_allclose(getattr(c, attr), getattr(a, attr), atol=1e-5, err_msg=attr)
    for attr in ("defocus_u", "defocus_v", "voltage", "spherical_aberration", "amplitude_contrast", "pixel_size"):
        np.testing.assert_allclose(getattr(c, attr), getattr(a, attr), rtol=1e-6, err_msg=attr)
    for attr in ("defocus_angle", "phase_shift"):
        np.testing.assert_allclose(getattr(c, attr), getattr(a, attr), atol=1e-4, err_msg=attr)
    np.testing.assert_array_equal(c.optics_group, group)
    np.testing.assert_array_equal(c.image_size, N)
    np.testing.assert_array_equal(c.data["rlnRandomSubset"], a.data["rlnRandomSubset"])
    raw = np.load(tmp_path / "b.cs")
    assert len(np.unique(raw["uid"])) == n and raw["blob/path"][0] == b"stack.mrcs"
    assert np.abs(np.linalg.norm(raw["alignments3D/pose"], axis=1)).max() <= np.pi + 1e-6
    cio.write_cs(tmp_path / "again.cs", c)
    np.testing.assert_array_equal(np.load(tmp_path / "again.cs")["uid"], raw["uid"])  # uid: a hash of the image name


def test_write_cs_without_angles_and_refusals(tmp_path):
    p = cio.Particles.create("s.mrcs", [0, 1], pixel_size=1.1, image_size=16, root=tmp_path)
    cio.write_cs(tmp_path / "p.cs", p)
    raw = np.load(tmp_path / "p.cs")
    assert "alignments3D/pose" not in raw.dtype.names
    back = cio.read_cs(tmp_path / "p.cs")
    assert back.angles is None and back.origin_x_angst is None
    np.testing.assert_array_equal(back.indices, [0, 1])
    with pytest.raises(FileExistsError, match="p.cs"):
        cio.write_cs(tmp_path / "p.cs", p)
    p.pixel_size = None
    with pytest.raises(FormatError, match="--pixel-size"):
        cio.write_cs(tmp_path / "q.cs", p)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["p.cs"]


def test_project_dir_and_relative_blob_paths(tmp_path):
    """blob/path is relative to the cryoSPARC project: found from a job folder below it."""
    project = tmp_path / "P12"
    (project / "J19" / "extract").mkdir(parents=True)
    cio.write_stack(project / "J19" / "extract" / "a.mrc", np.arange(32.0).reshape(2, 4, 4), 1.5)
    arr = np.zeros(2, dtype=[("blob/path", "S20"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4")])
    arr["blob/path"], arr["blob/idx"], arr["blob/psize_A"] = b"J19/extract/a.mrc", [1, 0], 1.5
    (project / "J24").mkdir()
    with open(project / "J24" / "particles.cs", "wb") as fh:
        np.save(fh, arr)
    p = cio.read_cs(project / "J24" / "particles.cs")
    assert p.root == project
    np.testing.assert_array_equal(cio.read_particle_images(p)[:, 0, 0], [16.0, 0.0])
    elsewhere = cio.read_cs(project / "J24" / "particles.cs", project_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="J19/extract/a.mrc"):
        cio.read_particle_images(elsewhere)


def test_cs_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.cs"):
        cio.read_cs(tmp_path / "none.cs")
    (tmp_path / "text.cs").write_text("not numpy\n")
    with pytest.raises(FormatError, match="text.cs"):
        cio.read_cs(tmp_path / "text.cs")
    with open(tmp_path / "plain.cs", "wb") as fh:
        np.save(fh, np.zeros(3))
    with pytest.raises(FormatError, match="structured"):
        cio.read_cs(tmp_path / "plain.cs")
    with open(tmp_path / "nopath.cs", "wb") as fh:
        np.save(fh, np.zeros(3, dtype=[("blob/idx", "<u4")]))
    with pytest.raises(FormatError, match="blob/path"):
        cio.read_cs(tmp_path / "nopath.cs")
    arr = np.zeros(1, dtype=[("blob/path", "S8"), ("blob/idx", "<u4"), ("alignments3D/shift", "<f4", (2,))])
    with open(tmp_path / "nopix.cs", "wb") as fh:
        np.save(fh, arr)
    with pytest.raises(FormatError, match="--pixel-size"):
        cio.read_cs(tmp_path / "nopix.cs")
    p = cio.read_cs(tmp_path / "nopix.cs", pixel_size=1.3, require_pixel_size=True)
    np.testing.assert_allclose(p.pixel_size, 1.3)
