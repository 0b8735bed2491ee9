"""Tests for cryoorient.io: MRC maps/stacks and RELION STAR files (model densities: test_io_structure.py)."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

import cryoorient.io as cio
from cryoorient.io import FormatError


def _files(d: Path):
    return sorted(p.name for p in d.iterdir())


# =========================================================================== #
# MRC maps
# =========================================================================== #
def test_map_roundtrip_non_cubic_keeps_zyx_order_and_voxel_size(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(5, 6, 7)).astype(np.float32)  # [z, y, x]
    path = tmp_path / "map.mrc"
    cio.write_map(path, vol, voxel_size=1.37)
    data, vs = cio.read_map(path)
    assert data.dtype == np.float32 and data.shape == (5, 6, 7)
    np.testing.assert_array_equal(data, vol)
    assert vs == pytest.approx(1.37, rel=1e-6)
    with mrcfile.open(path) as m:  # header says nx=7 (fastest), nz=5
        assert (int(m.header.nx), int(m.header.ny), int(m.header.nz)) == (7, 6, 5)
        assert m.is_volume()
        assert float(m.header.dmax) == pytest.approx(vol.max())
    assert _files(tmp_path) == ["map.mrc"]  # no temp files left behind


def test_write_map_converts_to_float32_and_validates(tmp_path):
    cio.write_map(tmp_path / "a.mrc", np.arange(24, dtype=np.int16).reshape(2, 3, 4), 2.0)
    data, _ = cio.read_map(tmp_path / "a.mrc")
    assert data.dtype == np.float32 and data[1, 2, 3] == 23
    with pytest.raises(ValueError, match="3D"):
        cio.write_map(tmp_path / "b.mrc", np.zeros((3, 3)), 1.0)
    with pytest.raises(ValueError, match="voxel_size"):
        cio.write_map(tmp_path / "b.mrc", np.zeros((3, 3, 3)), 0.0)
    assert _files(tmp_path) == ["a.mrc"]


def test_pad_to_cube_centres_with_zeros(tmp_path):
    vol = np.ones((4, 6, 3), dtype=np.float32)
    vol[2, 3, 1] = 5.0  # the centre voxel (n // 2 on each axis)
    cio.write_map(tmp_path / "m.mrc", vol, 1.0)
    raw, _ = cio.read_map(tmp_path / "m.mrc")
    assert raw.shape == (4, 6, 3)
    cube, vs = cio.read_map(tmp_path / "m.mrc", pad_to_cube=True)
    assert cube.shape == (6, 6, 6) and vs == 1.0
    assert cube[3, 3, 3] == 5.0  # centre stays at the box centre
    assert cube.sum() == pytest.approx(vol.sum())
    np.testing.assert_array_equal(cube[1:5, :, 2:5], vol)
    assert not cube[0].any() and not cube[5].any() and not cube[:, :, :2].any() and not cube[:, :, 5].any()
    same = np.zeros((3, 3, 3))
    assert cio.pad_to_cube(same) is same


def test_refuse_overwrite(tmp_path):
    path = tmp_path / "map.mrc"
    cio.write_map(path, np.zeros((2, 2, 2)), 1.0)
    with pytest.raises(FileExistsError, match="map.mrc.*overwrite=True"):
        cio.write_map(path, np.ones((2, 2, 2)), 1.0)
    assert cio.read_map(path)[0].sum() == 0  # untouched
    cio.write_map(path, np.ones((2, 2, 2)), 1.0, overwrite=True)
    assert cio.read_map(path)[0].sum() == 8
    with pytest.raises(FileExistsError):
        cio.write_stack(path, np.zeros((1, 2, 2)), 1.0)
    with pytest.raises(FileExistsError):
        cio.StackWriter(path, (1, 2, 2), 1.0)
    assert _files(tmp_path) == ["map.mrc"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_new(name, *a, **k):
        m = mrcfile.mrcfile.MrcFile(name, mode="w+", overwrite=True)
        m.close()
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(mrcfile, "new", broken_new)
    with pytest.raises(OSError, match="simulated"):
        cio.write_map(tmp_path / "x.mrc", np.zeros((2, 2, 2)), 1.0)
    with pytest.raises(OSError, match="simulated"):
        cio.write_stack(tmp_path / "x.mrcs", np.zeros((2, 2, 2)), 1.0)
    assert _files(tmp_path) == []


# =========================================================================== #
# MRC stacks
# =========================================================================== #
def test_stack_roundtrip_mmap(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.normal(size=(3, 8, 10)).astype(np.float32)  # [n, y, x]
    path = tmp_path / "s.mrcs"
    cio.write_stack(path, imgs, pixel_size=0.85)
    data, ps = cio.read_stack(path)
    assert isinstance(data, np.memmap) and not data.flags.writeable
    assert data.shape == (3, 8, 10) and ps == pytest.approx(0.85, rel=1e-6)
    np.testing.assert_array_equal(data[1], imgs[1])
    with mrcfile.open(path) as m:
        assert m.is_image_stack() and int(m.header.nx) == 10
    mem, ps2 = cio.read_stack(path, mmap=False)
    assert type(mem) is np.ndarray and mem.dtype == np.float32 and ps2 == ps
    np.testing.assert_array_equal(mem, imgs)
    cio.write_stack(tmp_path / "one.mrcs", imgs[0], 2.0)  # a single 2D image
    one, _ = cio.read_stack(tmp_path / "one.mrcs")
    assert one.shape == (1, 8, 10)


def test_stack_writer_chunks_and_header_stats(tmp_path):
    rng = np.random.default_rng(2)
    imgs = rng.normal(size=(7, 6, 5)).astype(np.float32)
    path = tmp_path / "w.mrcs"
    with cio.StackWriter(path, shape=(7, 6, 5), pixel_size=1.5) as w:
        w.write(0, imgs[:3])
        assert not path.exists()  # nothing under the final name until done
        w.write(3, imgs[3])  # a single 2D image
        w.write(4, imgs[4:])
    data, ps = cio.read_stack(path)
    np.testing.assert_array_equal(data, imgs)
    assert ps == pytest.approx(1.5)
    with mrcfile.open(path) as m:
        h = m.header
        assert m.is_image_stack()
        assert float(h.dmin) == pytest.approx(imgs.min())
        assert float(h.dmax) == pytest.approx(imgs.max())
        assert float(h.dmean) == pytest.approx(imgs.mean(), abs=1e-6)
        assert float(h.rms) == pytest.approx(imgs.std(), rel=1e-5)
    assert _files(tmp_path) == ["w.mrcs"]


def test_stack_writer_unwritten_images_are_zero_and_rewrites_ok(tmp_path):
    path = tmp_path / "w.mrcs"
    with cio.StackWriter(path, (4, 3, 3), 1.0) as w:
        w.write(1, np.full((2, 3, 3), 2.0))
        w.write(2, np.full((3, 3), -1.0))  # overwrite image 2
    data, _ = cio.read_stack(path, mmap=False)
    np.testing.assert_array_equal(data[:, 0, 0], [0, 2, -1, 0])
    with mrcfile.open(path) as m:
        assert float(m.header.dmin) == -1 and float(m.header.dmax) == 2
        assert float(m.header.dmean) == pytest.approx(data.mean())


def test_stack_writer_exception_leaves_no_file(tmp_path):
    path = tmp_path / "w.mrcs"
    with pytest.raises(RuntimeError, match="boom"):
        with cio.StackWriter(path, (10, 4, 4), 1.0) as w:
            w.write(0, np.ones((5, 4, 4)))
            raise RuntimeError("boom")
    assert _files(tmp_path) == []
    with pytest.raises(IndexError):
        with cio.StackWriter(path, (2, 4, 4), 1.0) as w:
            w.write(1, np.ones((2, 4, 4)))  # runs past the end
    with pytest.raises(ValueError, match="shape"):
        with cio.StackWriter(path, (2, 4, 4), 1.0) as w:
            w.write(0, np.ones((1, 4, 5)))
    assert _files(tmp_path) == []
    with pytest.raises(RuntimeError, match="outside"):
        cio.StackWriter(path, (2, 4, 4), 1.0).write(0, np.ones((4, 4)))


# =========================================================================== #
# MRC errors
# =========================================================================== #
def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.mrc"
    for fn in (cio.read_map, cio.read_stack):
        with pytest.raises(FileNotFoundError, match="nope.mrc"):
            fn(missing)


def test_random_bytes_is_format_error(tmp_path):
    path = tmp_path / "junk.mrc"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    for call in (lambda: cio.read_map(path), lambda: cio.read_stack(path),
                 lambda: cio.read_stack(path, mmap=False)):
        with pytest.raises(FormatError, match="junk.mrc"):
            call()
    short = tmp_path / "short.mrc"
    short.write_bytes(b"MRC" * 10)
    with pytest.raises(FormatError, match="short.mrc"):
        cio.read_map(short)
    assert issubclass(FormatError, ValueError)


@pytest.mark.parametrize("mmap", [True, False])
def test_truncated_file_is_format_error(tmp_path, mmap):
    path = tmp_path / "t.mrcs"
    cio.write_stack(path, np.ones((4, 16, 16)), 1.0)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 100)
    with pytest.raises(FormatError, match=r"t\.mrcs.*truncated"):
        cio.read_stack(path, mmap=mmap)
    with pytest.raises(FormatError, match="truncated"):
        cio.read_map(path)


def test_oversized_data_block_is_format_error(tmp_path):
    path = tmp_path / "big.mrc"
    cio.write_map(path, np.ones((4, 4, 4)), 1.0)
    with open(path, "ab") as fh:
        fh.write(b"\0" * 64)
    with pytest.raises(FormatError, match="larger than expected"):
        cio.read_map(path)


# =========================================================================== #
# STAR files
# =========================================================================== #
RELION31_STAR = """
# version 30001

