"""Seeds and reproducible random streams.

May import: numpy only.

Convention (SPEC 7): every stochastic public function takes ``rng=None`` and normalises it once
with :func:`resolve_seed`, which turns it into one non-negative 63-bit integer, the *entropy*.
The entropy is written into results as the ``seed`` attribute; passing it back as ``rng``
repeats the run exactly. From the entropy and a *stream key* (a tuple of non-negative ints that
names one scenario, e.g. the index of a batch size) :func:`chunk_seeds` derives one generator
state per fixed-size chunk of trials. Kernels start a fresh generator from each chunk's state, so
the numbers depend on the entropy, the key and the chunk index only, never on the thread count.
"""

from __future__ import annotations

import numpy as np

from mcroute._base.validate import McrouteError

#: Trials per chunk. Fixed, so the split does not depend on the number of threads.
CHUNK_TRIALS = 16

__all__ = ["CHUNK_TRIALS", "resolve_seed", "chunk_seeds", "n_chunks"]


def resolve_seed(rng) -> int:
    """Normalise ``rng`` (None, int, SeedSequence or Generator) to a 63-bit entropy integer.

    ``None`` draws fresh entropy from the OS; an int is used as is; a ``SeedSequence`` or a
    ``Generator`` gives one integer drawn from it (advancing the generator), so that a seeded
    generator still yields a repeatable result and the recorded entropy repeats it.
    """
    if rng is None:
        return int(np.random.default_rng().integers(0, 2**63 - 1))
    if isinstance(rng, bool):
        raise McrouteError(
            f"rng must be None, a non-negative int, a SeedSequence or a Generator, got {rng!r}")
    if isinstance(rng, (int, np.integer)):
        if rng < 0 or rng >= 2**63:
            raise McrouteError(f"rng (seed) must be an integer in [0, 2**63), got {rng}")
        return int(rng)
    if isinstance(rng, np.random.SeedSequence):
        return int(np.random.default_rng(rng).integers(0, 2**63 - 1))
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, 2**63 - 1))
    raise McrouteError(
        "rng must be None, a non-negative int, a SeedSequence or a Generator, got "
        f"{type(rng).__name__}"
    )


def n_chunks(n_trials: int) -> int:
    """Number of trial chunks for ``n_trials`` trials."""
    return -(-n_trials // CHUNK_TRIALS)


def chunk_seeds(entropy: int, n_trials: int, key: tuple[int, ...] = ()) -> np.ndarray:
    """Generator states for the chunks of :data:`CHUNK_TRIALS` trials of stream ``key``.

    Returns uint64 (chunk, 4): one xoshiro256+ state per chunk (see ``_kernels``). The first m
    rows do not depend on ``n_trials`` (``generate_state`` is prefix-stable), so a run with more
    trials extends a shorter one with the same seed.
    """
    ss = np.random.SeedSequence(entropy, spawn_key=tuple(int(k) for k in key))
    m = max(n_chunks(n_trials), 1)
    return ss.generate_state(4 * m, dtype=np.uint64).reshape(m, 4)


def generator(entropy: int, key: tuple[int, ...] = ()) -> np.random.Generator:
    """A NumPy generator for stream ``key`` (for small draws outside the kernels)."""
    ss = np.random.SeedSequence(entropy, spawn_key=tuple(int(k) for k in key))
    return np.random.default_rng(ss)
