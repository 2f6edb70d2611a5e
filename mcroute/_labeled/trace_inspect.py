"""Inspecting a trace: skew, spread and correlation of the routing choices, per layer.

May import: numpy, xarray, the array floor (``mcroute._traces``), ``mcroute._base``, the
modules of ``mcroute._labeled``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from mcroute._labeled.routing_fit import layer_data
from mcroute._traces.trace import PopularityTrace, Trace

__all__ = ["inspect_trace"]




def _cramers_v(a, b, n_a, n_b):
    """Bias-corrected Cramér's V (Bergsma 2013) of two categorical arrays."""
    n = a.size
    if n < 2:
        return np.nan
    table = np.zeros((n_a, n_b))
    np.add.at(table, (a, b), 1.0)
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    r, c = table.shape
    if r < 2 or c < 2:
        return np.nan
    exp = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / n
    phi2 = float(((table - exp) ** 2 / exp).sum() / n)
    phi2c = max(0.0, phi2 - (r - 1) * (c - 1) / (n - 1))
    rc = r - (r - 1) ** 2 / (n - 1)
    cc = c - (c - 1) ** 2 / (n - 1)
    d = min(rc - 1, cc - 1)
    return float(np.sqrt(phi2c / d)) if d > 0 else np.nan


def inspect_trace(trace: Trace | PopularityTrace) -> xr.Dataset:
    """Per-layer summary of a trace: skew, spread and correlation of the choices.

    Returns
    -------
    xarray.Dataset
        Dim ``layer`` (model layer ids). ``n_tokens``; ``hottest_share`` (share of all
        selections taken by the most popular expert; uniform is 1/E); ``entropy`` [nat] of the
        selection shares and ``effective_experts`` = exp(entropy) (E when uniform);
        ``gini`` of the shares (0 uniform); ``layer_correlation``: bias-corrected Cramér's V
        between the first-choice expert at this layer and at the next trace layer (0:
        independent, 1: determined); ``step_overlap``: mean share of a token's k experts also
        chosen by the previous token of the same sequence at this layer, and
        ``step_overlap_chance``: the same for independent tokens, Σ_e π_e² / k. NaN where the
        trace lacks the data (histograms, no sequence ids).

    Examples
    --------
    >>> import numpy as np, mcroute as mr
    >>> ex = np.array([[[0, 1]], [[0, 1]], [[2, 3]], [[2, 3]]])
    >>> ds = mr.inspect_trace(mr.Trace(ex, 4, sequence=[0, 0, 0, 0], step=[0, 1, 2, 3]))
    >>> float(ds["effective_experts"][0]), float(ds["step_overlap"][0])
    (4.0, 0.6666666666666666)
    """
    counts, ntok = layer_data(trace)
    e, k = trace.n_experts, trace.top_k
    n_lay = counts.shape[0]
    share = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(share > 0, share * np.log(share), 0.0).sum(axis=1)
    srt = np.sort(share, axis=1)
    i = np.arange(1, e + 1)
    gini = ((2 * i - e - 1) * srt).sum(axis=1) / (e * srt.sum(axis=1))
    layer_corr = np.full(n_lay, np.nan)
    overlap = np.full(n_lay, np.nan)
    chance = (counts / ntok[:, None].astype(float)) ** 2
    chance = chance.sum(axis=1) / k
    if isinstance(trace, Trace):
        ex = trace.experts
        for layer in range(n_lay - 1):
            layer_corr[layer] = _cramers_v(ex[:, layer, 0], ex[:, layer + 1, 0], e, e)
        seq, step = trace.sequence, trace.step
        known = (seq >= 0) & (step >= 0)
        if np.any(known):
            idx = np.nonzero(known)[0]
            order = idx[np.lexsort((step[idx], seq[idx]))]
            prev, nxt = order[:-1], order[1:]
            pair = (seq[prev] == seq[nxt]) & (step[nxt] == step[prev] + 1)
            prev, nxt = prev[pair], nxt[pair]
            if prev.size:
                for layer in range(n_lay):
                    a = ex[prev, layer, :]
                    b = ex[nxt, layer, :]
                    same = (a[:, :, None] == b[:, None, :]).any(axis=1).sum(axis=1)
                    overlap[layer] = float(same.mean() / k)
    data = {
        "n_tokens": ("layer", ntok, {"units": "tokens", "long_name": "tokens"}),
        "n_experts": ((), e, {"units": "experts", "long_name": "routed experts per layer"}),
        "top_k": ((), k, {"units": "experts", "long_name": "experts per token"}),
        "hottest_share": ("layer", share.max(axis=1),
                          {"units": "1", "long_name": "share of selections of the hottest expert"}),
        "entropy": ("layer", ent, {"units": "nat", "long_name": "entropy of selection shares"}),
        "effective_experts": ("layer", np.exp(ent),
                              {"units": "experts", "long_name": "exp(entropy)"}),
        "gini": ("layer", gini, {"units": "1", "long_name": "Gini coefficient of shares"}),
        "layer_correlation": ("layer", layer_corr, {
            "units": "1", "long_name": "bias-corrected Cramér's V of the first choice with the "
                                       "next trace layer"}),
        "step_overlap": ("layer", overlap, {
            "units": "1", "long_name": "share of k experts repeated from the previous decode "
                                       "step of the same sequence"}),
        "step_overlap_chance": ("layer", chance, {
            "units": "1", "long_name": "step_overlap expected for independent tokens"}),
    }
    coords = {"layer": ("layer", trace.layer_ids, {"units": "1", "long_name": "model layer"})}
    ds = xr.Dataset(data, coords=coords)
    ds.attrs = {"trace": str(trace.describe()), "model": trace.model}
    return ds