data_optics

loop_ 
_rlnOpticsGroupName #1 
_rlnOpticsGroup #2 
_rlnMicrographOriginalPixelSize #3 
_rlnVoltage #4 
_rlnSphericalAberration #5 
_rlnAmplitudeContrast #6 
_rlnImagePixelSize #7 
_rlnImageSize #8 
_rlnImageDimensionality #9 
opticsGroup1            1     0.885000   300.000000     2.700000     0.100000     1.770000           16            2 
opticsGroup2            2     1.060000   200.000000     2.000000     0.070000     2.120000           16            2 
 

# version 30001

data_particles

loop_ 
_rlnCoordinateX #1 
_rlnCoordinateY #2 
_rlnAngleRot #3 
_rlnAngleTilt #4 
_rlnAnglePsi #5 
_rlnImageName #6 
_rlnMicrographName #7 
_rlnOpticsGroup #8 
_rlnCtfMaxResolution #9 
_rlnCtfFigureOfMerit #10 
_rlnDefocusU #11 
_rlnDefocusV #12 
_rlnDefocusAngle #13 
_rlnCtfBfactor #14 
_rlnCtfScalefactor #15 
_rlnPhaseShift #16 
_rlnOriginXAngst #17 
_rlnOriginYAngst #18 
_rlnClassNumber #19 
  1234.000000  2345.000000    10.000000    20.000000   -45.000000 000001@Extract/job007/Movies/mic1.mrcs MotionCorr/job002/Movies/mic1.mrc            1     3.512000     0.131000 12345.678000 12000.123000    34.560000     0.000000     1.000000     0.000000     1.500000    -2.250000            1 
   100.000000   200.000000   170.500000    90.000000    33.000000 000003@Extract/job007/Movies/mic1.mrcs MotionCorr/job002/Movies/mic1.mrc            1     3.100000     0.140000 13000.000000 12500.000000   -12.000000     0.000000     1.000000     0.000000     0.000000     0.885000            2 
   512.000000   512.000000  -179.000000   135.250000     0.000000 000002@Extract/job007/Movies/mic2.mrcs MotionCorr/job002/Movies/mic2.mrc            2     4.000000     0.120000 20000.000000 19000.000000    80.000000     0.000000     1.000000    45.000000    -2.120000     4.240000            1 
    64.000000    64.000000     0.000000     0.000000    90.000000 000001@Extract/job007/Movies/mic2.mrcs MotionCorr/job002/Movies/mic2.mrc            2     4.500000     0.110000 21000.000000 20500.000000    81.000000     0.000000     1.000000    45.000000     0.000000     0.000000            2 
 
