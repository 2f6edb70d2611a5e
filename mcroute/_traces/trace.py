"""Routing distributions built from real router logs, and correlated microbatches.

:class:`Trace` and :class:`PopularityTrace`; the correlated-microbatch option
:class:`~mcroute.Overdispersed` lives in :mod:`mcroute._traces.overdispersed`, the calibration of
Plackett–Luce weights in :mod:`mcroute._traces.calibrate`.

May import: numpy, ``mcroute._kernels``, ``mcroute._base``, ``mcroute._routing``, the modules of
``mcroute._traces``.

A :class:`Trace` holds, for every logged token, the k expert ids chosen at each logged MoE layer
(``experts``, int (token, layer, slot)), with optional gate weights, sequence ids, decode steps,
forward-pass (microbatch) ids and a prefill flag. It is a routing distribution: it works
wherever ``Uniform`` or ``Zipf`` do (``sample_counts``, ``simulate``, the cost model), in one of
three modes:

``"token"``
    A microbatch of B tokens is B whole trace tokens drawn uniformly with replacement; a token
    keeps its choices at every layer together. Tokens are independent, so the exact formula
    ``E[active] = Σ_e 1 − (1 − π_e)^B`` holds with the trace's empirical inclusion
    probabilities π_e (the share of tokens whose k choices include e).
``"sequence"``
    Circular block bootstrap within sequences: the microbatch is filled with runs of
    consecutive tokens of one sequence (``block_size`` tokens; 0 = the whole sequence). This
    keeps within-request correlation, which matters when one request contributes several
    tokens to a microbatch (prefill chunks, speculative-decoding verification, a request served
    alone over consecutive steps). A decode microbatch of B *different* requests is modelled
    by ``"token"`` (independent requests) or by :class:`Overdispersed` (requests that share a
    context).
``"marginal"``
    Each layer's empirical popularity only: no joint structure within a token's k-set or
    across layers. Tokens draw k distinct experts by successive sampling (Plackett–Luce)
    with first-pick weights *calibrated* so that the Plackett–Luce inclusion probabilities equal
    the empirical ones (to ``calibration_error``, typically < 1e-9). Using the empirical shares
    as first-pick weights directly would flatten the popularity for k > 1; the calibrated law
    keeps E[active] equal to the token mode's and differs only in the joint law of a k-set.

Layer mapping. Statistics are per simulated layer ``0 .. n_layers - 1``. If ``n_layers``
differs from the number of layers in the trace the caller must choose a ``layer_map``:
``"cycle"`` (simulated layer i uses trace layer i mod L), ``"nearest"`` (the trace layer at the
nearest relative depth, from ``layer_ids`` and ``n_model_layers``) or an explicit list of trace
layer *positions*, one per simulated layer. Without one, a mismatch is an error.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from mcroute import _kernels as K
from mcroute._base.rng import CHUNK_TRIALS
from mcroute._base.validate import MAX_EXPERTS, McrouteError, check_choice, check_int
from mcroute._routing.distributions import Popularity, Routing
from mcroute._routing.tables import weighted_tables
from mcroute._traces.calibrate import calibrate_pl_weights

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import ArrayLike

__all__ = ["Trace", "PopularityTrace", "LayeredPopularity", "calibrate_pl_weights", "MODES"]

#: Resampling modes of :class:`Trace`.
MODES = ("token", "sequence", "marginal")

_NO_RECORD = np.zeros((1, 1, 1, 1), dtype=np.int64)


def _ro(a, dtype=None):
    a = np.array(a, dtype=dtype, copy=True)
    a.setflags(write=False)
    return a


class _TraceLayers:
    """Layer mapping shared by :class:`Trace` and :class:`PopularityTrace`."""

    __slots__ = ()

    def _layer_index(self, n_layers: int) -> np.ndarray:
        n_trace = self._layer_ids.size
        lm = self._layer_map
        if lm is None:
            if n_layers != n_trace:
                raise McrouteError(
                    f"n_layers={n_layers} but the trace has {n_trace} layers (model layers "
                    f"{self._layer_ids.tolist()}); choose a layer_map: 'cycle', 'nearest', or "
                    f"a list of {n_layers} trace-layer positions (e.g. "
                    "trace.with_layer_map('nearest'), or load_trace(..., layer_map=...))"
                )
            return np.arange(n_trace, dtype=np.int64)
        if isinstance(lm, str):
            i = np.arange(n_layers)
            if lm == "cycle":
                return (i % n_trace).astype(np.int64)
            # "nearest": relative depth of simulated layer i vs. of each trace layer.
            depth = (i + 0.5) / n_layers
            tdepth = (self._layer_ids + 0.5) / self._n_model_layers
            return np.argmin(np.abs(depth[:, None] - tdepth[None, :]), axis=1).astype(np.int64)
        idx = np.asarray(lm, dtype=np.int64)
        if idx.size != n_layers:
            raise McrouteError(
                f"layer_map lists {idx.size} trace layers but n_layers={n_layers} was requested"
            )
        return idx

    @staticmethod
    def _check_layer_map(layer_map, n_trace):
        if layer_map is None:
            return None
        if isinstance(layer_map, str):
            if layer_map not in ("cycle", "nearest"):
                raise McrouteError(
                    "layer_map must be None, 'cycle', 'nearest' or a list of trace-layer "
                    f"positions, got {layer_map!r}"
                )
            return layer_map
        try:
            idx = np.asarray(layer_map)
        except (TypeError, ValueError):
            idx = np.asarray([None])
        if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise McrouteError("layer_map as a list must be a non-empty list of integers")
        if idx.min() < 0 or idx.max() >= n_trace:
            raise McrouteError(
                f"layer_map entries must be trace-layer positions in [0, {n_trace - 1}], got "
                f"{idx.tolist()}"
            )
        return tuple(int(x) for x in idx)

    @property
    def layer_ids(self) -> np.ndarray:
        """Model layer index of each trace layer, int64 (trace_layer,)."""
        return self._layer_ids

    @property
    def n_trace_layers(self) -> int:
        """Number of layers in the trace."""
        return int(self._layer_ids.size)

    @property
    def n_model_layers(self) -> int:
        """Layers of the traced model (for ``layer_map='nearest'``)."""
        return self._n_model_layers

    @property
    def layer_map(self) -> str | tuple[int, ...] | None:
        """The layer mapping: None, 'cycle', 'nearest' or a tuple of trace-layer positions."""
        return self._layer_map

    @property
    def model(self) -> str:
        """Name of the traced model (may be empty)."""
        return self._model

    @property
    def source(self) -> str:
        """Where the trace came from (file names, format)."""
        return self._source

    @property
    def notes(self) -> tuple:
        """What the loader guessed, dropped or inferred, as sentences."""
        return self._notes


class Trace(_TraceLayers, Routing):
    """A routing distribution that resamples real router decisions.

    Parameters
    ----------
    experts : array of int (token, layer, slot)
        Expert ids chosen by each token at each trace layer, k distinct ids per (token, layer),
        highest gate weight first where known.
    n_experts : int
        Routed experts per layer, E; ids must lie in 0 .. E-1.
    gate_weights : array of float (token, layer, slot), optional
        The router's weights of those choices.
    sequence, step, batch : array of int (token,), optional
        Sequence (request) id, decode step, and forward pass (microbatch) id of each token;
        -1 where unknown.
    prefill : array of bool (token,), optional
        True for prefill tokens (default: all False, i.e. decode tokens).
    layer_ids : array of int (layer,), optional
        Model layer index of each trace layer (default 0 .. L-1).
    n_model_layers : int, optional
        Layers of the traced model (default ``max(layer_ids) + 1``).
    model, source : str
        Provenance.
    mode : {"token", "sequence", "marginal"}
        Resampling mode (module docstring).
    layer_map : None, "cycle", "nearest" or list of int
        How simulated layers map onto trace layers when their numbers differ.
    block_size : int
        Tokens per run in ``"sequence"`` mode; 0 takes whole sequences.
    notes : sequence of str
        Loader notes (what was guessed or dropped).

    Examples
    --------
    >>> import numpy as np, mcroute as mr
    >>> ex = np.array([[[0, 1]], [[0, 2]], [[3, 0]]])        # 3 tokens, 1 layer, k = 2
    >>> t = mr.Trace(ex, n_experts=4)
    >>> t
    Trace(model='', n_tokens=3, n_layers=1, n_experts=4, top_k=2, mode='token')
    >>> t.inclusion_probabilities().round(3).tolist()
    [[1.0, 0.333, 0.333, 0.333]]
    >>> mr.sample_counts(t, batch_size=5, n_trials=2, rng=0)[:, 0, 0].tolist()
    [5, 5]
    """

    __slots__ = ("_experts", "_gate", "_sequence", "_step", "_batch", "_prefill", "_layer_ids",
                 "_n_model_layers", "_model", "_source", "_mode", "_layer_map", "_block",
                 "_notes", "_counts", "_cache", "_sha")
    kind = "trace"

    def __init__(self, experts: ArrayLike, n_experts: int, *,
                 gate_weights: ArrayLike | None = None, sequence: ArrayLike | None = None,
                 step: ArrayLike | None = None, batch: ArrayLike | None = None,
                 prefill: ArrayLike | None = None, layer_ids: ArrayLike | None = None,
                 n_model_layers: int | None = None, model: str = "", source: str = "",
                 mode: str = "token", layer_map: str | Sequence[int] | None = None,
                 block_size: int = 0, notes: Sequence[str] = ()) -> None:
        ex = np.asarray(experts)
        if ex.ndim != 3 or not np.issubdtype(ex.dtype, np.integer):
            raise McrouteError(
                f"experts must be an integer array (token, layer, slot), got dtype {ex.dtype} "
                f"and shape {ex.shape}"
            )
        n_tok, n_lay, k = ex.shape
        if n_tok < 1 or n_lay < 1 or k < 1:
            raise McrouteError(
                f"experts must have at least one token, layer and slot, got {ex.shape}")
        super().__init__(check_int("n_experts", n_experts, minimum=1, maximum=MAX_EXPERTS), k)
        e = self.n_experts
        if ex.min() < 0 or ex.max() >= e:
            bad = np.argwhere((ex < 0) | (ex >= e))[0]
            raise McrouteError(
                f"experts[{bad[0]}, {bad[1]}, {bad[2]}] = {int(ex[tuple(bad)])}: expert id "
                f"outside 0..{e - 1} (n_experts={e})"
            )
        if k > 1:
            srt = np.sort(ex, axis=2)
            rep = np.argwhere(np.any(srt[:, :, 1:] == srt[:, :, :-1], axis=2))
            if rep.size:
                t, layer = rep[0]
                raise McrouteError(
                    f"experts[{t}, {layer}] = {ex[t, layer].tolist()}: an expert is repeated "
                    f"within one token's k choices ({rep.shape[0]} such (token, layer) entries)"
                )
        sets = object.__setattr__
        sets(self, "_experts", _ro(ex, np.int64))
        gate = None if gate_weights is None else self._per_slot(gate_weights, ex.shape)
        sets(self, "_gate", gate)
        sets(self, "_sequence", self._per_token("sequence", sequence, n_tok, -1))
        sets(self, "_step", self._per_token("step", step, n_tok, -1))
        sets(self, "_batch", self._per_token("batch", batch, n_tok, -1))
        if prefill is None:
            pf = np.zeros(n_tok, dtype=bool)
        else:
            pf = np.asarray(prefill)
            if pf.shape != (n_tok,):
                raise McrouteError(f"prefill must have shape ({n_tok},), got {pf.shape}")
            pf = pf.astype(bool)
        sets(self, "_prefill", _ro(pf))
        if layer_ids is None:
            lid = np.arange(n_lay, dtype=np.int64)
        else:
            lid = np.asarray(layer_ids)
            if lid.shape != (n_lay,) or not np.issubdtype(lid.dtype, np.integer) or lid.min() < 0:
                raise McrouteError(
                    f"layer_ids must be {n_lay} non-negative integers (one per trace layer), "
                    f"got {lid.tolist()}"
                )
            if np.unique(lid).size != n_lay:
                raise McrouteError(f"layer_ids must be distinct, got {lid.tolist()}")
        sets(self, "_layer_ids", _ro(lid, np.int64))
        nml = int(lid.max()) + 1 if n_model_layers is None else check_int(
            "n_model_layers", n_model_layers, minimum=int(lid.max()) + 1)
        sets(self, "_n_model_layers", nml)
        sets(self, "_model", str(model))
        sets(self, "_source", str(source))
        check_choice("mode", mode, MODES)
        sets(self, "_mode", mode)
        sets(self, "_layer_map", self._check_layer_map(layer_map, n_lay))
        sets(self, "_block", check_int("block_size", block_size, minimum=0))
        if mode == "sequence" and np.any(self._sequence < 0):
            raise McrouteError(
                "mode='sequence' needs a sequence id for every token; this trace has "
                f"{int(np.sum(self._sequence < 0))} tokens without one"
            )
        if isinstance(notes, str) or not isinstance(notes, (list, tuple)):
            raise McrouteError(f"notes must be a list of strings, got {type(notes).__name__}")
        sets(self, "_notes", tuple(str(n) for n in notes))
        counts = np.zeros((n_lay, e), dtype=np.int64)
        for layer in range(n_lay):
            counts[layer] = np.bincount(self._experts[:, layer, :].ravel(), minlength=e)
        sets(self, "_counts", _ro(counts))
        sets(self, "_cache", {})
        h = hashlib.sha256(np.ascontiguousarray(self._experts).tobytes())
        h.update(repr(ex.shape).encode())
        sets(self, "_sha", h.hexdigest()[:16])
        self._freeze()

    @staticmethod
    def _per_token(name, v, n_tok, fill):
        if v is None:
            return _ro(np.full(n_tok, fill, dtype=np.int64))
        a = np.asarray(v)
        if a.shape != (n_tok,) or not np.issubdtype(a.dtype, np.integer):
            raise McrouteError(f"{name} must be an integer array of shape ({n_tok},), got "
                               f"dtype {a.dtype} and shape {a.shape}")
        return _ro(a, np.int64)

    @staticmethod
    def _per_slot(v, shape):
        a = np.asarray(v)
        if a.shape != shape or not np.issubdtype(a.dtype, np.floating):
            raise McrouteError(f"gate_weights must be a float array of shape {shape}, got "
                               f"dtype {a.dtype} and shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise McrouteError("gate_weights must be finite")
        return _ro(a)

    # -- data ---------------------------------------------------------------------------------
    @property
    def experts(self) -> np.ndarray:
        """Expert ids, int64 (token, trace_layer, slot); read-only."""
        return self._experts

    @property
    def gate_weights(self) -> np.ndarray | None:
        """Gate weights (token, trace_layer, slot) or None; read-only."""
        return self._gate

    @property
    def sequence(self) -> np.ndarray:
        """Sequence id per token (-1: unknown)."""
        return self._sequence

    @property
    def step(self) -> np.ndarray:
        """Decode step per token (-1: unknown)."""
        return self._step

    @property
    def batch(self) -> np.ndarray:
        """Forward pass (microbatch) id per token (-1: unknown)."""
        return self._batch

    @property
    def prefill(self) -> np.ndarray:
        """True for prefill tokens."""
        return self._prefill

    @property
    def n_tokens(self) -> int:
        """Tokens in the trace."""
        return int(self._experts.shape[0])

    @property
    def mode(self) -> str:
        """Resampling mode."""
        return self._mode

    @property
    def block_size(self) -> int:
        """Run length of ``"sequence"`` mode (0: whole sequences)."""
        return self._block

    def layer_counts(self) -> np.ndarray:
        """Return the selections of each expert, int64 (trace_layer, expert); rows sum to N·k."""
        return self._counts

    def layer_n_tokens(self) -> np.ndarray:
        """Tokens per trace layer, int64 (trace_layer,)."""
        return np.full(self.n_trace_layers, self.n_tokens, dtype=np.int64)

    # -- derived traces -----------------------------------------------------------------------
    def _kwargs(self):
        return dict(gate_weights=self._gate, sequence=self._sequence, step=self._step,
                    batch=self._batch, prefill=self._prefill, layer_ids=self._layer_ids,
                    n_model_layers=self._n_model_layers, model=self._model, source=self._source,
                    mode=self._mode, layer_map=self._layer_map, block_size=self._block,
                    notes=self._notes)

    def _replace(self, experts=None, **kw):
        args = self._kwargs()
        args.update(kw)
        return Trace(self._experts if experts is None else experts, self.n_experts, **args)

    def with_mode(self, mode: str, *, block_size: int | None = None) -> Trace:
        """Return the same trace in another mode (``"token"``, ``"sequence"``, ``"marginal"``)."""
        kw = {"mode": mode}
        if block_size is not None:
            kw["block_size"] = block_size
        return self._replace(**kw)

    def with_layer_map(self, layer_map: str | Sequence[int] | None) -> Trace:
        """Return the same trace with a layer mapping (None, ``"cycle"``, ``"nearest"``, list)."""
        return self._replace(layer_map=layer_map)

    def select(self, tokens: ArrayLike) -> Trace:
        """Return a trace of a subset of tokens (boolean mask or integer indices)."""
        idx = np.arange(self.n_tokens)[np.asarray(tokens)]
        if idx.size == 0:
            raise McrouteError("select: no tokens selected")
        g = None if self._gate is None else self._gate[idx]
        return self._replace(experts=self._experts[idx], gate_weights=g,
                             sequence=self._sequence[idx], step=self._step[idx],
                             batch=self._batch[idx], prefill=self._prefill[idx])

    def decode_only(self) -> Trace:
        """Return the decode tokens only (drops prefill tokens)."""
        return self.select(~self._prefill)

    def select_layers(self, positions: int | ArrayLike) -> Trace:
        """Return a trace of some trace layers (positions 0 .. L-1); the layer map is reset."""
        pos = np.atleast_1d(np.asarray(positions, dtype=np.int64))
        if pos.size == 0 or pos.min() < 0 or pos.max() >= self.n_trace_layers:
            raise McrouteError(
                f"positions must be in [0, {self.n_trace_layers - 1}], got {pos.tolist()}")
        g = None if self._gate is None else self._gate[:, pos]
        return self._replace(experts=self._experts[:, pos], gate_weights=g,
                             layer_ids=self._layer_ids[pos], layer_map=None)

    # -- routing interface --------------------------------------------------------------------
    def params(self) -> dict:
        p = {"model": self._model, "n_tokens": self.n_tokens, "n_layers": self.n_trace_layers,
             "n_experts": self.n_experts, "top_k": self.top_k, "mode": self._mode}
        if self._mode == "sequence":
            p["block_size"] = self._block
        if self._layer_map is not None:
            p["layer_map"] = (self._layer_map if isinstance(self._layer_map, str)
                              else list(self._layer_map))
        return p

    def describe(self) -> dict:
        return {"kind": self.kind, **self.params(), "layer_ids": self._layer_ids.tolist(),
                "source": self._source, "sha256_16": self._sha}

    def _empirical_pi(self) -> np.ndarray:
        return self._counts / float(self.n_tokens)

    def _weights(self, n_layers):
        """Share of selections per expert (layer, expert) for the mapped layers."""
        idx = self._layer_index(n_layers)
        c = self._counts[idx].astype(float)
        return c / c.sum(axis=1, keepdims=True)

    def inclusion_probabilities(
        self, n_layers: int = 1, *, return_error: bool = False
    ) -> np.ndarray | tuple[np.ndarray, float]:
        """Empirical inclusion probabilities (layer, expert): share of tokens choosing e.

        Exact for modes ``"token"`` and ``"sequence"`` (every position of a microbatch is a
        uniformly drawn trace token); in ``"marginal"`` mode the calibrated Plackett–Luce law
        matches them to ``calibration_error`` (returned as the error with ``return_error``).
        """
        n_layers = check_int("n_layers", n_layers, minimum=1)
        idx = self._layer_index(n_layers)
        pi = self._empirical_pi()[idx]
        if not return_error:
            return pi
        err = self.calibration_error() if self._mode == "marginal" else 0.0
        return pi, err

    def pl_weights(self) -> np.ndarray:
        """Calibrated Plackett–Luce first-pick weights (trace_layer, expert) of marginal mode."""
        if "pl" not in self._cache:
            pi = self._empirical_pi()
            rows = [calibrate_pl_weights(pi[layer], self.top_k) for layer in range(pi.shape[0])]
            w = np.array([r[0] for r in rows])
            w.setflags(write=False)
            self._cache["pl"] = (w, max(r[1] for r in rows))
        return self._cache["pl"][0]

    def calibration_error(self) -> float:
        """Largest |π_PL − π_empirical| of the calibrated marginal-mode weights."""
        self.pl_weights()
        return float(self._cache["pl"][1])

    def _sequence_layout(self):
        if "seq" not in self._cache:
            order = np.lexsort((self._step, np.arange(self.n_tokens), self._sequence))
            seq = self._sequence[order]
            uniq, seq_of = np.unique(seq, return_inverse=True)
            start = np.searchsorted(seq, uniq, side="left").astype(np.int64)
            end = np.searchsorted(seq, uniq, side="right").astype(np.int64)
            ex = np.ascontiguousarray(self._experts[order])
            self._cache["seq"] = (ex, seq_of.astype(np.int64), start, end)
        return self._cache["seq"]

    def _draw(self, batch_size, n_trials, n_layers, seeds, record):
        idx = self._layer_index(n_layers)
        k = self.top_k
        assign = (np.zeros((n_trials, n_layers, batch_size, k), dtype=np.int64) if record
                  else _NO_RECORD)
        if self._mode == "marginal":
            w = self.pl_weights()[idx]
            counts = K.counts_weighted(seeds, CHUNK_TRIALS,
                                       K.new_counts(n_trials, w.shape[0], self.n_experts),
                                       weighted_tables(w, k), k, batch_size, record, assign)
        elif self._mode == "sequence":
            ex, seq_of, start, end = self._sequence_layout()
            counts = K.trace_counts_blocks(seeds, CHUNK_TRIALS,
                                           K.new_counts(n_trials, idx.size, self.n_experts),
                                           ex, idx, batch_size, seq_of, start, end,
                                           self._block, record, assign)
        else:
            counts = K.trace_counts_tokens(seeds, CHUNK_TRIALS,
                                           K.new_counts(n_trials, idx.size, self.n_experts),
                                           self._experts, idx, batch_size, -1.0, record,
                                           assign)
        return counts, assign

    def _draw_counts(self, batch_size, n_trials, n_layers, seeds, method):
        return self._draw(batch_size, n_trials, n_layers, seeds, False)[0]

    def _draw_assignments(self, batch_size, n_trials, n_layers, seeds):
        return self._draw(batch_size, n_trials, n_layers, seeds, True)[1]

    def _countspace_exact(self):
        return False

    def __repr__(self):
        extra = f", layer_map={self._layer_map!r}" if self._layer_map is not None else ""
        if self._mode == "sequence":
            extra += f", block_size={self._block}"
        return (f"Trace(model={self._model!r}, n_tokens={self.n_tokens}, "
                f"n_layers={self.n_trace_layers}, n_experts={self.n_experts}, "
                f"top_k={self.top_k}, mode={self._mode!r}{extra})")


class PopularityTrace(_TraceLayers, Popularity):
    """Per-layer expert histograms of a real model: popularity only, no joint structure.

    Loaded from histogram files (e.g. the OLMoE ``expert_counts.csv``), which count how often
    each expert was selected but not which experts a token chose together. It behaves like
    ``"marginal"`` mode of :class:`Trace`: a :class:`~mcroute.Popularity` whose Plackett–Luce
    first-pick weights are calibrated so that the inclusion probabilities equal the observed
    ``count / n_tokens``.

    Parameters
    ----------
    counts : array of int (layer, expert)
        Selections of each expert (each token counted once per chosen expert).
    n_tokens : int or array of int (layer,)
        Tokens behind each layer's histogram.
    top_k : int
        Experts per token, k (``counts`` rows must sum to ``n_tokens · k``).
    layer_ids, n_model_layers, model, source, layer_map, notes
        As for :class:`Trace`.

    Examples
    --------
    >>> import mcroute as mr
    >>> p = mr.PopularityTrace([[50, 30, 20, 0]], n_tokens=50, top_k=2)
    >>> p.inclusion_probabilities().round(6).tolist()
    [[1.0, 0.6, 0.4, 0.0]]
    """

    __slots__ = ("_counts", "_n_tok", "_layer_ids", "_n_model_layers", "_model", "_source",
                 "_layer_map", "_notes", "_cal_err")
    kind = "popularity_trace"

    def __init__(self, counts: ArrayLike, n_tokens: int | ArrayLike, top_k: int, *,
                 layer_ids: ArrayLike | None = None, n_model_layers: int | None = None,
                 model: str = "", source: str = "", layer_map: str | Sequence[int] | None = None,
                 notes: Sequence[str] = ()) -> None:
        c = np.asarray(counts)
        if c.ndim == 1:
            c = c[None, :]
        if c.ndim != 2 or not np.issubdtype(c.dtype, np.integer) or c.size == 0:
            raise McrouteError(f"counts must be a non-empty integer array (layer, expert), got "
                               f"dtype {c.dtype} and shape {c.shape}")
        if c.min() < 0:
            raise McrouteError("counts must be non-negative")
        n_lay, n_exp = c.shape
        try:
            nt = np.broadcast_to(np.asarray(n_tokens), (n_lay,))
        except ValueError:
            raise McrouteError(f"n_tokens must be one positive integer or one per layer "
                               f"({n_lay}), got shape {np.shape(n_tokens)}") from None
        if not np.issubdtype(nt.dtype, np.integer) or nt.min() < 1:
            raise McrouteError(
                f"n_tokens must be positive integers, got {np.asarray(n_tokens).tolist()}")
        k = check_int("top_k", top_k, minimum=1, maximum=n_exp)
        tot = c.sum(axis=1)
        bad = np.nonzero(tot != nt * k)[0]
        if bad.size:
            i = int(bad[0])
            raise McrouteError(f"counts of layer position {i} sum to {int(tot[i])}, expected "
                               f"n_tokens * top_k = {int(nt[i])} * {k}")
        if np.any(c > nt[:, None]):
            raise McrouteError("an expert count exceeds n_tokens (a token selects an expert at "
                               "most once)")
        pi = c / nt[:, None].astype(float)
        rows = [calibrate_pl_weights(pi[i], k) for i in range(n_lay)]
        super().__init__(np.array([r[0] for r in rows]), top_k=k)
        sets = object.__setattr__
        sets(self, "_counts", _ro(c, np.int64))
        sets(self, "_n_tok", _ro(nt, np.int64))
        lid = np.arange(n_lay) if layer_ids is None else np.asarray(layer_ids)
        if lid.shape != (n_lay,) or not np.issubdtype(lid.dtype, np.integer) or lid.min() < 0:
            raise McrouteError(f"layer_ids must be {n_lay} non-negative integers")
        sets(self, "_layer_ids", _ro(lid, np.int64))
        nml = int(lid.max()) + 1 if n_model_layers is None else check_int(
            "n_model_layers", n_model_layers, minimum=int(lid.max()) + 1)
        sets(self, "_n_model_layers", nml)
        sets(self, "_model", str(model))
        sets(self, "_source", str(source))
        sets(self, "_layer_map", self._check_layer_map(layer_map, n_lay))
        if isinstance(notes, str) or not isinstance(notes, (list, tuple)):
            raise McrouteError(f"notes must be a list of strings, got {type(notes).__name__}")
        sets(self, "_notes", tuple(str(n) for n in notes))
        sets(self, "_cal_err", max(r[1] for r in rows))
        self._freeze()

    def layer_counts(self) -> np.ndarray:
        """Return the selections of each expert, int64 (trace_layer, expert)."""
        return self._counts

    def layer_n_tokens(self) -> np.ndarray:
        """Tokens behind each layer's histogram, int64 (trace_layer,)."""
        return self._n_tok

    def calibration_error(self) -> float:
        """Largest |π_PL − π_observed| of the calibrated weights."""
        return float(self._cal_err)

    def _countspace_exact(self):
        # Popularity's version calls _weights(1), which fails for per-layer weights.
        return self.top_k == 1

    def with_layer_map(self, layer_map: str | Sequence[int] | None) -> PopularityTrace:
        """Return the same histograms with a layer mapping."""
        return PopularityTrace(self._counts, self._n_tok, self.top_k, layer_ids=self._layer_ids,
                               n_model_layers=self._n_model_layers, model=self._model,
                               source=self._source, layer_map=layer_map, notes=self._notes)

    def _weights(self, n_layers):
        return self._w[self._layer_index(n_layers)].copy()

    def inclusion_probabilities(
        self, n_layers: int = 1, *, return_error: bool = False
    ) -> np.ndarray | tuple[np.ndarray, float]:
        """Observed inclusion probabilities count / n_tokens (layer, expert)."""
        n_layers = check_int("n_layers", n_layers, minimum=1)
        pi = (self._counts / self._n_tok[:, None].astype(float))[self._layer_index(n_layers)]
        return (pi, self.calibration_error()) if return_error else pi

    def params(self) -> dict:
        p = {"model": self._model, "n_layers": self.n_trace_layers,
             "n_tokens": self._n_tok.tolist(), "n_experts": self.n_experts, "top_k": self.top_k}
        if self._layer_map is not None:
            p["layer_map"] = (self._layer_map if isinstance(self._layer_map, str)
                              else list(self._layer_map))
        return p

    def describe(self) -> dict:
        return {"kind": self.kind, **self.params(), "layer_ids": self._layer_ids.tolist(),
                "source": self._source}

    def __repr__(self):
        extra = f", layer_map={self._layer_map!r}" if self._layer_map is not None else ""
        return (f"PopularityTrace(model={self._model!r}, n_layers={self.n_trace_layers}, "
                f"n_experts={self.n_experts}, top_k={self.top_k}{extra})")


class LayeredPopularity(Popularity):
    """A :class:`~mcroute.Popularity` with per-layer weights that samples with any method.

    (``Popularity._countspace_exact`` evaluates ``_weights(1)``, which per-layer weights
    refuse; this subclass answers from ``top_k`` alone.)
    """

    __slots__ = ()

    def _countspace_exact(self):
        return self.top_k == 1
