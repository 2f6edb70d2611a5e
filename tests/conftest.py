"""Fixtures shared by several test files."""

import os
import socket
import subprocess
import sys

import pytest


@pytest.fixture
def port_8787_taken():
    """Hold 127.0.0.1:8787, Dask's default dashboard port (if nobody else does already): the
    Dask tests must pass, without a "port in use" warning (an error here), while it is taken."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 8787))
        s.listen(1)
    except OSError:
        pass  # already taken by another process: just as good
    try:
        yield
    finally:
        s.close()


@pytest.fixture
def stdout_on_threads():
    """``run(script) -> [stdout with NUMBA_NUM_THREADS=1, stdout with =2]`` (fresh processes)."""

    def run(script):
        out = []
        for threads in (1, 2):
            env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
            out.append(subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                      capture_output=True, text=True,
                                      timeout=600).stdout.strip())
        return out

    return run
