"""Atomic file output: write to a temporary file beside the target, then rename it into place.

May import: the standard library and ``_validate``. Used by every writer of the package, so that
an interrupted write never leaves a half-written file where a complete one is expected.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ._validate import McrouteError

__all__ = ["atomic_path"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path, *, allowed=None, what="output"):
    """Yield a temporary path to write; on success rename it to ``path``, else delete it.

    Parameters
    ----------
    path : str or Path
        The file to produce. Its folder must exist.
    allowed : sequence of str, optional
        Allowed extensions (lower case, with the dot); others raise ``McrouteError``.
    what : str
        How the file is called in error messages.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if allowed is not None and ext not in allowed:
        names = list(allowed)
        listed = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        raise McrouteError(f"{what} must end in {listed}, got {str(path)!r}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise McrouteError(f"output folder {str(folder)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=ext, dir=folder)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates the file private (0600); give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
