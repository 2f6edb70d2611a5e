"""Tables of the weighted sampler, built once per call rather than once per block of trials.

May import: numpy, the standard library, ``mcroute._kernels``.

:func:`weighted_tables` is :func:`mcroute._kernels.weighted_tables`; inside a
:func:`reuse_tables` block, tables already built in that block for the same weights (compared
by value: SHA-256 of the weights and log-weights) are reused. Drivers that draw a run in blocks
of trials (``iter_counts``, ``sample_counts(out=)``, ``simulate``, ``decode_throughput``)
open such a block, so a run builds its tables once: at E = 131,072 experts and 4 layers
building them takes about 0.24 s against a few ms to hash the weights. The cache lives only
while the block is open (tables can take hundreds of MB at large E) and is per thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading

import numpy as np

from mcroute import _kernels as K

__all__ = ["weighted_tables", "reuse_tables"]

_LOCAL = threading.local()


@contextlib.contextmanager
def reuse_tables(cache: dict | None = None):
    """Reuse the weighted sampler's tables inside this block (same thread, same weights).

    ``cache`` (a dict the caller keeps) carries the tables from one block to the next, e.g.
    across the blocks of trials of one run; by default they live only while the block is open.
    Inside an enclosing block its cache is used.
    """
    outer = getattr(_LOCAL, "cache", None)
    if outer is None:
        _LOCAL.cache = {} if cache is None else cache
    try:
        yield
    finally:
        if outer is None:
            _LOCAL.cache = None


def _digest(a) -> str:
    if a is None:
        return ""
    a = np.ascontiguousarray(a)
    return f"{a.dtype.str}{a.shape}" + hashlib.sha256(a.tobytes()).hexdigest()


def weighted_tables(weights, top_k, log_weights=None):
    """:func:`mcroute._kernels.weighted_tables`, reused by value inside :func:`reuse_tables`."""
    cache = getattr(_LOCAL, "cache", None)
    if cache is None:
        return K.weighted_tables(weights, top_k, log_weights)
    key = (int(top_k), _digest(weights), _digest(log_weights))
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = K.weighted_tables(weights, top_k, log_weights)
    return hit