"""

PRE31_STAR = """
data_

loop_
_rlnImageName #1
_rlnMicrographName #2
_rlnDefocusU #3
_rlnDefocusV #4
_rlnDefocusAngle #5
_rlnVoltage #6
_rlnSphericalAberration #7
_rlnAmplitudeContrast #8
_rlnMagnification #9
_rlnDetectorPixelSize #10
_rlnAngleRot #11
_rlnAngleTilt #12
_rlnAnglePsi #13
_rlnOriginX #14
_rlnOriginY #15
_rlnRandomSubset #16
000001@Particles/stack.mrcs mic.mrc 10000.0 9800.0 12.0 300.0 2.7 0.1 40000.0 6.0 10.0 20.0 30.0 2.5 -1.0 1
000002@Particles/stack.mrcs mic.mrc 11000.0 10800.0 13.0 300.0 2.7 0.1 40000.0 6.0 40.0 50.0 60.0 0.0 4.0 2
"""


def _make_relion_project(root: Path):
    """Write the 3.1 STAR file and its two stacks (image i of mic k = k*100 + i)."""
    d = root / "Extract" / "job007" / "Movies"
    d.mkdir(parents=True)
    for k in (1, 2):
        imgs = np.stack([np.full((16, 16), k * 100 + i, np.float32) for i in range(3)])
        imgs[:, 0, 1] = np.arange(3) + 0.5  # make images non-constant
        cio.write_stack(d / f"mic{k}.mrcs", imgs, 1.77 if k == 1 else 2.12)
    star = root / "particles.star"
    star.write_text(RELION31_STAR)
    return star


def test_read_relion31(tmp_path):
    star = _make_relion_project(tmp_path)
    p = cio.read_star(star)
    assert len(p) == 4
    np.testing.assert_array_equal(p.optics_group, [1, 1, 2, 2])
    np.testing.assert_allclose(p.voltage, [300, 300, 200, 200])
    np.testing.assert_allclose(p.spherical_aberration, [2.7, 2.7, 2.0, 2.0])
    np.testing.assert_allclose(p.amplitude_contrast, [0.1, 0.1, 0.07, 0.07])
    np.testing.assert_allclose(p.pixel_size, [1.77, 1.77, 2.12, 2.12])
    np.testing.assert_array_equal(p.image_size, [16] * 4)
    np.testing.assert_allclose(p.rot, [10, 170.5, -179, 0])
    np.testing.assert_allclose(p.tilt, [20, 90, 135.25, 0])
    np.testing.assert_allclose(p.psi, [-45, 33, 0, 90])
    np.testing.assert_allclose(p.angles[:, 0], p.rot)
    np.testing.assert_allclose(p.origin_x_angst, [1.5, 0, -2.12, 0])
    np.testing.assert_allclose(p.origin_y_angst, [-2.25, 0.885, 4.24, 0])
    np.testing.assert_allclose(p.defocus_u, [12345.678, 13000, 20000, 21000])
    np.testing.assert_allclose(p.defocus_v, [12000.123, 12500, 19000, 20500])
    np.testing.assert_allclose(p.defocus_angle, [34.56, -12, 80, 81])
    np.testing.assert_allclose(p.phase_shift, [0, 0, 45, 45])
    np.testing.assert_array_equal(p.indices, [0, 2, 1, 0])
    assert p.image_names[1] == "000003@Extract/job007/Movies/mic1.mrcs"
    movies = tmp_path / "Extract" / "job007" / "Movies"
    assert p.stack_paths == [movies / "mic1.mrcs"] * 2 + [movies / "mic2.mrcs"] * 2
    assert p.data["rlnMicrographName"][0] == "MotionCorr/job002/Movies/mic1.mrc"
    np.testing.assert_array_equal(p.data["rlnClassNumber"], [1, 2, 1, 2])  # extra column kept


def _assert_same_particles(a, b, added=()):
    assert a.image_names == b.image_names
    assert a.stack_paths == b.stack_paths
    assert sorted(a.data.columns) == sorted(set(b.data.columns) - set(added))
    for c in a.data.columns:
        x, y = a.data[c], b.data[c]
        if pd.api.types.is_numeric_dtype(x):
            np.testing.assert_allclose(x.to_numpy(float), y.to_numpy(float), rtol=1e-6, atol=1e-6, err_msg=c)
        else:
            assert x.tolist() == y.tolist(), c


def test_relion31_round_trip(tmp_path):
    star = _make_relion_project(tmp_path)
    p1 = cio.read_star(star)
    out = tmp_path / "out.star"
    cio.write_star(out, p1)
    text = out.read_text()
    assert text.count("data_optics") == 1 and text.count("data_particles") == 1
    assert "# version 30001" in text
    assert "000003@Extract/job007/Movies/mic1.mrcs" in text  # relative, as stacks lie under out dir
    p2 = cio.read_star(out)
    _assert_same_particles(p1, p2)
    # the optics block keeps both groups, names and values
    import starfile

    blocks = starfile.read(out, always_dict=True)
    optics = blocks["optics"]
    assert optics["rlnOpticsGroupName"].tolist() == ["opticsGroup1", "opticsGroup2"]
    assert optics["rlnOpticsGroup"].tolist() == [1, 2]
    np.testing.assert_allclose(optics["rlnMicrographOriginalPixelSize"], [0.885, 1.06])
    assert "rlnVoltage" not in blocks["particles"] and "rlnOpticsGroup" in blocks["particles"]
    # write again from the re-read file: byte-identical
    cio.write_star(tmp_path / "out2.star", p2)
    assert (tmp_path / "out2.star").read_text() == text
    with pytest.raises(FileExistsError, match="out.star"):
        cio.write_star(out, p2)
    cio.write_star(out, p2, overwrite=True)


def test_write_star_elsewhere_uses_absolute_paths(tmp_path):
    star = _make_relion_project(tmp_path / "proj")
    p1 = cio.read_star(star)
    other = tmp_path / "elsewhere"
    other.mkdir()
    cio.write_star(other / "p.star", p1)
    p2 = cio.read_star(other / "p.star")
    assert p2.stack_paths == p1.stack_paths
    assert all(Path(n.split("@", 1)[1]).is_absolute() for n in p2.image_names)
    # stacks under a subdirectory of the STAR file get relative names
    cio.write_star(tmp_path / "proj" / "Extract" / "sel.star", p1)
    p3 = cio.read_star(tmp_path / "proj" / "Extract" / "sel.star")
    assert p3.image_names[0] == "000001@job007/Movies/mic1.mrcs"
    assert p3.stack_paths == p1.stack_paths


def test_read_pre31_converts_pixels_to_angstrom(tmp_path):
    star = tmp_path / "old.star"
    star.write_text(PRE31_STAR)
    p = cio.read_star(star)
    assert len(p) == 2
    np.testing.assert_allclose(p.pixel_size, [1.5, 1.5])  # 6 um * 1e4 / 40000
    np.testing.assert_allclose(p.origin_x_angst, [3.75, 0.0])
    np.testing.assert_allclose(p.origin_y_angst, [-1.5, 6.0])
    assert "rlnOriginX" not in p.data and "rlnMagnification" not in p.data
    np.testing.assert_array_equal(p.optics_group, [1, 1])
    np.testing.assert_allclose(p.voltage, [300, 300])
    np.testing.assert_allclose(p.psi, [30, 60])
    np.testing.assert_array_equal(p.indices, [0, 1])
    assert p.stack_paths == [tmp_path / "Particles" / "stack.mrcs"] * 2
    np.testing.assert_array_equal(p.data["rlnRandomSubset"], [1, 2])
    assert p.image_size is None
    # converted to 3.1 on write, one optics group
    cio.write_star(tmp_path / "new.star", p)
    q = cio.read_star(tmp_path / "new.star")
    _assert_same_particles(p.subset([0, 1]), q.subset(np.array([True, True])),
                           added=("rlnOpticsGroup", "rlnOpticsGroupName", "rlnImageDimensionality"))
    text = (tmp_path / "new.star").read_text()
    assert "opticsGroup1" in text and "opticsGroup2" not in text


def test_read_pre31_pixel_size_variants(tmp_path):
    old = PRE31_STAR.replace("_rlnMagnification #9\n_rlnDetectorPixelSize #10\n", "_rlnPixelSize #9\n_rlnDummy #10\n")
    star = tmp_path / "old.star"
    star.write_text(old.replace("40000.0 6.0", "1.2 0"))
    p = cio.read_star(star)
    np.testing.assert_allclose(p.origin_x_angst, [3.0, 0.0])
    no_ps = "\n".join(l for l in PRE31_STAR.splitlines())
    no_ps = no_ps.replace("_rlnMagnification #9\n_rlnDetectorPixelSize #10\n", "_rlnA #9\n_rlnB #10\n")
    star.write_text(no_ps)
    with pytest.raises(FormatError, match="pixels.*pixel size"):
        cio.read_star(star)
    p = cio.read_star(star, pixel_size=2.0)
    np.testing.assert_allclose(p.origin_x_angst, [5.0, 0.0])


def test_image_paths_resolve_relative_to_star_dir(tmp_path, monkeypatch):
    star_dir = tmp_path / "proj" / "sub"
    star_dir.mkdir(parents=True)
    absolute = tmp_path / "abs" / "s.mrcs"
    star = star_dir / "p.star"
    star.write_text(
        "data_particles\n\nloop_\n_rlnImageName #1\n_rlnImagePixelSize #2\n"
        f"000001@stacks/a.mrcs 1.0\n000002@../b.mrcs:mrcs 1.0\n000010@{absolute} 1.0\n"
    )
    monkeypatch.chdir(tmp_path)  # cwd must not matter
    p = cio.read_star(Path("proj/sub/p.star"))
    assert p.stack_paths == [star_dir / "stacks" / "a.mrcs", tmp_path / "proj" / "b.mrcs", absolute]
    np.testing.assert_array_equal(p.indices, [0, 1, 9])
    assert p.root == star_dir


def test_star_errors(tmp_path):
    def check(text, match):
        f = tmp_path / "bad.star"
        f.write_text(text)
        with pytest.raises(FormatError, match=match):
            cio.read_star(f)

    optics_only = RELION31_STAR.split("# version 30001\n\ndata_particles")[0]
    check(optics_only, "no data_particles")
    check("data_\n\nloop_\n_rlnDefocusU #1\n10000\n", "rlnImageName")
    check(RELION31_STAR.replace("_rlnImageName #6", "_rlnImageNameX #6"), "rlnImageName")
    check("data_particles\n\nloop_\n_rlnImageName #1\nfoo.mrcs\n", "malformed rlnImageName.*foo.mrcs")
    check("data_particles\n\nloop_\n_rlnImageName #1\n0@foo.mrcs\n", "malformed")
    check("data_particles\n\nloop_\n_rlnImageName #1\nx@foo.mrcs\n", "malformed")
    bad_group = RELION31_STAR.replace(
        "MotionCorr/job002/Movies/mic2.mrc            2     4.5",
        "MotionCorr/job002/Movies/mic2.mrc            7     4.5")
    check(bad_group, r"optics group\(s\) \[7\]")
    check("just some text\nwithout blocks\n", "no particles block")
    f = tmp_path / "bin.star"
    f.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(FormatError, match="bin.star"):
        cio.read_star(f)
    with pytest.raises(FileNotFoundError, match="missing.star"):
        cio.read_star(tmp_path / "missing.star")


def test_create_groups_identical_optics(tmp_path):
    stack = tmp_path / "s.mrcs"
    cio.write_stack(stack, np.zeros((4, 8, 8)), 1.1)
    p = cio.Particles.create(stack, [0, 1, 2, 3], pixel_size=1.1, voltage=[300, 300, 200, 300],
                             spherical_aberration=2.7, amplitude_contrast=0.1,
                             rot=[1, 2, 3, 4], tilt=0, psi=0, rlnCtfBfactor=5.0)
    assert "rlnImageSize" not in p.data
    cio.write_star(tmp_path / "p.star", p)
    q = cio.read_star(tmp_path / "p.star")
    np.testing.assert_array_equal(q.optics_group, [1, 1, 2, 1])
    np.testing.assert_allclose(q.voltage, [300, 300, 200, 300])
    np.testing.assert_array_equal(q.image_size, [8] * 4)  # taken from the stack header
    np.testing.assert_allclose(q.data["rlnCtfBfactor"], 5.0)
    assert q.image_names[3] == "000004@s.mrcs"
    q.rot = q.rot + 1
    np.testing.assert_allclose(q.rot, [2, 3, 4, 5])
    q.psi = None
    assert q.psi is None and q.angles is None
    with pytest.raises(ValueError, match="expected 4"):
        q.tilt = [1, 2]


def test_empty_particle_set_round_trip(tmp_path):
    star = tmp_path / "e.star"
    star.write_text("data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 1.0\n\n"
                    "data_particles\n\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n\n")
    p = cio.read_star(star)
    assert len(p) == 0 and p.image_names == [] and p.indices.size == 0
    cio.write_star(tmp_path / "e2.star", p)
    assert len(cio.read_star(tmp_path / "e2.star")) == 0


def test_read_particle_images(tmp_path):
    star = _make_relion_project(tmp_path)
    p = cio.read_star(star)
    imgs = cio.read_particle_images(p)
    assert imgs.dtype == np.float32 and imgs.shape == (4, 16, 16)
    np.testing.assert_array_equal(imgs[:, 5, 5], [100, 102, 201, 200])
    assert imgs[1, 0, 1] == 2.5
    sub = cio.read_particle_images(p, [3, 0, 3, 1])
    np.testing.assert_array_equal(sub[:, 5, 5], [200, 100, 200, 102])
    masked = cio.read_particle_images(p, np.array([False, True, True, False]))
    np.testing.assert_array_equal(masked[:, 5, 5], [102, 201])
    assert cio.read_particle_images(p, []).shape == (0, 16, 16)
    # an image number beyond the stack
    p.data.loc[0, "rlnImageName"] = "000009@Extract/job007/Movies/mic1.mrcs"
    with pytest.raises(FormatError, match="only 3 images"):
        cio.read_particle_images(p)
    p.data.loc[0, "rlnImageName"] = "000001@Extract/nothere.mrcs"
    with pytest.raises(FileNotFoundError, match="nothere.mrcs"):
        cio.read_particle_images(p)


def test_star_round_trip_keeps_tiny_and_huge_values(tmp_path):
    from cryoorient.io import Particles, read_star, write_star

    p = Particles.create(["stack.mrcs"] * 4, [0, 1, 2, 3], pixel_size=1.5, image_size=16, root=tmp_path,
                         rot=[7.12e-4, -3.0e-5, 12.5, 2.0e10])
    write_star(tmp_path / "p.star", p)
    back = read_star(tmp_path / "p.star")
    np.testing.assert_allclose(back.rot, [7.12e-4, -3.0e-5, 12.5, 2.0e10], rtol=1e-6)
