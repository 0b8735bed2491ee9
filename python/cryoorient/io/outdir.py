"""Output directories: which ones a run may write or replace, building them atomically, and room.

Rules (sizes in bytes):

* every directory the package writes as output holds the marker file :data:`OUTPUT_MARKER`;
  ``force`` replaces only such a directory or an empty one, never a directory of the user's;
* never an output, even with ``force``: the current directory or one holding it (``/`` too),
  the home directory or one holding it, a directory holding one of the run's inputs;
* :func:`output_dir` builds ``.NAME.PID.<random>.part`` next to the target and renames it into
  place at the end; leftovers of killed runs are named and removed first (:func:`remove_stale`);
* :func:`require_resources` refuses a run whose output or working memory cannot fit, before it starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from ._atomic import PathLike, remove_stale, temp_prefix

__all__ = ["OUTPUT_MARKER", "check_output_dir", "output_dir", "make_output_dir", "remove_stale",
           "require_resources"]

#: Name of the file marking a directory as written by cryoorient (so ``force`` may replace it).
OUTPUT_MARKER = ".cryoorient"


def check_output_dir(out: PathLike, *, force: bool = False, inputs: Iterable[PathLike] = (),
                     flag: str = "-o") -> Path:
    """``out`` as an absolute path if a run may write it there; writes nothing.

    Raises ValueError for a place never written (see the module docstring; ``inputs``: the run's
    input files or folders), FileExistsError for an existing ``out`` without ``force``, or one that
    is not a directory, or (with ``force``) a non-empty directory without :data:`OUTPUT_MARKER`.
    Messages are one line naming ``out``, the reason and ``flag`` (the option giving ``out``).
    """
    path = Path(os.path.abspath(os.fspath(out)))
    real = path.resolve()
    unsafe = f"refusing to write into '{out}', even with --force"
    for place, what in ((Path.cwd().resolve(), "current directory"), (Path.home().resolve(), "home directory")):
        if place == real or place.is_relative_to(real):
            how = "is" if place == real else "holds"
            raise ValueError(f"{unsafe}: it {how} the {what}; give {flag} a new directory")
    for item in inputs:
        if Path(os.fspath(item)).resolve().is_relative_to(real):
            raise ValueError(f"{unsafe}: it holds the input '{item}'; give {flag} another directory")
    if os.path.lexists(path):
        if not path.is_dir():
            raise FileExistsError(f"'{out}' exists and is not a directory; give {flag} another path")
        if not force:
            raise FileExistsError(f"'{out}' exists; pass --force to replace it")
        if not (path / OUTPUT_MARKER).is_file() and any(path.iterdir()):
            raise FileExistsError(f"'{out}' was not written by cryoorient (no {OUTPUT_MARKER} file in it) and "
                                  f"--force replaces only cryoorient's own output; give {flag} another directory")
    return path


def _mark(directory: Path) -> None:
    from .. import __version__

    (directory / OUTPUT_MARKER).write_text(
        f"written by cryoorient {__version__}; --force may replace this directory\n")


def _move_aside(path: Path) -> None:
    """Rename ``path`` into a ``.old`` sibling, then remove that (a killed removal is a stale ``.old``)."""
    old = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".old", dir=path.parent))
    os.rename(path, old / path.name)
    shutil.rmtree(old, ignore_errors=True)


def _parent(path: Path, out: PathLike) -> None:
    """Create ``path``'s missing parent folders (never removed again)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise FileExistsError(f"cannot write '{out}': '{path.parent}' is not a directory") from None


@contextlib.contextmanager
def output_dir(out: PathLike, *, force: bool = False, inputs: Iterable[PathLike] = (),
               flag: str = "-o") -> Iterator[Path]:
    """Build the output directory ``out`` atomically: yields a new temporary directory next to it
    (holding :data:`OUTPUT_MARKER`) that becomes ``out`` when the block ends; an existing ``out``
    (``force``) is removed only then. If the block raises, KeyboardInterrupt included, the temporary
    directory is removed and ``out`` is untouched. Refusals: :func:`check_output_dir`, before anything
    is written; leftovers of killed runs writing ``out`` are removed first (:func:`remove_stale`).
    """
    path = check_output_dir(out, force=force, inputs=inputs, flag=flag)
    _parent(path, out)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".part", dir=path.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        _mark(tmp)
        yield tmp
        if os.path.lexists(path):
            check_output_dir(out, force=force, flag=flag)  # again: it may have appeared or changed meanwhile
            _move_aside(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_output_dir(out: PathLike, *, force: bool = False, inputs: Iterable[PathLike] = (),
                    flag: str = "-o") -> Path:
    """Create the output directory ``out`` in place, for one written as a run goes (logs, checkpoints).

    Refusals: :func:`check_output_dir`; an existing ``out`` (``force``) is removed first; leftovers of
    killed runs are removed; the new directory holds :data:`OUTPUT_MARKER`. Returns its absolute path.
    """
    path = check_output_dir(out, force=force, inputs=inputs, flag=flag)
    _parent(path, out)
    remove_stale(path)
    if os.path.lexists(path):
        _move_aside(path)
    path.mkdir()
    _mark(path)
    return path


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def _memory() -> int | None:
    """This machine's physical memory in bytes (None where it cannot be asked)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def require_resources(where: PathLike, disk: int = 0, memory: int = 0, what: str = "this run") -> None:
    """Refuse (ValueError, one line) a run needing more ``memory`` bytes than this machine has or more
    ``disk`` bytes than are free on the filesystem of ``where`` (its nearest existing folder).

    ``what`` names the run in the message (e.g. "simulating 10 images of 64×64 px").
    """
    total = _memory() if memory > 0 else None
    if total is not None and memory > total:
        raise ValueError(f"{what} would need at least {_gib(memory)} of memory, but this machine has {_gib(total)}")
    if disk > 0:
        place = Path(os.path.abspath(os.fspath(where)))
        while not place.exists():
            place = place.parent
        free = shutil.disk_usage(place).free
        if disk > free:
            raise ValueError(f"{what} would need at least {_gib(disk)} of disk, but '{place}' has {_gib(free)} free")
