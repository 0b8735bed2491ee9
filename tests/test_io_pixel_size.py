"""Old-style MRC headers read permissively (one warning), and pixel sizes: missing ones refused
naming --pixel-size, given ones taking their place, and every STAR written carrying one."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import cryoorient.io as cio
from cryoorient.io import FormatError


def _patch(path, offset, data: bytes):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _caught(call):
    """(result, messages of the warnings ``call`` gives)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in caught]


# =========================================================================== #
# MRC headers
# =========================================================================== #
def test_missing_map_identifier_reads_with_one_warning(tmp_path):
    imgs = np.random.default_rng(0).normal(size=(4, 12, 12)).astype(np.float32)
    cio.write_stack(tmp_path / "old.mrcs", imgs, 1.3)
    _patch(tmp_path / "old.mrcs", 208, b"\0\0\0\0")  # the 'MAP ' field
    for mmap in (True, False):
        (data, pixel), messages = _caught(lambda: cio.read_stack(tmp_path / "old.mrcs", mmap=mmap))
        np.testing.assert_array_equal(data, imgs)
        assert pixel == pytest.approx(1.3)
        assert len(messages) == 1 and "old.mrcs" in messages[0] and "'MAP ' identifier" in messages[0]
    vol = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    cio.write_map(tmp_path / "old.mrc", vol, 2.0)
    _patch(tmp_path / "old.mrc", 208, b"XXXX")
    _patch(tmp_path / "old.mrc", 212, b"\0\0\0\0")  # and no machine stamp
    (data, voxel), messages = _caught(lambda: cio.read_map(tmp_path / "old.mrc"))
    np.testing.assert_array_equal(data, vol)
    assert voxel == 2.0 and len(messages) == 1
    assert "old.mrc" in messages[0] and "'MAP ' identifier" in messages[0] and "machine stamp" in messages[0]


def test_zero_cell(tmp_path):
    cio.write_map(tmp_path / "m.mrc", np.ones((4, 4, 4)), 1.5)
    _patch(tmp_path / "m.mrc", 40, bytes(12))  # cella
    with pytest.raises(FormatError, match="m.mrc.*--pixel-size") as err:
        cio.read_map(tmp_path / "m.mrc")
    assert "pixel_size" not in str(err.value)
    (vol, voxel), messages = _caught(lambda: cio.read_map(tmp_path / "m.mrc", voxel_size=1.7))
    assert voxel == 1.7 and vol.shape == (4, 4, 4) and messages == []
    with pytest.raises(ValueError, match="voxel_size"):
        cio.read_map(tmp_path / "m.mrc", voxel_size=0.0)
    cio.write_stack(tmp_path / "s.mrcs", np.ones((2, 4, 4)), 1.5)
    _patch(tmp_path / "s.mrcs", 40, bytes(12))
    (_, pixel), messages = _caught(lambda: cio.read_stack(tmp_path / "s.mrcs"))
    assert pixel == 0.0 and len(messages) == 1 and "s.mrcs" in messages[0] and "zero cell" in messages[0]
    with pytest.raises(FormatError, match="s.mrcs.*--pixel-size"):
        cio.read_particles(tmp_path / "s.mrcs", require_pixel_size=True)
    p, messages = _caught(lambda: cio.read_particles(tmp_path / "s.mrcs", pixel_size=0.9, require_pixel_size=True))
    np.testing.assert_allclose(p.pixel_size, 0.9)
    assert messages == []


def test_truncated_and_text_files_still_refused(tmp_path):
    cio.write_stack(tmp_path / "t.mrcs", np.ones((4, 16, 16)), 1.0)
    _patch(tmp_path / "t.mrcs", 208, b"\0\0\0\0")
    with open(tmp_path / "t.mrcs", "r+b") as fh:
        fh.truncate((tmp_path / "t.mrcs").stat().st_size - 100)
    with pytest.raises(FormatError, match=r"t\.mrcs.*truncated"):
        cio.read_stack(tmp_path / "t.mrcs")
    (tmp_path / "notes.mrc").write_text("a text file, not a map\n" * 200)
    for call in (cio.read_map, cio.read_stack):
        with pytest.raises(FormatError, match="notes.mrc"):
            call(tmp_path / "notes.mrc")


def test_particle_images_one_warning_for_many_old_stacks(tmp_path):
    for k in range(3):
        cio.write_stack(tmp_path / f"s{k}.mrcs", np.full((2, 8, 8), float(k)), 1.0)
        _patch(tmp_path / f"s{k}.mrcs", 208, b"\0\0\0\0")
    p = cio.Particles.create([tmp_path / f"s{k}.mrcs" for k in (0, 1, 2)], [0, 1, 0], 1.0, 8, root=tmp_path)
    images, messages = _caught(lambda: cio.read_particle_images(p))
    np.testing.assert_array_equal(images[:, 0, 0], [0, 1, 2])
    assert len(messages) == 1 and "s0.mrcs" in messages[0] and "2 more stacks" in messages[0]


# =========================================================================== #
# STAR pixel sizes
# =========================================================================== #
NO_PIXEL_STAR = "data_particles\n\nloop_\n_rlnImageName #1\n_rlnAngleRot #2\n000001@s.mrcs 10.0\n000002@s.mrcs 20.0\n"


def test_star_without_pixel_size(tmp_path):
    star = tmp_path / "p.star"
    star.write_text(NO_PIXEL_STAR)
    assert cio.read_star(star).pixel_size is None  # readable when not needed (e.g. angles only)
    for read in (cio.read_star, cio.read_particles):
        with pytest.raises(FormatError, match=r"p\.star.*no pixel size.*2 of 2.*--pixel-size"):
            read(star, require_pixel_size=True)
        np.testing.assert_allclose(read(star, pixel_size=1.6, require_pixel_size=True).pixel_size, 1.6)
    optics = tmp_path / "o.star"
    optics.write_text("data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 0.0\n\n"
                      "data_particles\n\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n000001@s.mrcs 1\n")
    with pytest.raises(FormatError, match="--pixel-size"):
        cio.read_star(optics, require_pixel_size=True)  # zero counts as missing
    np.testing.assert_allclose(cio.read_star(optics, pixel_size=1.1).pixel_size, 1.1)


def test_every_star_written_has_a_pixel_size(tmp_path):
    (tmp_path / "p.star").write_text(NO_PIXEL_STAR)
    p = cio.read_star(tmp_path / "p.star")
    with pytest.raises(FormatError, match="cannot write .*out.star.*--pixel-size"):
        cio.write_star(tmp_path / "out.star", p)
    assert not (tmp_path / "out.star").exists()
    p.pixel_size = 2.2
    cio.write_star(tmp_path / "out.star", p)
    assert "_rlnImagePixelSize" in (tmp_path / "out.star").read_text()
    np.testing.assert_allclose(cio.read_star(tmp_path / "out.star", require_pixel_size=True).pixel_size, 2.2)
