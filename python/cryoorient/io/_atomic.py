"""Shared internals of :mod:`cryoorient.io`: :class:`FormatError` and atomic writes.

Every writer in ``cryoorient.io`` writes into a temporary file in the
destination's directory and moves it into place only once it is complete, so a
crash or an exception never leaves a partial file under the final name.
Temporary siblings are named ``.NAME.PID.<random>.part`` (``.old`` for a directory
being replaced); those whose process is gone (a killed run) are removed by the
next write of the same name (:func:`remove_stale`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["FormatError", "atomic_path", "check_overwrite", "remove_stale", "require_file", "temp_prefix"]


class FormatError(ValueError):
    """A file exists but is not valid for the format it is read as.

    The message names the file and what is wrong with it.
    """


def _os_error(cls, message: str, path) -> OSError:
    """``cls(message)`` with ``filename`` left unset so ``str()`` is just the message."""
    return cls(message)


def require_file(path, kind: str) -> Path:
    """``path`` as a Path, or FileNotFoundError ("{kind} file not found: ...") / IsADirectoryError naming it."""
    p = Path(os.fspath(path))
    if not p.exists():
        raise _os_error(FileNotFoundError, f"{kind} file not found: '{p}'", p)
    if p.is_dir():
        raise _os_error(IsADirectoryError, f"expected the {kind} file '{p}' but found a directory", p)
    return p


def check_overwrite(path: Path, overwrite: bool) -> None:
    """Raise FileExistsError if ``path`` exists and ``overwrite`` is false."""
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(
            f"refusing to overwrite existing file '{path}'; pass overwrite=True to replace it"
        )
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write to '{path}': it is a directory")


def temp_prefix(dest: Path) -> str:
    """Prefix of ``dest``'s temporary siblings, ``.NAME.PID.``: the PID tells a live writer from a killed one."""
    return f".{dest.name}.{os.getpid()}."


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (assumed so where that cannot be asked)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def remove_stale(dest: PathLike) -> list[Path]:
    """Remove the temporary siblings of ``dest`` left by killed runs and name them in one line on stderr.

    Stale: ``.NAME.PID.<random>.part``/``.old`` whose process is gone, or ``.NAME.<random>.part``/``.old``
    without a PID (written by an older version). Temporaries of a live process are left alone.
    Returns the removed paths.
    """
    dest = Path(os.fspath(dest))
    directory = dest.parent
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.(?:(\d+)\.)?[a-z0-9_]{{8}}\.(?:part|old)")
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    stale = []
    for name in names:
        match = pattern.fullmatch(name)
        if match and not (match.group(1) and _running(int(match.group(1)))):
            stale.append(directory / name)
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    if stale:
        print(f"cryoorient: removed {', '.join(repr(str(p)) for p in stale)}, left by an interrupted run",
              file=sys.stderr)
    return stale


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_path(path: str, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems do not support fsync on directories
        pass
    finally:
        os.close(fd)


def _commit(tmp: str, dest: Path, overwrite: bool) -> None:
    """Move the finished temp file ``tmp`` to ``dest`` atomically."""
    if overwrite:
        os.replace(tmp, dest)
        return
    # No-clobber: hard-link fails atomically if dest appeared meanwhile.
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise FileExistsError(
            f"refusing to overwrite existing file '{dest}' (created while writing); "
            "pass overwrite=True to replace it"
        ) from None
    except OSError:
        # Filesystem without hard links: best effort check-then-replace.
        check_overwrite(dest, overwrite=False)
        os.replace(tmp, dest)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path: PathLike, overwrite: bool = False) -> Iterator[str]:
    """Context manager yielding a temporary path to write instead of ``path``.

    The temp file lives in the same directory (so the final move is an atomic
    rename).  On normal exit it is flushed to disk and moved to ``path``;
    if the body raises (KeyboardInterrupt included), the temp file is deleted and
    ``path`` is untouched. Raises FileExistsError up front when ``path`` exists
    and not ``overwrite``; removes temp files of ``path`` left by killed runs.
    """
    dest = Path(os.fspath(path))
    check_overwrite(dest, overwrite)
    directory = dest.parent if str(dest.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write '{dest}': directory '{directory}' does not exist")
    remove_stale(dest)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(dest), suffix=".part", dir=directory)
    os.close(fd)
    try:
        os.chmod(tmp, _default_mode())
        yield tmp
        _fsync_path(tmp)
        _commit(tmp, dest, overwrite)
        _fsync_path(str(directory), directory=True)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
