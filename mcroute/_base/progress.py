"""A tiny progress line on stderr, for work longer than a couple of seconds, on a terminal only.

Floor 2 (base). May import: the standard library. Nothing from mcroute.

Long runs show progress on a terminal and stay quiet when piped. A
:class:`Progress` writes nothing until ``delay`` seconds (default 2) have passed, nothing at all
when stderr is not a terminal (pipes, files, pytest's capture), and clears its line when done, so
that the results printed on stdout are never interleaved with it.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["Progress", "progress_callback", "stderr_is_tty", "notice", "kernels_cached",
           "compile_notice", "COMPILE_NOTICE"]

#: Said once per process, on a terminal, before the first kernels compile.
COMPILE_NOTICE = ("compiling kernels (first run only; `mcroute warmup` does it ahead of "
                  "time)...")

#: Seconds of work before a progress line appears.
PROGRESS_DELAY = 2.0
#: Seconds between two redraws of the line.
_REDRAW = 0.25


def stderr_is_tty(stream=None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def notice(message: str, stream=None) -> bool:
    """Print ``message`` on stderr if it is a terminal; return whether it was printed."""
    stream = sys.stderr if stream is None else stream
    if not stderr_is_tty(stream):
        return False
    print(message, file=stream, flush=True)
    return True


class Progress:
    """``progress(fraction_done)``: a one-line progress indicator on stderr (terminal only).

    Parameters
    ----------
    label : str
        What is being done (``"qs deepseek-v3"``).
    stream : file, optional
        Default stderr.
    delay : float
        Seconds before the line first appears (short work stays silent).
    enabled : bool, optional
        Default: whether ``stream`` is a terminal.
    """

    def __init__(self, label: str, *, stream=None, delay: float = PROGRESS_DELAY,
                 enabled: bool | None = None):
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.enabled = stderr_is_tty(self.stream) if enabled is None else bool(enabled)
        self.delay = float(delay)
        self.t0 = time.monotonic()
        self._last = -1.0
        self._width = 0

    def __call__(self, fraction: float) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = now - self.t0
        if elapsed < self.delay or now - self._last < _REDRAW:
            return
        self._last = now
        f = min(max(float(fraction), 0.0), 1.0)
        left = f", about {elapsed * (1 - f) / f:.0f} s left" if f > 0.02 else ""
        line = f"{self.label}: {100 * f:3.0f}% ({elapsed:.0f} s{left})"
        self._width = max(self._width, len(line))
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()

    def close(self) -> None:
        """Clear the line if one was drawn."""
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_callback(progress, label: str):
    """Resolve a ``progress=`` argument of a labeled function.

    ``None``: a :class:`Progress` line when stderr is a terminal (else nothing); ``False``:
    nothing; a callable: itself (called with the fraction done). Returns ``(callback,
    owned)``: ``owned`` is the :class:`Progress` to close at the end, or None.
    """
    if progress is None or progress is True:
        p = Progress(label)
        return (p, p) if p.enabled else (None, None)
    if progress is False:
        return None, None
    return progress, None


def _index_paths(module) -> list[str]:
    """Paths of numba's cache index file of every cached kernel of ``module`` (``cache=True``)."""
    paths = []
    for obj in vars(module).values():
        cache_file = getattr(getattr(obj, "_cache", None), "_cache_file", None)
        path = getattr(cache_file, "_index_path", None)
        if isinstance(path, str):
            paths.append(path)
    return paths


def kernels_cached(module) -> bool:
    """Whether numba's on-disk cache holds compiled code for ``module``'s kernels.

    True when any kernel's cache index file exists where numba looks for it (``__pycache__``
    beside the module, ``NUMBA_CACHE_DIR``, or the user-wide cache of a read-only install);
    False on an empty cache, where the first call of each kernel compiles it.
    """
    return any(os.path.exists(p) for p in _index_paths(module))


_NOTICED = []


def compile_notice(module, stream=None) -> bool:
    """Print :data:`COMPILE_NOTICE` once per process when the kernels are not compiled yet.

    Only if stderr is a terminal and the kernel cache of ``module`` is empty (the labeled
    functions pass ``mcroute._kernels``). Returns whether it was printed.
    """
    if _NOTICED or not stderr_is_tty(stream) or kernels_cached(module):
        return False
    _NOTICED.append(True)
    return notice(COMPILE_NOTICE, stream)
