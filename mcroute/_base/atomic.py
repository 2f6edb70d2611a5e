"""Atomic file output: write to a temporary file beside the target, then rename it into place.

May import: the standard library and ``_validate``. Used by every writer of the package, so that
an interrupted write never leaves a half-written file where a complete one is expected.

What happens to an existing output (also in docs/cli.md):

* It is replaced only once the new file is complete (``os.replace``); a failed or interrupted
  write leaves it untouched.
* Its permission bits are kept (a 0600 file stays 0600). A new file gets ``0666 & ~umask``, as
  a plain ``open()`` would give it. Owner and group are those of the writing user.
* An output that is a symbolic link is written through: the file the link points to is
  replaced and the link itself is kept (a dangling link creates its target). Hard links to the
  old file keep the old content (the new file is a new inode).
* An output that is a folder, a device, a FIFO or a socket is refused.

Temporary files are named ``.<name>.mcroute-tmp.<host>.<pid>.<random><ext>`` in the folder of
the (link-resolved) target. A write killed before its rename (``kill -9``, power loss) leaves one
behind. The next write into the same folder removes it when it is stale, i.e. when it was
written on this host by a process that no longer runs, or when it has not been modified for
:data:`STALE_SECONDS` (one hour; this also covers files from other hosts on a shared file
system). A process looks into a folder at most once per :data:`RESCAN_SECONDS` (a minute), so a
sweep writing thousands of parts lists its folder once, not once per part. Temporary files of a
writer that is still running are never touched.
"""

from __future__ import annotations

import math
import os
import re
import socket
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from mcroute._base.validate import McrouteError

__all__ = ["atomic_path", "TMP_TAG", "STALE_SECONDS", "remove_stale_temporaries"]

#: Marker in the name of every temporary file mcroute writes.
TMP_TAG = ".mcroute-tmp."

#: A temporary file not modified for this long is stale whoever wrote it [s].
STALE_SECONDS = 3600.0

#: A process looks for stale temporaries in a folder at most this often [s].
RESCAN_SECONDS = 60.0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host() -> str:
    """Return the host name, reduced to characters that cannot clash with the separators."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname() or "host")[:64] or "host"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process / not a possible pid
        return False
    except PermissionError:  # it runs, under another user
        return True
    return True


_TMP_NAME = re.compile(r"\.(?P<target>.+)\.mcroute-tmp\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>[0-9]+)"
                       r"\.[a-z0-9_]+(?P<ext>\.[^.]*)?")

#: Folder -> time of its last scan for stale temporaries by :func:`atomic_path` [s].
_SCANNED: dict[str, float] = {}


def _remove_stale(folder, target: str | None, now: float | None) -> list[Path]:
    """Remove stale temporaries in ``folder`` (of ``target`` only, or of any target)."""
    now = time.time() if now is None else now
    host = _host()
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_NAME.fullmatch(entry.name)
        if m is None or (target is not None and m["target"] != target):
            continue
        if (m["ext"] or "") != Path(m["target"]).suffix.lower():
            continue  # not a name atomic_path makes
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        dead = m["host"] == host and not _pid_alive(int(m["pid"]))
        old = now - st.st_mtime > STALE_SECONDS
        if dead or old:
            try:
                os.unlink(entry.path)
            except OSError:
                continue
            removed.append(Path(entry.path))
    return removed


def remove_stale_temporaries(path, *, now: float | None = None) -> list[Path]:
    """Remove the stale temporary files of earlier writes to ``path``; return what was removed.

    A temporary file (``.<name>.mcroute-tmp.<host>.<pid>.<random><ext>`` beside ``path``) is
    stale when its host is this host and its process no longer runs, or when it was last
    modified more than :data:`STALE_SECONDS` ago. Files that cannot be removed are left alone.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    return _remove_stale(folder, path.name, now)


def _clean_folder(folder: Path) -> None:
    """Remove the stale temporaries of every target in ``folder``.

    At most once per :data:`RESCAN_SECONDS` per folder and process: a sweep writes thousands of
    parts into one folder, and listing it for each would cost time quadratic in the parts.
    """
    key = os.path.abspath(folder)
    now = time.time()
    if now - _SCANNED.get(key, -math.inf) < RESCAN_SECONDS:
        return
    _SCANNED[key] = now
    _remove_stale(folder, None, now)


def _resolve_target(path: Path, what: str) -> tuple[Path, int | None]:
    """The file to replace (a symbolic link resolved) and the permission bits to give it."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target, None
    except OSError as exc:
        raise McrouteError(f"cannot write {what} {str(path)!r}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise McrouteError(f"{what} {str(path)!r} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise McrouteError(f"{what} {str(path)!r} is not a regular file (a device, FIFO or "
                           "socket); refusing to replace it")
    return target, stat.S_IMODE(st.st_mode)


@contextmanager
def atomic_path(path, *, allowed=None, what="output"):
    """Yield a temporary path to write; on success rename it to ``path``, else delete it.

    Parameters
    ----------
    path : str or Path
        The file to produce. Its folder must exist. An existing file is replaced only when the
        new one is complete, keeping its permission bits; a symbolic link is written through
        (module docstring).
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
    target, mode = _resolve_target(path, what)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        shown = folder if target == path else f"{folder}' (the target of the link {str(path)!r}"
        raise McrouteError(f"output folder '{shown}' does not exist")
    _clean_folder(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}{TMP_TAG}{_host()}.{os.getpid()}.",
                                   suffix=ext, dir=folder)
    except OSError as exc:
        raise McrouteError(f"cannot write {what} in {str(folder)!r}: {exc.strerror or exc}") \
            from None
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates the file private (0600); give it the mode of the file it replaces,
        # or the one a plain open() would give a new file.
        os.chmod(tmp, (0o666 & ~_umask()) if mode is None else mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
