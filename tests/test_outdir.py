"""--force never deletes a user's data: places never written, the marker, inputs, leftovers of killed runs,
Ctrl-C, absurd sizes (``io.outdir``, the simulate/demo/train commands, ``cli``)."""

import os

import numpy as np
import pytest

from cryoorient.cli import main
from cryoorient.imaging.phantom import default_density
from cryoorient.io import OUTPUT_MARKER, check_output_dir, make_output_dir, output_dir, write_map


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A fresh current directory holding a tiny map, ``mymap.mrc``."""
    monkeypatch.chdir(tmp_path)
    write_map(tmp_path / "mymap.mrc", default_density(box_size=24, voxel_size=5.0, resolution=12.0), 5.0)
    return tmp_path


def simulate(*args):
    return main(["simulate", "mymap.mrc", "-n", "8", "--size", "24", "-q", "--device", "cpu", *args])


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_current_directory_refused_even_with_force(work, capsys):
    before = (work / "mymap.mrc").read_bytes()
    assert simulate("-o", ".", "--force") == 2
    assert "current directory" in one_line(capsys)
    assert sorted(os.listdir(work)) == ["mymap.mrc"] and (work / "mymap.mrc").read_bytes() == before
    (work / "sub").mkdir()
    os.chdir(work / "sub")
    assert main(["simulate", "../mymap.mrc", "-n", "8", "--size", "24", "-q", "-o", "..", "--force"]) == 2
    assert "holds the current directory" in one_line(capsys)
    assert sorted(os.listdir(work)) == ["mymap.mrc", "sub"]


def test_demo_in_current_directory_refused(work, capsys):
    assert main(["demo", "--quick", "-o", ".", "--force", "-q"]) == 2
    assert "current directory" in one_line(capsys)
    assert sorted(os.listdir(work)) == ["mymap.mrc"]


def test_home_and_root_refused(work, monkeypatch):
    monkeypatch.setenv("HOME", str(work / "home"))
    (work / "home").mkdir()
    os.chdir("/")
    for place, reason in ((work / "home", "is the home directory"), (work, "holds the home directory"),
                          ("/", "is the current directory")):
        with pytest.raises(ValueError, match=reason):
            check_output_dir(place, force=True)


def test_output_holding_the_input_refused(work, capsys):
    (work / "data").mkdir()
    os.replace(work / "mymap.mrc", work / "data" / "mymap.mrc")
    (work / "data" / OUTPUT_MARKER).touch()  # even a directory cryoorient wrote
    rc = main(["simulate", "data/mymap.mrc", "-n", "8", "--size", "24", "-q", "-o", "data", "--force"])
    assert rc == 2 and "holds the input 'data/mymap.mrc'" in one_line(capsys)
    assert sorted(os.listdir(work / "data")) == [OUTPUT_MARKER, "mymap.mrc"]
    assert os.listdir(work) == ["data"]


def test_foreign_directory_refused_and_own_one_replaced(work, capsys):
    (work / "mine").mkdir()
    (work / "mine" / "notes.txt").write_text("precious")
    assert simulate("-o", "mine") == 2
    assert "exists; pass --force" in one_line(capsys)
    assert simulate("-o", "mine", "--force") == 2
    assert "not written by cryoorient" in one_line(capsys)
    assert os.listdir(work / "mine") == ["notes.txt"]
    assert simulate("-o", "ds") == 0
    capsys.readouterr()
    assert (work / "ds" / OUTPUT_MARKER).is_file()
    (work / "ds" / "particles.star").write_text("changed")
    assert simulate("-o", "ds", "--force") == 0
    assert (work / "ds" / "particles.star").read_text() != "changed"
    assert sorted(os.listdir(work)) == ["ds", "mine", "mymap.mrc"]
    (work / "empty").mkdir()
    assert simulate("-o", "empty", "--force") == 0  # an empty directory holds nothing to lose
    assert (work / "empty" / "particles.mrcs").is_file()


def test_stale_leftovers_named_and_removed(work, capsys):
    dead, legacy, live = ".ds.99999999.abcdefgh.part", ".ds.k2j4_9xq.old", f".ds.{os.getpid()}.zzzzzzzz.part"
    other = ".ds2.99999999.abcdefgh.part"  # another output's: not ours to remove
    for name in (dead, legacy, live, other):
        (work / name).mkdir()
        (work / name / "particles.mrcs").write_bytes(b"\0" * 1000)
    assert simulate("-o", "ds") == 0
    err = capsys.readouterr().err
    assert dead in err and legacy in err and live not in err and "interrupted run" in err
    assert sorted(os.listdir(work)) == sorted([live, other, "ds", "mymap.mrc"])
    (work / ".m.mrc.99999999.abcdefgh.part").write_bytes(b"\0")  # a file of a killed atomic write
    write_map(work / "m.mrc", np.ones((4, 4, 4), np.float32), 5.0)
    assert ".m.mrc.99999999.abcdefgh.part" in capsys.readouterr().err
    assert not (work / ".m.mrc.99999999.abcdefgh.part").exists()


def test_ctrl_c_leaves_nothing(work, capsys, monkeypatch):
    import cryoorient.io

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cryoorient.io, "write_star", interrupt)  # after the stack is written
    assert simulate("-o", "ds") == 130
    assert one_line(capsys) == "cryoorient simulate: interrupted\n"
    assert os.listdir(work) == ["mymap.mrc"]


def test_absurd_sizes_refused_up_front(work, capsys):
    assert simulate("-o", "ds", "--size", "100000") == 2
    assert "GiB of memory" in one_line(capsys)
    assert simulate("-o", "ds", "-n", "100000000", "--size", "512") == 2
    assert "100,000,000 images" in one_line(capsys)  # 100 TB of disk, or the memory first
    argv = ["train", "--map", "mymap.mrc", "--size", "100000", "-o", "snn.pt", "--device", "cpu", "-q"]
    assert main(argv) == 2
    assert "GiB of memory" in one_line(capsys)
    assert os.listdir(work) == ["mymap.mrc"]


def test_output_dir_builds_atomically_and_make_output_dir(work):
    with pytest.raises(KeyboardInterrupt):
        with output_dir("out") as tmp:
            (tmp / "a").write_text("1")
            raise KeyboardInterrupt
    assert os.listdir(work) == ["mymap.mrc"]
    with output_dir("out") as tmp:
        (tmp / "a").write_text("1")
        assert not (work / "out").exists()
    assert sorted(os.listdir(work / "out")) == [OUTPUT_MARKER, "a"]
    made = make_output_dir("out", force=True)
    assert made == work / "out" and os.listdir(made) == [OUTPUT_MARKER]
    with pytest.raises(FileExistsError, match="not a directory"):
        check_output_dir("mymap.mrc", force=True)
