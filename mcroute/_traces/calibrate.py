"""Plackett–Luce first-pick weights calibrated to observed inclusion probabilities.

May import: numpy, ``mcroute._routing``.

A trace's marginal law (``Trace(mode="marginal")``, :class:`~mcroute.PopularityTrace`) samples
k distinct experts by successive sampling; its first-pick weights are calibrated here so that
the sampled inclusion probabilities equal the observed ones.
"""

from __future__ import annotations

import numpy as np

from mcroute._routing.inclusion import pl_inclusion_row

__all__ = ["calibrate_pl_weights"]


def calibrate_pl_weights(pi, top_k, *, tol=1e-10, max_iter=2000):
    """First-pick weights whose Plackett–Luce top-k inclusion probabilities equal ``pi``.

    Parameters
    ----------
    pi : array of float (expert,)
        Target inclusion probabilities, each in [0, 1], summing to ``top_k``.
    top_k : int
        k.
    tol : float
        Stop when the largest absolute error of the inclusion probabilities is below this.
    max_iter : int
        Iterations of the multiplicative update ``w <- w · π / π(w)``.

    Returns
    -------
    (ndarray, float)
        Normalised weights (expert,) and the largest absolute error reached.

    Notes
    -----
    Experts with π_e = 0 keep weight 0. An expert chosen by every token (π_e = 1) needs an
    infinite weight; the iteration then approaches it and the reported error says how close.

    Examples
    --------
    >>> import numpy as np
    >>> w, err = calibrate_pl_weights(np.array([0.9, 0.5, 0.3, 0.3]), 2)
    >>> bool(err < 1e-9), bool(w[0] > 0.9 / 2)
    (True, True)
    """
    pi = np.asarray(pi, dtype=float)
    k = int(top_k)
    if k == 1:
        return pi / pi.sum(), 0.0
    target = np.clip(pi, 0.0, 1.0)
    w = target / target.sum()
    best, best_err = w, np.inf
    for _ in range(max_iter):
        cur = pl_inclusion_row(w, k, 0.5)
        err = float(np.max(np.abs(cur - target)))
        if err < best_err:
            best, best_err = w, err
        if err < tol:
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(w > 0, target / cur, 0.0)
        w = w * ratio
        w = w / w.sum()
    return best, best_err
