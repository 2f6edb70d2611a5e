"""Parameter sweeps: a grid of cells from a TOML spec, run in-process or on Dask, resumable.

May import: everything below the CLI (the labeled functions ``simulate``, ``decode_throughput``
and ``qs_analysis``, the array layer, ``_results``). Dask (``distributed``) is imported only
when asked for (``workers=``, ``scheduler=`` or ``client=``).

A sweep spec (docs/sweeps.md) names a cell *kind* (a labeled function), the *axes* of a grid
(parameter → list of values) and *fixed* settings. A *cell* is one point of the grid: the
kind's function is called once per cell with scalar axis values, its Dataset is reduced to the
summary variables and the cells are assembled into one Dataset with one dim per axis.

Reproducibility: each cell is seeded with :func:`cell_seed` ``(seed, coords)`` — a 63-bit
integer derived from the spec's ``seed`` and a SHA-256 of the cell's axis (name, value) pairs —
and nothing else, so any subset of cells, in any order, on any number of workers, gives the same
numbers as the full run.

Storage: completed cells are written, a task (a group of cells) at a time, as NetCDF part
files in ``<output>.parts/`` (each written to a temporary name and renamed), next to a
``manifest.json`` holding the hash of the spec and each part's SHA-256. ``resume=True`` checks
and skips the cells found there and refuses a different spec. Nothing read from disk is ever
unpickled. At the end the parts are merged into the full grid, the output is written
atomically and only then is the parts folder removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import tomllib
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from mcroute._base.atomic import atomic_path, remove_stale_temporaries
from mcroute._base.validate import McrouteError, check_prob
from mcroute._labeled.export import save_dataset
from mcroute._labeled.results import DEFAULT_QUANTILES, _attr_value, provenance
from mcroute._version import __version__

__all__ = ["CELL_KINDS", "CellKind", "Param", "SweepSpec", "cell_seed", "load_sweep_spec",
           "register_cell_kind", "sweep"]

_REQUIRED = object()  # marker: the parameter must be given (in [fixed] or [axes])

#: Top-level keys of a spec and their meaning (the [axes] and [fixed] tables aside).
TOP_LEVEL_KEYS = {
    "kind": "cell kind: one of CELL_KINDS (required)",
    "seed": "integer in [0, 2**63): entropy of every cell's stream (required)",
    "n_trials": "Monte Carlo trials per cell, >= 2 (default 1000)",
    "ci_prob": "level of the confidence intervals of the means (default 0.95)",
    "quantiles": "levels of the single-draw quantile bands (default [0.05, 0.5, 0.95])",
    "keep_trials": "keep the per-trial variables (dim trial) (default false)",
    "cells_per_task": "cells computed and written together (default: automatic)",
    "description": "free text stored in the result's attrs (default none)",
    "axes": "table: parameter = [values] — one dim per entry, in this order",
    "fixed": "table: parameter = value — the same for every cell",
}

#: Largest grid (number of cells) a sweep may have; larger studies are split into several
#: sweeps. The limit is checked from the axis lengths before any value is looked at.
MAX_CELLS = 100_000
#: Largest spec file read (bytes).
MAX_SPEC_BYTES = 1 << 20

#: Cell attrs that are not carried into the sweep's attrs (the sweep sets its own).
_OWN_ATTRS = {"mcroute_version", "created_at", "n_trials", "ci_prob", "seed"}


# -- parameters ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter of a cell kind.

    Parameters
    ----------
    name : str
        Key in [axes] / [fixed] and keyword of the cell function.
    type : str
        ``"int"``, ``"float"``, ``"str"``, ``"bool"``, ``"tokens"`` (an int or a string like
        ``"128k"``, k = 1024), ``"routing"`` (:data:`ROUTING_SYNTAX`, e.g. ``"zipf:1.2"``,
        ``"uniform+group:8,4"``), ``"batch"`` (an int or ``"max"``), ``"q"`` (a number or a
        :func:`mcroute.parse_q` string), ``"acceptance"`` (a number in [0, 1] or
        ``"beta:A,B"``) or ``"time"`` (seconds > 0, or a string like ``"50ms"``).
    default : object
        Shown in the docs; ``None`` means the cell function's own default applies.
        ``_REQUIRED`` means the key must be given.
    units : str
        Units of the coordinate when the parameter is an axis.
    doc : str
        One line for the docs and error messages.
    minimum : float, optional
        Smallest allowed value (int and float types).
    maximum : float, optional
        Largest allowed value (float types).
    choices : tuple of str, optional
        Allowed values (str type).
    vector : bool
        A list is allowed in [fixed]: the cell function then returns that dim itself.
    """

    name: str
    type: str
    default: object = None
    units: str = "1"
    doc: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None
    vector: bool = False

    @property
    def required(self) -> bool:
        """Whether the spec must give this parameter."""
        return self.default is _REQUIRED

    def normalize(self, value, where: str):
        """Validate one value and return its canonical form (used as coordinate and key)."""
        t = self.type
        bad = f"{where}: {self.name} must be "
        if t in ("int", "tokens", "batch") and isinstance(value, int) and not isinstance(
                value, bool):
            lo = 1 if self.minimum is None else self.minimum
            if value < lo:
                raise McrouteError(f"{bad}an integer >= {lo:g}, got {value}")
            return int(value)
        if t == "int":
            raise McrouteError(f"{bad}an integer, got {value!r}")
        if t == "tokens":
            from mcroute._labeled.throughput import parse_tokens

            if isinstance(value, str):
                try:
                    return parse_tokens(self.name, value)
                except McrouteError as exc:
                    raise McrouteError(f"{where}: {exc}") from None
            raise McrouteError(f"{bad}a positive integer or a string like '128k', got {value!r}")
        if t == "batch":
            if isinstance(value, str) and value.strip().lower() == "max":
                return "max"
            raise McrouteError(f"{bad}a positive integer or 'max', got {value!r}")
        if t == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise McrouteError(f"{bad}a number, got {value!r}")
            x = float(value)
            if not math.isfinite(x):
                raise McrouteError(f"{bad}finite, got {value!r}")
            if self.minimum is not None and x < self.minimum:
                raise McrouteError(f"{bad}>= {self.minimum:g}, got {value!r}")
            if self.maximum is not None and x > self.maximum:
                raise McrouteError(f"{bad}<= {self.maximum:g}, got {value!r}")
            return x
        if t == "bool":
            if not isinstance(value, bool):
                raise McrouteError(f"{bad}true or false, got {value!r}")
            return value
        if t == "str":
            if not isinstance(value, str):
                raise McrouteError(f"{bad}a string, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise McrouteError(f"{bad}one of {list(self.choices)}, got {value!r}")
            return value
        if t == "routing":
            return _normalize_routing(value, f"{where}: {self.name}")
        if t == "acceptance":
            from mcroute._cost.calibrated import parse_acceptance

            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                try:
                    parse_acceptance(value)
                except McrouteError:
                    pass
                else:
                    return value.strip().lower() if isinstance(value, str) else float(value)
            raise McrouteError(f"{bad}a number in [0, 1] or 'beta:A,B' (A, B > 0), "
                               f"got {value!r}")
        if t == "time":
            from mcroute._labeled.throughput import parse_tpot

            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                try:
                    return parse_tpot(value)
                except McrouteError:
                    pass
            raise McrouteError(f"{bad}a time in (0, 3600) seconds: a number or a string like "
                               f"'50ms', got {value!r}")
        if t == "q":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                x = float(value)
                if not math.isfinite(x) or x <= 0:
                    raise McrouteError(f"{bad}a finite number > 0 or a q string, got {value!r}")
                return x
            if isinstance(value, str):
                from mcroute._quality.quality import parse_q

                try:
                    parse_q(value, name=self.name)
                except McrouteError as exc:
                    raise McrouteError(f"{where}: {exc}") from None
                return value.strip()
            raise McrouteError(f"{bad}a number > 0 or a q string such as 'lognormal:4,0.3', "
                               f"got {value!r}")
        raise AssertionError(f"unknown parameter type {t!r}")  # pragma: no cover


#: The routing string format, shared by sweep specs and the CLI's ``--routing``.
ROUTING_SYNTAX = ("BASE[+correlated:SIGMA][+group:NG,TG], BASE one of uniform, zipf:ALPHA, "
                  "lognormal:SIGMA")
_BASES = {"uniform": None, "zipf": "ALPHA", "lognormal": "SIGMA"}


def _routing_number(text: str, what: str, where: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not math.isfinite(x) or x < 0:
        raise McrouteError(f"{where}: {what} must be a finite number >= 0, got {text.strip()!r}")
    return x


def _routing_int(text: str, what: str, where: str) -> int:
    t = text.strip()
    if not t.isdigit() or len(t) > 20 or int(t) < 1:
        raise McrouteError(f"{where}: {what} must be an integer >= 1, got {t!r}")
    return int(t)


def normalize_routing(value, where: str = "routing") -> str:
    """Validate a routing string and return its canonical spelling.

    The format (:data:`ROUTING_SYNTAX`): a base law ``uniform``, ``zipf:ALPHA`` or
    ``lognormal:SIGMA``, optionally followed by ``+correlated:SIGMA`` (correlated microbatches,
    :class:`mcroute.Correlated`) and ``+group:NG,TG`` (group-limited routing over NG groups, TG
    of them per token, :class:`mcroute.GroupLimited`), each at most once and in any order. The
    canonical form is lower case, numbers as Python prints them, ``correlated`` before
    ``group`` (the order in which they are applied). E-dependent checks (NG dividing E, ...)
    happen when the routing is built (:func:`routing_from_string`).

    Examples
    --------
    >>> normalize_routing("Zipf:1.20")
    'zipf:1.2'
    >>> normalize_routing("uniform + group:8,4 + correlated:0.20")
    'uniform+correlated:0.2+group:8,4'
    >>> normalize_routing("zipf")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mcroute._base.validate.McrouteError: routing must be BASE...; got 'zipf' (zipf needs zipf:ALPHA)
    """
    if not isinstance(value, str):
        raise McrouteError(f"{where} must be a string {ROUTING_SYNTAX}; got {value!r}")
    if len(value) > 200:
        raise McrouteError(f"{where} must be a short string ({ROUTING_SYNTAX}); got "
                           f"{len(value)} characters")
    parts = [part.strip() for part in value.split("+")]
    bad = f"{where} must be {ROUTING_SYNTAX}; got {value!r}"
    kind, sep, arg = parts[0].partition(":")
    kind = kind.strip().lower()
    if kind not in _BASES:
        raise McrouteError(bad)
    if _BASES[kind] is None:
        if sep:
            raise McrouteError(f"{bad} (uniform takes no parameter)")
        base = "uniform"
    else:
        if not arg.strip():
            raise McrouteError(f"{bad} ({kind} needs {kind}:{_BASES[kind]})")
        x = _routing_number(arg, f"{kind} {_BASES[kind].lower()} ({kind}:{_BASES[kind]})",
                            where)
        base = f"{kind}:{x!r}"
    mods = {}
    for part in parts[1:]:
        name, sep, arg = part.partition(":")
        name = name.strip().lower()
        if name not in ("correlated", "group") or not sep or not arg.strip():
            raise McrouteError(f"{bad} (after '+': correlated:SIGMA or group:NG,TG, got "
                               f"{part!r})")
        if name in mods:
            raise McrouteError(f"{bad} ({name} given twice)")
        if name == "correlated":
            x = _routing_number(arg, "correlated sigma (correlated:SIGMA)", where)
            mods[name] = f"correlated:{x!r}"
        else:
            ng, comma, tg = arg.partition(",")
            if not comma:
                raise McrouteError(f"{bad} (group needs group:NG,TG, e.g. group:8,4)")
            ngi = _routing_int(ng, "group NG (group:NG,TG)", where)
            tgi = _routing_int(tg, "group TG (group:NG,TG)", where)
            if tgi > ngi:
                raise McrouteError(f"{where}: group:NG,TG needs TG <= NG, got {ngi},{tgi}")
            mods[name] = f"group:{ngi},{tgi}"
    return "+".join([base, *(mods[m] for m in ("correlated", "group") if m in mods)])


def routing_from_string(text: str, n_experts: int, top_k: int, where: str = "routing"):
    """The routing named by ``text`` (:func:`normalize_routing`) for E experts and top-k.

    Errors of the routing classes (e.g. NG not dividing E) name ``where`` and the string.

    Examples
    --------
    >>> r = routing_from_string("zipf:1.2+correlated:0.2+group:8,4", 256, 8)
    >>> type(r).__name__, type(r.base).__name__, r.base.sigma, r.n_groups, r.topk_groups
    ('GroupLimited', 'Correlated', 0.2, 8, 4)
    """
    from mcroute._routing.distributions import Correlated, GroupLimited, LogNormal, Uniform, Zipf

    canon = normalize_routing(text, where)
    parts = canon.split("+")
    try:
        kind, _, arg = parts[0].partition(":")
        if kind == "uniform":
            routing = Uniform(n_experts, top_k)
        else:
            routing = (Zipf if kind == "zipf" else LogNormal)(n_experts, top_k, float(arg))
        for part in parts[1:]:
            name, _, arg = part.partition(":")
            if name == "correlated":
                routing = Correlated(routing, float(arg))
            else:
                ng, _, tg = arg.partition(",")
                routing = GroupLimited(routing, int(ng), int(tg))
    except McrouteError as exc:
        raise McrouteError(f"{where} {canon!r} (E={n_experts}, k={top_k}): {exc}") from None
    return routing


def _normalize_routing(value, where: str) -> str:
    return normalize_routing(value, where)


def _routing_object(text: str, n_experts: int, top_k: int):
    return routing_from_string(text, n_experts, top_k)


@dataclasses.dataclass(frozen=True)
class CellKind:
    """A kind of cell: its parameters and the function that computes one cell.

    Parameters
    ----------
    name : str
        Value of ``kind`` in the spec.
    params : tuple of Param
        Every parameter the spec may give ([axes] or [fixed]); any other key is an error.
    run : callable
        ``run(params, *, rng, n_trials, ci_prob, quantiles) -> xarray.Dataset``: ``params``
        holds the given parameters only (canonical values), ``rng`` the cell's integer seed.
    prepare : callable, optional
        ``prepare(params)``: cheap validation of one cell (builds its objects), called for
        every cell before any work starts; raises ``McrouteError``.
    doc : str
        One line for the docs.
    """

    name: str
    params: tuple
    run: Callable
    prepare: Callable | None = None
    doc: str = ""

    def param(self, name: str) -> Param | None:
        """The parameter called ``name``, or None."""
        for p in self.params:
            if p.name == name:
                return p
        return None


#: Registered cell kinds, by name. Add one with :func:`register_cell_kind`.
CELL_KINDS: dict[str, CellKind] = {}


def register_cell_kind(kind: CellKind) -> CellKind:
    """Register (or replace) a cell kind; return it.

    Dask workers look kinds up by name, so a kind registered at run time must also be
    registered in the workers (register it in a module they import).
    """
    CELL_KINDS[kind.name] = kind
    return kind


# -- the built-in kinds ----------------------------------------------------------------------
def _run_simulate(p, *, rng, n_trials, ci_prob, quantiles):
    from mcroute._labeled.simulate import simulate

    routing = _routing_object(p.get("routing", "uniform"), p["n_experts"], p["top_k"])
    bs = list(p["batch_size"]) if isinstance(p["batch_size"], tuple) else p["batch_size"]
    kw = {k: p[k] for k in ("n_layers", "n_devices", "capacity_factor", "method") if k in p}
    return simulate(routing, bs, n_trials, rng=rng, ci_prob=ci_prob, quantiles=quantiles, **kw)


def _prepare_simulate(p):
    if p["top_k"] > p["n_experts"]:
        raise McrouteError(f"top_k ({p['top_k']}) must be <= n_experts ({p['n_experts']})")
    routing = _routing_object(p.get("routing", "uniform"), p["n_experts"], p["top_k"])
    from mcroute._routing.sampling import _resolve_method

    batches = p["batch_size"] if isinstance(p["batch_size"], tuple) else (p["batch_size"],)
    for b in batches:  # e.g. method = "counts" with a weighted top-k routing
        _resolve_method(routing, b, p.get("method", "auto"))


_SIMULATE_PARAMS = (
    Param("routing", "routing", "uniform", "1",
          "routing distribution: " + ROUTING_SYNTAX),
    Param("n_experts", "int", _REQUIRED, "experts", "routed experts per layer E"),
    Param("top_k", "int", _REQUIRED, "experts", "experts per token k"),
    Param("batch_size", "int", _REQUIRED, "tokens", "tokens per decode microbatch B",
          vector=True),
    Param("n_layers", "int", 1, "layers", "MoE layers per microbatch"),
    Param("n_devices", "int", 1, "devices", "devices for expert parallelism"),
    Param("capacity_factor", "float", 1.0, "1", "expert capacity factor (overflow_fraction)",
          minimum=0.0),
    Param("method", "str", "auto", "1", "sampling method",
          choices=("auto", "assignment", "counts")),
)

#: Deployment options shared by the throughput and qs kinds (see mcroute.Deployment).
_DEPLOYMENT_PARAMS = (
    Param("weight_dtype", "str", "bf16", "1", "weight storage dtype"),
    Param("kv_dtype", "str", "bf16", "1", "KV cache dtype"),
    Param("compute_dtype", "str", None, "1",
          "dtype whose peak FLOP/s applies (default: weight dtype if listed, else bf16)"),
    Param("activation_dtype", "str", None, "1",
          "activation dtype of the all-to-all dispatch (default: fp8 under calibrated kernels "
          "with 8-bit or narrower weights, else bf16)"),
    Param("hbm_fraction", "float", 0.9, "1", "usable share of HBM", minimum=0.0, maximum=1.0),
    Param("bandwidth_efficiency", "float", 1.0, "1", "achievable share of peak HBM bandwidth",
          minimum=0.0, maximum=1.0),
    Param("flops_efficiency", "float", 1.0, "1", "achievable share of peak FLOP/s",
          minimum=0.0, maximum=1.0),
    Param("attention_parallel", "str", "tensor", "1", "attention parallelism",
          choices=("tensor", "data")),
    Param("expert_parallel", "int", None, "GPUs", "expert-parallel degree (default: n_gpus)"),
    Param("max_batch", "int", None, "sequences", "cap on the batch size (default: none)"),
    Param("encoder_context", "tokens", None, "tokens",
          "encoder tokens of encoder-decoder models (default: the context)"),
    Param("charge_all_to_all", "bool", None, "1",
          "older spelling of all_to_all: false is 'off', true 'overlap' (or 'none' with "
          "overlap_all_to_all = false)"),
    Param("overlap_all_to_all", "bool", None, "1",
          "older spelling of all_to_all, with charge_all_to_all = true"),
    Param("interconnect_efficiency", "float", 1.0, "1",
          "achievable share of interconnect bandwidth", minimum=0.0, maximum=1.0),
    Param("enforce_max_context", "bool", False, "1",
          "treat contexts above the model's max_context as infeasible"),
    Param("kernels", "str", "calibrated", "1",
          "time model: calibrated kernel efficiencies, or the roofline",
          choices=("calibrated", "roofline")),
    Param("kernel_card", "str", None, "1",
          "kernel-efficiency card name or path (default: the card listing the hardware, "
          "else generic)"),
    Param("calibration_uncertainty", "bool", True, "1",
          "draw the kernel parameters per trial from their fitted uncertainty"),
    Param("all_to_all", "str", None, "1",
          "expert dispatch + combine (default: none under calibrated kernels, off under "
          "roofline)", choices=("off", "none", "overlap", "two-batch")),
    Param("memory_layout", "str", None, "1",
          "engine or ideal memory layout (default: engine under calibrated kernels)",
          choices=("engine", "ideal")),
    Param("replicate_dense", "bool", None, "1",
          "under data-parallel attention, keep dense layers whole on every GPU"),
    Param("redundant_experts", "int", 0, "experts",
          "extra expert slots holding replicas of the hottest experts (EPLB-style)",
          minimum=0),
    Param("attention_compute_dtype", "str", None, "1",
          "dtype whose peak FLOP/s applies to the attention core (default: bf16 under "
          "calibrated kernels)"),
    Param("mtp_depth", "int", 0, "tokens", "draft tokens per step (MTP / speculative decoding)",
          minimum=0),
    Param("mtp_acceptance", "acceptance", None, "1",
          "acceptance rate of a draft token: a number in [0, 1] or 'beta:A,B' (required with "
          "mtp_depth > 0)"),
)
_DEPLOYMENT_KEYS = tuple(p.name for p in _DEPLOYMENT_PARAMS)


def _deployment(p):
    from mcroute._cost.deployment import Deployment

    opts = {k: p[k] for k in _DEPLOYMENT_KEYS if k in p}
    return Deployment(p["model"], p["hardware"], p["n_gpus"], **opts)


def _model_routing(text, model):
    if not model.is_moe:
        if text != "uniform":
            raise McrouteError(f"routing {text!r}: model {model.name!r} is dense (no routed "
                               "experts); leave routing at 'uniform'")
        return None
    return _routing_object(text, model.n_experts, model.top_k)


def _context(p):
    return list(p["context"]) if isinstance(p["context"], tuple) else p["context"]


def _run_throughput(p, *, rng, n_trials, ci_prob, quantiles):
    from mcroute._labeled.throughput import decode_throughput

    dep = _deployment(p)
    routing = _model_routing(p.get("routing", "uniform"), dep.model)
    batch = p.get("batch_size", "max")
    batch = list(batch) if isinstance(batch, tuple) else batch
    kw = _batch_policy(p)
    if "method" in p:
        kw["method"] = p["method"]
    return decode_throughput(dep, _context(p), batch, routing, n_trials, rng=rng,
                             ci_prob=ci_prob, quantiles=quantiles, **kw)


def _batch_policy(p) -> dict:
    """``batch_per_gpu`` / ``tpot`` of a throughput cell, refused beside another policy."""
    given = [k for k in ("batch_size", "batch_per_gpu", "tpot") if k in p]
    if len(given) > 1:
        raise McrouteError(f"give one of batch_size, batch_per_gpu and tpot, got {given}")
    kw = {}
    if "batch_per_gpu" in p:
        b = p["batch_per_gpu"]
        kw["batch_per_gpu"] = list(b) if isinstance(b, tuple) else b
    if "tpot" in p:
        kw["tpot"] = p["tpot"]
    return kw


def _prepare_throughput(p):
    dep = _deployment(p)
    _model_routing(p.get("routing", "uniform"), dep.model)
    _batch_policy(p)


_THROUGHPUT_PARAMS = (
    Param("model", "str", _REQUIRED, "1", "model card name or path"),
    Param("hardware", "str", _REQUIRED, "1", "hardware card name or path"),
    Param("n_gpus", "int", _REQUIRED, "GPUs", "GPUs serving one replica"),
    Param("context", "tokens", _REQUIRED, "tokens", "context length L (k = 1024)", vector=True),
    Param("batch_size", "batch", "max", "sequences",
          "sequences per decode batch, or 'max' (the admissible batch)", vector=True),
    Param("batch_per_gpu", "int", None, "sequences",
          "sequences per GPU instead of batch_size (batch_size = batch_per_gpu x n_gpus)",
          vector=True),
    Param("tpot", "time", None, "s",
          "time-per-output-token target: the largest batch meeting it (instead of batch_size)"),
    Param("routing", "routing", "uniform", "1",
          "routing of the MoE layers (E and k from the model card): " + ROUTING_SYNTAX),
    Param("method", "str", "auto", "1", "sampling method",
          choices=("auto", "assignment", "counts")),
    *_DEPLOYMENT_PARAMS,
)


def _qs_function():
    try:
        from mcroute._labeled.qs import qs_analysis
    except ImportError:  # pragma: no cover - present in this version
        raise McrouteError("qs_analysis not available in this version of mcroute") from None
    return qs_analysis


_QS_OWN = ("dense_style", "dense_n_gpus", "n_q_samples", "method", "dense_model")


def _run_qs(p, *, rng, n_trials, ci_prob, quantiles):
    from mcroute._cards.cards import load_model

    qs_analysis = _qs_function()
    model = load_model(p["model"])
    routing = _model_routing(p.get("routing", "uniform"), model)
    q = p.get("q")
    q = list(q) if isinstance(q, tuple) else q
    kw = {k: p[k] for k in (*_QS_OWN, *_DEPLOYMENT_KEYS) if k in p}
    return qs_analysis(model, p["hardware"], p["n_gpus"], q, _context(p), routing,
                       n_trials=n_trials, rng=rng, ci_prob=ci_prob, quantiles=quantiles, **kw)


def _prepare_qs(p):
    from mcroute._cards.cards import load_model

    _qs_function()
    model = load_model(p["model"])
    if not model.is_moe:
        raise McrouteError(f"model {model.name!r} is dense; the qs kind needs a "
                           "Mixture-of-Experts model")
    if "q" not in p and "dense_model" not in p:
        raise McrouteError("q is required unless dense_model is given")
    _deployment(p)
    _model_routing(p.get("routing", "uniform"), model)


_QS_PARAMS = (
    Param("model", "str", _REQUIRED, "1", "Mixture-of-Experts model card name or path"),
    Param("hardware", "str", _REQUIRED, "1", "hardware card name or path"),
    Param("n_gpus", "int", _REQUIRED, "GPUs", "GPUs serving the MoE (and the twin)"),
    Param("q", "q", None, "1",
          "quality-equivalence factor: a number or a q string (required unless dense_model)",
          vector=True),
    Param("context", "tokens", _REQUIRED, "tokens",
          "context length(s) L; give a list in [fixed] to get the crossover context",
          vector=True),
    Param("routing", "routing", "uniform", "1", "routing of the MoE layers: " + ROUTING_SYNTAX),
    Param("dense_style", "str", "widen", "1", "how the dense twin is built",
          choices=("widen", "llama")),
    Param("dense_n_gpus", "int", None, "GPUs", "GPUs of the twin (default: n_gpus)"),
    Param("n_q_samples", "int", 256, "1", "draws of an uncertain q"),
    Param("method", "str", "auto", "1", "sampling method",
          choices=("auto", "assignment", "counts")),
    Param("dense_model", "str", None, "1", "compare with this dense card instead of a twin"),
    *_DEPLOYMENT_PARAMS,
)

register_cell_kind(CellKind("simulate", _SIMULATE_PARAMS, _run_simulate, _prepare_simulate,
                            "mcroute.simulate: routing fragmentation and load statistics"))
register_cell_kind(CellKind("throughput", _THROUGHPUT_PARAMS, _run_throughput,
                            _prepare_throughput,
                            "mcroute.decode_throughput of a Deployment"))
register_cell_kind(CellKind("qs", _QS_PARAMS, _run_qs, _prepare_qs,
                            "mcroute.qs_analysis: MoE vs its quality-matched dense twin"))


# -- the spec ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: kind, grid axes, fixed settings and Monte Carlo settings.

    Build it with :func:`load_sweep_spec`. Values are canonical (context ``"128k"`` is
    131072, routing ``"zipf:1.20"`` is ``"zipf:1.2"``), so they name the cells' streams.
    """

    kind: str
    seed: int
    axes: tuple  # ((name, (values...)), ...) in the spec's order
    fixed: tuple  # ((name, value), ...) sorted by name; vector values are tuples
    n_trials: int = 1000
    ci_prob: float = 0.95
    quantiles: tuple = DEFAULT_QUANTILES
    keep_trials: bool = False
    cells_per_task: int | None = None
    description: str = ""
    source: str = "<spec>"

    @property
    def axis_names(self) -> tuple:
        """Names of the swept axes, in order (the leading dims of the result)."""
        return tuple(n for n, _ in self.axes)

    @property
    def shape(self) -> tuple:
        """Number of values of each axis."""
        return tuple(len(v) for _, v in self.axes)

    @property
    def n_cells(self) -> int:
        """Number of cells (product of the axis lengths; 1 without axes)."""
        return math.prod(self.shape)

    def cell_coords(self, index: int) -> dict:
        """Axis values of cell ``index`` (C order over the axes)."""
        if not self.axes:
            return {}
        idx = np.unravel_index(index, self.shape)
        return {n: v[i] for (n, v), i in zip(self.axes, idx, strict=True)}

    def cell_params(self, index: int) -> dict:
        """Every parameter given for cell ``index``: fixed settings and its axis values."""
        return {**dict(self.fixed), **self.cell_coords(index)}

    def to_dict(self) -> dict:
        """The spec as plain data (what the spec hash covers, plus cells_per_task etc.)."""
        return {
            "kind": self.kind, "seed": self.seed, "n_trials": self.n_trials,
            "ci_prob": self.ci_prob, "quantiles": list(self.quantiles),
            "keep_trials": self.keep_trials,
            "axes": [[n, list(v)] for n, v in self.axes],  # a list: the order is the layout
            "fixed": {n: list(v) if isinstance(v, tuple) else v for n, v in self.fixed},
        }

    def spec_hash(self) -> str:
        """SHA-256 of everything that changes the numbers (and the mcroute version)."""
        blob = json.dumps({**self.to_dict(), "mcroute_version": __version__}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def with_trials(self, n_trials: int) -> SweepSpec:
        """The same spec with another number of trials."""
        n = _check_trials(n_trials, "n_trials")
        return dataclasses.replace(self, n_trials=n)


def _check_n_cells(n: int, where: str) -> None:
    if n > MAX_CELLS:
        raise McrouteError(f"{where}: the grid has {n:,} cells (the product of the axis "
                           f"lengths), more than the {MAX_CELLS:,} a sweep may have; split it "
                           "into several sweeps")


def _check_trials(value, where) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
        raise McrouteError(f"{where} must be an integer >= 2, got {value!r}")
    return int(value)


def load_sweep_spec(source) -> SweepSpec:
    """Read and validate a sweep spec (a TOML file, or a mapping with the same keys).

    Parameters
    ----------
    source : str, os.PathLike or Mapping
        Path of a TOML file, or its content as a dict. The format is in docs/sweeps.md:
        top-level ``kind``, ``seed``, optional ``n_trials``, ``ci_prob``, ``quantiles``,
        ``keep_trials``, ``cells_per_task``, ``description``, and the tables ``[axes]``
        (parameter = list of values: one dim each) and ``[fixed]`` (parameter = value).

    Returns
    -------
    SweepSpec

    Raises
    ------
    McrouteError
        Naming the file and the key for malformed TOML, an unknown key, a missing required
        parameter, a parameter given twice, an empty or repeated axis, or a bad value.

    Examples
    --------
    >>> import mcroute as mr
    >>> spec = mr.load_sweep_spec({"kind": "simulate", "seed": 1, "n_trials": 64,
    ...     "axes": {"routing": ["uniform", "zipf:1.20"], "batch_size": [8, 64]},
    ...     "fixed": {"n_experts": 64, "top_k": 4}})
    >>> spec.shape, spec.n_cells, spec.cell_params(1)["routing"]
    ((2, 2), 4, 'uniform')
    >>> spec.axes[0]
    ('routing', ('uniform', 'zipf:1.2'))
    """
    if isinstance(source, SweepSpec):
        return source
    if isinstance(source, Mapping):
        raw, where = dict(source), "<spec>"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        where = str(path)
        try:
            with open(path, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise McrouteError(f"sweep spec {where!r} is not a regular file")
                blob = fh.read(MAX_SPEC_BYTES + 1)
        except FileNotFoundError:
            raise McrouteError(f"sweep spec {where!r} does not exist") from None
        except IsADirectoryError:
            raise McrouteError(f"sweep spec {where!r} is a folder") from None
        except OSError as exc:
            raise McrouteError(f"sweep spec {where!r} cannot be read ({exc.strerror})") from None
        if len(blob) > MAX_SPEC_BYTES:
            raise McrouteError(f"{where}: a sweep spec may have at most {MAX_SPEC_BYTES} bytes")
        try:
            raw = tomllib.loads(blob.decode("utf-8"))
        except UnicodeDecodeError:
            raise McrouteError(f"{where}: not UTF-8 text (a TOML file is expected)") from None
        except tomllib.TOMLDecodeError as exc:
            raise McrouteError(f"{where}: malformed TOML: {exc}") from None
    else:
        raise McrouteError(f"spec must be a path to a TOML file or a mapping, got "
                           f"{type(source).__name__}")

    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise McrouteError(f"{where}: unknown key {key!r} (allowed: "
                               f"{', '.join(TOP_LEVEL_KEYS)})")
    if "kind" not in raw:
        raise McrouteError(f"{where}: key 'kind' is required (one of {sorted(CELL_KINDS)})")
    kind_name = raw["kind"]
    if not isinstance(kind_name, str) or kind_name not in CELL_KINDS:
        raise McrouteError(f"{where}: kind must be one of {sorted(CELL_KINDS)}, got "
                           f"{kind_name!r}")
    kind = CELL_KINDS[kind_name]
    if "seed" not in raw:
        raise McrouteError(f"{where}: key 'seed' is required (an integer in [0, 2**63)); every "
                           "cell's random stream is derived from it")
    seed = raw["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise McrouteError(f"{where}: seed must be an integer in [0, 2**63), got {seed!r}")
    n_trials = _check_trials(raw.get("n_trials", 1000), f"{where}: n_trials")
    ci = raw.get("ci_prob", 0.95)
    if isinstance(ci, bool) or not isinstance(ci, (int, float)):
        raise McrouteError(f"{where}: ci_prob must be a number in (0, 1), got {ci!r}")
    try:
        ci = check_prob("ci_prob", ci)
    except McrouteError as exc:
        raise McrouteError(f"{where}: {exc}") from None
    qs = raw.get("quantiles", list(DEFAULT_QUANTILES))
    if (not isinstance(qs, list) or not qs or any(
            isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= 1
            for q in qs)):
        raise McrouteError(f"{where}: quantiles must be a non-empty list of levels in [0, 1], "
                           f"got {qs!r}")
    if len({float(q) for q in qs}) != len(qs):
        raise McrouteError(f"{where}: quantiles: repeated level in {qs!r}")
    keep = raw.get("keep_trials", False)
    if not isinstance(keep, bool):
        raise McrouteError(f"{where}: keep_trials must be true or false, got {keep!r}")
    cpt = raw.get("cells_per_task")
    if cpt is not None and (isinstance(cpt, bool) or not isinstance(cpt, int) or cpt < 1):
        raise McrouteError(f"{where}: cells_per_task must be an integer >= 1, got {cpt!r}")
    desc = raw.get("description", "")
    if not isinstance(desc, str):
        raise McrouteError(f"{where}: description must be a string, got {desc!r}")

    axes_raw = raw.get("axes", {})
    fixed_raw = raw.get("fixed", {})
    for table, content in (("axes", axes_raw), ("fixed", fixed_raw)):
        if not isinstance(content, Mapping):
            raise McrouteError(f"{where}: [{table}] must be a table, got {content!r}")
        for key in content:
            if kind.param(key) is None:
                raise McrouteError(
                    f"{where}: unknown key {key!r} in [{table}] (kind {kind.name!r} allows: "
                    f"{', '.join(p.name for p in kind.params)})")
    _check_n_cells(math.prod(len(v) if isinstance(v, list) else 1
                             for v in axes_raw.values()), where)
    both = set(axes_raw) & set(fixed_raw)
    if both:
        raise McrouteError(f"{where}: {sorted(both)[0]!r} is in both [axes] and [fixed]")

    axes = []
    for name, values in axes_raw.items():
        p = kind.param(name)
        at = f"{where}: [axes] {name}"
        if not isinstance(values, list) or not values:
            raise McrouteError(f"{at} must be a non-empty list of values, got {values!r}")
        norm = tuple(p.normalize(v, f"{at}[{i}]") for i, v in enumerate(values))
        if p.type == "batch" and "max" in norm:
            raise McrouteError(f"{at}: 'max' is only allowed in [fixed] (the default); an "
                               "axis of batch sizes must be integers")
        if len({type(v) for v in norm}) > 1:
            raise McrouteError(f"{at}: values must all be of one type (numbers or strings), "
                               f"got {values!r}")
        if len(set(norm)) != len(norm):
            raise McrouteError(f"{at}: repeated value in {values!r}")
        axes.append((name, norm))
    fixed = []
    for name, value in fixed_raw.items():
        p = kind.param(name)
        at = f"{where}: [fixed] {name}"
        if isinstance(value, list):
            if not p.vector:
                raise McrouteError(f"{at}: a single value is expected (lists go in [axes]), "
                                   f"got {value!r}")
            if not value:
                raise McrouteError(f"{at}: empty list")
            norm = tuple(p.normalize(v, f"{at}[{i}]") for i, v in enumerate(value))
            if len({type(v) for v in norm}) > 1 or (len(norm) > 1 and not all(
                    isinstance(v, (int, float)) for v in norm)):
                raise McrouteError(f"{at}: a list must hold numbers only, got {value!r}")
            if len(set(norm)) != len(norm):
                raise McrouteError(f"{at}: repeated value in {value!r}")
            fixed.append((name, norm))
        else:
            fixed.append((name, p.normalize(value, at)))
    given = set(axes_raw) | set(fixed_raw)
    for p in kind.params:
        if p.required and p.name not in given:
            raise McrouteError(f"{where}: parameter {p.name!r} of kind {kind.name!r} is required "
                               "(give it in [fixed] or [axes])")
    return SweepSpec(kind=kind.name, seed=int(seed), axes=tuple(axes),
                     fixed=tuple(sorted(fixed)), n_trials=n_trials, ci_prob=float(ci),
                     quantiles=tuple(float(q) for q in qs), keep_trials=keep,
                     cells_per_task=cpt, description=desc, source=where)


# -- seeds ------------------------------------------------------------------------------------
def _canonical(value):
    if isinstance(value, (bool, np.bool_)):
        return ["b", bool(value)]
    if isinstance(value, (int, np.integer)):
        return ["i", int(value)]
    if isinstance(value, (float, np.floating)):
        return ["f", repr(float(value))]
    if isinstance(value, tuple):
        return ["t", [_canonical(v) for v in value]]
    return ["s", str(value)]


def cell_seed(seed: int, coords: Mapping) -> int:
    """The integer seed of one cell: from the sweep's seed and the cell's axis values only.

    The (name, value) pairs are sorted by name, written as canonical JSON (ints, floats by
    ``repr``, strings) and hashed with SHA-256; four 32-bit words of the digest are the spawn
    key of ``numpy.random.SeedSequence(seed)``, whose first 63 bits are the cell's seed. The
    cell function gets it as ``rng=``, so it alone reproduces the cell.

    Examples
    --------
    >>> from mcroute.sweeps.core import cell_seed
    >>> cell_seed(1, {"batch_size": 8, "routing": "uniform"}) == cell_seed(
    ...     1, {"routing": "uniform", "batch_size": 8})
    True
    >>> cell_seed(1, {"batch_size": 8}) == cell_seed(2, {"batch_size": 8})
    False
    """
    items = sorted((str(k), _canonical(v)) for k, v in coords.items())
    digest = hashlib.sha256(json.dumps(items, separators=(",", ":")).encode()).digest()
    key = tuple(int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4))
    state = np.random.SeedSequence(int(seed), spawn_key=key).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


# -- computing cells --------------------------------------------------------------------------
def _describe_cell(coords: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in coords.items()) or "the single cell"


def _compute_cell(spec: SweepSpec, index: int) -> tuple[xr.Dataset, dict]:
    """Run one cell; return its reduced Dataset (no axis coords) and its attrs."""
    kind = CELL_KINDS[spec.kind]
    coords = spec.cell_coords(index)
    try:
        ds = kind.run(spec.cell_params(index), rng=cell_seed(spec.seed, coords),
                      n_trials=spec.n_trials, ci_prob=spec.ci_prob, quantiles=spec.quantiles)
    except McrouteError as exc:
        raise McrouteError(f"cell {_describe_cell(coords)}: {exc}") from exc
    attrs = {k: _attr_value(v) for k, v in ds.attrs.items()}
    if not spec.keep_trials and "trial" in ds.dims:
        ds = ds.drop_dims("trial")
    for name in spec.axis_names:
        if name in ds.dims:  # pragma: no cover - the kinds get scalars
            raise McrouteError(f"cell function returned a dim {name!r} named like an axis")
        if name in ds.coords:
            ds = ds.drop_vars(name)
        elif name in ds.data_vars:
            ds = ds.rename_vars({name: f"{name}_value"})
    ds.attrs = {}
    return ds, attrs


_CONCAT = {"data_vars": "all", "coords": "different", "compat": "equals", "join": "outer",
           "combine_attrs": "drop_conflicts"}


def _run_task(spec: SweepSpec, cells, on_cell=None) -> xr.Dataset:
    """Compute ``cells`` (flat indices) and stack them on a ``cell`` dim (one part file)."""
    results, attrs = [], []
    for i in cells:
        ds, a = _compute_cell(spec, int(i))
        results.append(ds)
        attrs.append(json.dumps(a, sort_keys=True, default=str))
        if on_cell is not None:
            on_cell(1)
    import pandas as pd

    part = xr.concat(results, dim=pd.Index(np.asarray(cells, dtype=np.int64), name="cell"),
                     **_CONCAT)
    part["cell_attrs"] = ("cell", np.asarray(attrs, dtype=str), {"units": "1"})
    return part


def _worker_task(spec: SweepSpec, cells, numba_threads=None):
    """Entry point on Dask workers (module level, so Dask ships it by reference).

    Returns ``(dataset, data, schema)`` as :func:`_encode_part` does: the part is serialised
    to NetCDF on the worker, so the process that writes the files only hashes and writes bytes.

    ``numba_threads``: cap on the numba threads of this task's thread (local clusters run one
    single-threaded worker process per core, so 1 avoids oversubscription). The cap is set with
    ``numba.set_num_threads`` rather than the ``NUMBA_NUM_THREADS`` environment variable, which
    numba refuses to see change once its threads run. Results do not depend on it.
    """
    if numba_threads is not None:
        import numba

        numba.set_num_threads(max(1, min(int(numba_threads), numba.config.NUMBA_NUM_THREADS)))
    return _encode_part(_run_task(spec, cells), spec.spec_hash())


# -- the store --------------------------------------------------------------------------------
#: Version of the part and manifest format (1 was pickled parts, never read any more).
PART_FORMAT = 2
#: Largest manifest.json read back (bytes); a sweep of MAX_CELLS one-cell parts needs ~15 MB.
MAX_MANIFEST_BYTES = 64 << 20
#: Largest part file read back (bytes).
MAX_PART_BYTES = 8 << 30
_PART_NAME = re.compile(r"part-[0-9]{9}-[0-9a-f]{10}\.nc")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MANIFEST_TYPES = {"format": int, "mcroute_version": str, "spec_hash": str, "spec": dict,
                   "n_cells": int, "schemas": list, "parts": dict}
_DTYPE_CLASSES = {"f": "float", "i": "int", "u": "int", "b": "bool", "U": "str", "S": "str",
                  "O": "str"}


def _dtype_class(dtype) -> str:
    return _DTYPE_CLASSES.get(np.dtype(dtype).kind, f"other:{np.dtype(dtype).str}")


def _normalize_part(ds: xr.Dataset) -> xr.Dataset:
    """The in-memory form of a part, identical whether just computed or read back from disk."""
    ds = ds.copy()
    ds.attrs = {}
    for v in ds.variables.values():
        v.attrs = {k: _attr_value(a) for k, a in v.attrs.items()}
        v.encoding = {}
    return ds


def _part_schema(ds: xr.Dataset) -> dict:
    """``{variable: [dims, dtype class]}`` for every variable (coordinates included)."""
    return {name: [list(v.dims), _dtype_class(v.dtype)]
            for name, v in sorted(ds.variables.items())}


def _encode_part(part: xr.Dataset, spec_hash: str) -> tuple[xr.Dataset, bytes, dict]:
    """``(normalized dataset, NetCDF-4 bytes, schema)`` of one task's cells."""
    ds = _normalize_part(part)
    out = ds.copy()
    out.attrs = {"mcroute_part_format": PART_FORMAT, "mcroute_version": __version__,
                 "spec_hash": spec_hash}
    with _local_locks():
        data = bytes(out.to_netcdf(engine="h5netcdf"))
    return ds, data, _part_schema(ds)


@contextlib.contextmanager
def _local_locks():
    """Make xarray use a process-local write lock, also inside a Dask worker.

    In a worker xarray would take a Dask-distributed lock keyed by the target, which fails
    for an in-memory buffer; the part is written by this thread alone.
    """
    if "dask" not in sys.modules:
        yield
        return
    import dask

    with dask.config.set(scheduler="synchronous"):
        yield


def _decode_part(data: bytes) -> xr.Dataset:
    """Parse NetCDF bytes (data only: no pickle, no code). Any warning is an error here."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with xr.open_dataset(io.BytesIO(data), engine="h5netcdf", decode_times=False,
                             decode_timedelta=False, cache=False) as ds:
            return ds.load()


class _BadPart(Exception):
    """A part file that fails its checksum or validation (message: the problem)."""


class _PartStore:
    """``<output>.parts/``: ``manifest.json`` plus one NetCDF file per finished task.

    A part ``part-<first cell>-<tag>.nc`` holds the task's cells stacked on a ``cell`` dim
    (the flat cell indices are the ``cell`` coordinate) and the cells' attrs as JSON strings
    (``cell_attrs``). It is written to a temporary name, flushed and renamed; then its SHA-256,
    its number of cells and its variables (names, dims, dtype classes; stored once per distinct
    set in ``schemas``) are added to the manifest, which is itself replaced atomically. Reading
    back (``--resume``) checks the manifest's structure, then each part's checksum *before*
    parsing it, then its content against the manifest and the spec's grid. Nothing is ever
    unpickled; a file that fails is an error naming it, or, with ``recompute_bad``, is deleted
    and its cells are computed again. The checksums detect corruption (bit rot, truncation, a
    partial copy), not deliberate edits by someone who can rewrite the manifest too.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.manifest_path = self.folder / "manifest.json"
        self.created = False  # this run created the folder
        self.n_written = 0  # parts written by this run
        self.datasets: dict[str, xr.Dataset] = {}  # name -> normalized part, validated
        self.manifest: dict = {}

    # ---- starting / resuming
    def start(self, spec: SweepSpec, resume: bool, recompute_bad: bool = False) -> set:
        """Create or reopen the folder; return the flat indices of completed cells."""
        self.spec = spec
        h = spec.spec_hash()
        if not self.folder.exists():
            self.folder.mkdir()
            self.created = True
            self.manifest = {"format": PART_FORMAT, "mcroute_version": __version__,
                             "spec_hash": h, "spec": spec.to_dict(), "n_cells": spec.n_cells,
                             "schemas": [], "parts": {}}
            self._write_manifest()
            return set()
        if not resume:
            raise McrouteError(
                f"{self.folder} holds the parts of an unfinished sweep; pass --resume "
                "(resume=True) to continue it, or delete the folder to start again")
        if not self.folder.is_dir() or self.folder.is_symlink():
            raise McrouteError(f"{self.folder} is not a folder of sweep parts; delete it")
        old = self._read_manifest()
        if old["spec_hash"] != h:
            diff = _spec_difference(old["spec"], spec.to_dict(), old["mcroute_version"])
            raise McrouteError(f"--resume: the spec differs from the interrupted run's "
                               f"({diff}); use the same spec and --trials, or delete "
                               f"{self.folder}")
        if old["n_cells"] != spec.n_cells:
            raise McrouteError(f"{self.manifest_path}: n_cells is {old['n_cells']}, the spec "
                               f"has {spec.n_cells} cells; delete {self.folder}")
        self.manifest = old
        changed = self._sweep_folder(recompute_bad)
        done: dict[int, str] = {}
        for name in sorted(self.manifest["parts"]):
            try:
                ds = self._read_part(name, done)
            except _BadPart as exc:
                path = self.folder / name
                if not recompute_bad:
                    raise McrouteError(
                        f"{path}: {exc}; rerun with --resume --recompute-bad "
                        f"(recompute_bad=True) to recompute its cells, or delete "
                        f"{self.folder} to start again") from None
                path.unlink(missing_ok=True)
                del self.manifest["parts"][name]
                changed = True
                continue
            self.datasets[name] = ds
            for c in ds["cell"].values:
                done[int(c)] = name
        if changed:
            self._write_manifest()
        return set(done)

    def _sweep_folder(self, recompute_bad: bool) -> bool:
        """Delete temporary files and uncommitted parts; drop entries of deleted parts."""
        changed = False
        entries = self.manifest["parts"]
        for f in sorted(self.folder.iterdir()):
            name = f.name
            if name == "manifest.json":
                continue
            if name.startswith("."):  # temporary file of an interrupted write
                if f.is_file() or f.is_symlink():
                    f.unlink(missing_ok=True)
                continue
            if _PART_NAME.fullmatch(name) and not f.is_symlink():
                if name not in entries:  # renamed into place, killed before the manifest
                    f.unlink(missing_ok=True)
                continue
            if recompute_bad and (f.is_file() or f.is_symlink()):
                f.unlink(missing_ok=True)
                continue
            raise McrouteError(f"{f}: unexpected file in the parts folder (not a part written "
                               f"by this mcroute version; parts are never unpickled); delete "
                               f"it, or delete {self.folder} to start again")
        for name in list(entries):
            if not (self.folder / name).exists():  # deleted by hand: its cells are recomputed
                del entries[name]
                changed = True
        return changed

    def _read_manifest(self) -> dict:
        path = self.manifest_path
        where = f"{path}"
        try:
            st = path.lstat()
        except OSError:
            raise McrouteError(f"{where} is missing; delete {self.folder} to start "
                               "again") from None
        if not stat.S_ISREG(st.st_mode):
            raise McrouteError(f"{where} is not a regular file; delete {self.folder}")
        if st.st_size > MAX_MANIFEST_BYTES:
            raise McrouteError(f"{where} is {st.st_size} bytes, more than the "
                               f"{MAX_MANIFEST_BYTES} a manifest may have; delete {self.folder}")
        try:
            m = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise McrouteError(f"{where}: unreadable manifest ({type(exc).__name__}: "
                               f"{_short(exc)}); delete {self.folder} to start again") from None
        bad = f"{where}: malformed manifest: "
        tail = f"; delete {self.folder} to start again"
        if not isinstance(m, dict):
            raise McrouteError(f"{bad}a JSON object is expected, got {type(m).__name__}{tail}")
        if "format" not in m:
            raise McrouteError(f"{where}: manifest of an older mcroute (pickled parts, which "
                               f"are never loaded){tail}")
        for key, typ in _MANIFEST_TYPES.items():
            if key not in m:
                raise McrouteError(f"{bad}key {key!r} is missing{tail}")
            val = m[key]
            if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
                raise McrouteError(f"{bad}{key!r} must be {typ.__name__}, got "
                                   f"{type(val).__name__}{tail}")
        if m["format"] != PART_FORMAT:
            raise McrouteError(f"{bad}format {m['format']} (this mcroute reads "
                               f"{PART_FORMAT}){tail}")
        for i, s in enumerate(m["schemas"]):
            if not isinstance(s, dict) or not all(
                    isinstance(k, str) and isinstance(v, list) and len(v) == 2
                    and isinstance(v[0], list) and all(isinstance(d, str) for d in v[0])
                    and isinstance(v[1], str) for k, v in s.items()):
                raise McrouteError(f"{bad}schemas[{i}] must map variable names to "
                                   f"[dims, dtype]{tail}")
        for name, e in m["parts"].items():
            if not _PART_NAME.fullmatch(name):
                raise McrouteError(f"{bad}part name {name!r} is not part-NNNNNNNNN-TAG.nc{tail}")
            if (not isinstance(e, dict) or set(e) != {"sha256", "n_cells", "schema"}
                    or not isinstance(e["sha256"], str) or not _SHA256.fullmatch(e["sha256"])
                    or any(isinstance(e[k], bool) or not isinstance(e[k], int)
                           for k in ("n_cells", "schema"))
                    or e["n_cells"] < 1 or not 0 <= e["schema"] < len(m["schemas"])):
                raise McrouteError(f"{bad}entry of {name!r} must be {{'sha256': 64 hex digits, "
                                   f"'n_cells': int >= 1, 'schema': index into schemas}}{tail}")
        return m

    def _read_part(self, name: str, done: dict) -> xr.Dataset:
        """Checksum, parse and validate one part; raise _BadPart naming the problem."""
        entry = self.manifest["parts"][name]
        path = self.folder / name
        try:
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                raise _BadPart("not a regular file")
            if st.st_size > MAX_PART_BYTES:
                raise _BadPart(f"{st.st_size} bytes, more than the {MAX_PART_BYTES} allowed")
            data = path.read_bytes()
        except OSError as exc:
            raise _BadPart(f"unreadable ({_short(exc)})") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"]:
            raise _BadPart(f"checksum mismatch (SHA-256 {digest[:12]}…, the manifest recorded "
                           f"{entry['sha256'][:12]}…): the file is corrupt or truncated")
        try:
            ds = _decode_part(data)
        except Exception as exc:  # noqa: BLE001 - any parser failure means a bad file
            raise _BadPart(f"not a readable NetCDF part ({type(exc).__name__}: "
                           f"{_short(exc)})") from None
        self._check_part(ds, entry, done)
        return _normalize_part(ds)

    def _check_part(self, ds: xr.Dataset, entry: dict, done: dict) -> None:
        spec = self.spec
        if ds.attrs.get("mcroute_part_format") != PART_FORMAT:
            raise _BadPart(f"attribute mcroute_part_format is "
                           f"{ds.attrs.get('mcroute_part_format')!r}, expected {PART_FORMAT}")
        if ds.attrs.get("spec_hash") != self.manifest["spec_hash"]:
            raise _BadPart("written for another spec (spec_hash attribute differs)")
        expected = self.manifest["schemas"][entry["schema"]]
        have = _part_schema(ds)
        for var in sorted(set(expected) - set(have)):
            raise _BadPart(f"variable {var!r} is missing")
        for var in sorted(set(have) - set(expected)):
            raise _BadPart(f"unexpected variable {var!r}")
        for var, (dims, cls) in expected.items():
            if have[var][0] != dims:
                raise _BadPart(f"variable {var!r} has dims {tuple(have[var][0])}, expected "
                               f"{tuple(dims)}")
            if have[var][1] != cls:
                raise _BadPart(f"variable {var!r} has dtype {ds[var].dtype}, expected {cls}")
        if "cell" not in ds.dims or "cell" not in ds.coords:
            raise _BadPart("no cell coordinate")
        for var, v in ds.data_vars.items():
            if not v.dims or v.dims[0] != "cell":
                raise _BadPart(f"variable {var!r} has dims {v.dims}; the first must be 'cell'")
        for dim in ds.dims:
            if dim in spec.axis_names:
                raise _BadPart(f"dim {dim!r} is an axis of the sweep")
            if dim not in ds.coords:
                raise _BadPart(f"dim {dim!r} has no coordinate")
            c = ds[dim].values
            if c.dtype.kind == "f" and not np.isfinite(c).all():
                raise _BadPart(f"coordinate {dim!r} holds non-finite values")
            if len(np.unique(c)) != c.size:
                raise _BadPart(f"coordinate {dim!r} holds repeated values")
        cells = ds["cell"].values
        if cells.dtype.kind != "i":
            raise _BadPart(f"cell indices have dtype {cells.dtype}, expected integers")
        if cells.size != entry["n_cells"]:
            raise _BadPart(f"holds {cells.size} cells, the manifest recorded "
                           f"{entry['n_cells']}")
        if cells.size and (cells.min() < 0 or cells.max() >= spec.n_cells):
            raise _BadPart(f"cell index out of range [0, {spec.n_cells}): "
                           f"{int(cells.min())}..{int(cells.max())}")
        for c in cells:
            if int(c) in done:
                raise _BadPart(f"cell {int(c)} is also in {done[int(c)]}")
        if "cell_attrs" not in ds or ds["cell_attrs"].dims != ("cell",):
            raise _BadPart("variable 'cell_attrs' (dim cell) is missing")
        for s in ds["cell_attrs"].values:
            try:
                ok = isinstance(json.loads(str(s)), dict)
            except (ValueError, RecursionError):
                ok = False
            if not ok:
                raise _BadPart("cell_attrs must hold JSON objects")

    # ---- writing
    def write(self, part: xr.Dataset) -> Path:
        """Encode and write one task's cells (see :meth:`add`)."""
        return self.add(*_encode_part(part, self.spec.spec_hash()))

    def add(self, ds: xr.Dataset, data: bytes, schema: dict) -> Path:
        """Write one encoded part atomically, then record it in the manifest (atomically)."""
        cells = [int(c) for c in ds["cell"].values]
        tag = hashlib.sha256(np.asarray(cells, dtype=np.int64).tobytes()).hexdigest()[:10]
        name = f"part-{min(cells):09d}-{tag}.nc"
        path = self.folder / name
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        schemas = self.manifest["schemas"]
        if schema not in schemas:
            schemas.append(schema)
        self.manifest["parts"][name] = {"sha256": hashlib.sha256(data).hexdigest(),
                                        "n_cells": len(cells), "schema": schemas.index(schema)}
        self._write_manifest()
        self.datasets[name] = ds
        self.n_written += 1
        return path

    def _write_manifest(self) -> None:
        text = json.dumps(self.manifest, separators=(",", ":"), sort_keys=True)
        with atomic_path(self.manifest_path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def parts(self) -> list[Path]:
        """The part files recorded in the manifest, in name order."""
        return [self.folder / n for n in sorted(self.manifest.get("parts", {}))]

    def load(self) -> xr.Dataset:
        """All parts (validated on resume, or written by this run) concatenated on ``cell``."""
        parts = [self.datasets[n] for n in sorted(self.datasets)]
        if not parts:
            raise McrouteError(f"{self.folder}: no parts to merge")
        allds = parts[0] if len(parts) == 1 else xr.concat(parts, dim="cell", **_CONCAT)
        return allds.isel(cell=np.argsort(allds["cell"].values, kind="stable"))

    def remove(self) -> None:
        """Delete the folder (after the output is in place)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _short(exc, n: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= n else text[:n] + "…"


def _spec_difference(old: dict, new: dict, old_version) -> str:
    if old_version is not None and old_version != __version__:
        return f"parts written by mcroute {old_version}, this is {__version__}"
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r} then, {new.get(key)!r} now"
    return "unknown difference"  # pragma: no cover


# -- merging ----------------------------------------------------------------------------------
def _merge(spec: SweepSpec, allds: xr.Dataset) -> xr.Dataset:
    """Reshape the ``cell`` dim of the concatenated parts into the grid of axes."""
    kind = CELL_KINDS[spec.kind]
    cells = allds["cell"].values
    if cells.size != spec.n_cells or np.any(cells != np.arange(spec.n_cells)):
        missing = sorted(set(range(spec.n_cells)) - set(int(c) for c in cells))
        raise McrouteError(f"the parts do not hold every cell exactly once (missing "
                           f"{len(missing)}, found {cells.size} of {spec.n_cells})")
    shape, names = spec.shape, spec.axis_names
    cell_attrs = [json.loads(s) for s in allds["cell_attrs"].values]
    allds = allds.drop_vars("cell_attrs")
    coords = {}
    for name, values in spec.axes:
        p = kind.param(name)
        arr = np.asarray(values, dtype=str if isinstance(values[0], str) else None)
        coords[name] = (name, arr, {"units": p.units, "long_name": p.doc})
    for name, c in allds.coords.items():
        if name == "cell":
            continue
        if "cell" in c.dims:  # a coordinate that differs between cells
            c = c.transpose("cell", ...)
            coords[name] = (names + c.dims[1:], c.values.reshape(shape + c.shape[1:]),
                            c.attrs)
        else:
            coords[name] = c.variable
    data = {}
    for name, v in allds.data_vars.items():
        v = v.transpose("cell", ...)
        data[name] = (names + v.dims[1:], v.values.reshape(shape + v.shape[1:]), v.attrs)
    seeds = np.array([cell_seed(spec.seed, spec.cell_coords(i)) for i in range(spec.n_cells)],
                     dtype=np.int64).reshape(shape)
    data["cell_seed"] = (names, seeds, {
        "units": "1", "long_name": "seed of the cell: rng= for the cell function repeats it"})
    ds = xr.Dataset(data, coords=coords)
    for v in ds.variables.values():
        v.encoding = {}
    common = dict(cell_attrs[0]) if cell_attrs else {}
    for a in cell_attrs[1:]:
        common = {k: v for k, v in common.items() if k in a and a[k] == v}
    common = {k: v for k, v in common.items() if k not in _OWN_ATTRS}
    ds.attrs = provenance(
        seed=spec.seed, n_trials=spec.n_trials, ci_prob=spec.ci_prob,
        sweep_kind=spec.kind, sweep_axes=list(names), sweep_spec=spec.to_dict(),
        sweep_spec_hash=spec.spec_hash(),
        **({"description": spec.description} if spec.description else {}), **common)
    return ds


# -- progress ---------------------------------------------------------------------------------
class _Progress:
    """A one-line progress bar on stderr: cells done, rate and time left."""

    def __init__(self, total: int, done: int, enabled: bool, stream=None):
        self.total, self.done, self.start_done = total, done, done
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.t0 = time.perf_counter()
        self.last = 0.0
        self._draw(force=True)

    def advance(self, n: int) -> None:
        self.done += n
        self._draw()

    def _draw(self, force=False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last < 0.1 and self.done < self.total:
            return
        self.last = now
        width = 30
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        new, dt = self.done - self.start_done, now - self.t0
        if new > 0 and dt > 0:
            rate = new / dt
            left = _fmt_time((self.total - self.done) / rate)
            tail = f"{rate:.3g} cells/s, {left} left"
        else:
            tail = "estimating time left"
        self.stream.write(f"\rsweep [{bar}] {self.done}/{self.total} cells {frac:4.0%}  "
                          f"{tail}   ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()


def _fmt_time(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


# -- execution --------------------------------------------------------------------------------
def _tasks(remaining: list, per_task: int | None, n_workers: int) -> list:
    if per_task is None:
        # ~8 tasks per worker (load balance, little lost on interruption), capped so that a
        # task stays short; each task is one part file (one NetCDF write).
        per_task = max(1, min(256, math.ceil(len(remaining) / (8 * max(n_workers, 1)))))
    return [remaining[i:i + per_task] for i in range(0, len(remaining), per_task)]


@contextlib.contextmanager
def _dask_client(workers, scheduler, client):
    if client is not None:
        yield client
        return
    try:
        import distributed
    except ImportError:
        raise McrouteError("workers/scheduler need Dask: pip install 'mcroute[distributed]'"
                           ) from None
    import logging

    if scheduler is not None:
        c = distributed.Client(scheduler, timeout="30s")
        try:
            yield c
        finally:
            c.close()
        return
    # The scheduler always serves HTTP; dashboard_address=None still binds port 8787 (and warns
    # when it is taken), so bind a free port on the loopback interface instead.
    cluster = distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    try:
        c = distributed.Client(cluster)
        try:
            yield c
        finally:
            c.close()
    finally:
        cluster.close()


def _run_dask(client, spec, tasks, store, progress, numba_threads=None) -> None:
    from distributed import as_completed

    remote_spec = client.scatter(spec, broadcast=True)
    futures = [client.submit(_worker_task, remote_spec, cells, numba_threads, pure=False)
               for cells in tasks]
    try:
        for fut in as_completed(futures):
            ds, data, schema = fut.result()
            store.add(ds, data, schema)
            progress.advance(ds.sizes["cell"])
            fut.release()
    finally:
        client.cancel(futures)


def _check_output(output) -> Path:
    """Validate the output path (extension, folder, writability) without creating anything."""
    if not isinstance(output, (str, os.PathLike)):
        raise McrouteError(f"output must be a path (str or os.PathLike), got "
                           f"{type(output).__name__}")
    output = Path(output)
    if output.suffix.lower() not in {".nc", ".csv", ".json"}:
        raise McrouteError(f"output must end in .nc, .csv or .json, got {str(output)!r}")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise McrouteError(f"output folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise McrouteError(f"output folder {str(folder)!r} is not writable")
    try:
        st = os.stat(output)  # through a symbolic link: its target is what gets replaced
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise McrouteError(f"cannot write output {str(output)!r}: {exc.strerror}") from None
    else:
        if stat.S_ISDIR(st.st_mode):
            raise McrouteError(f"output {str(output)!r} is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise McrouteError(f"output {str(output)!r} is not a regular file (a device, FIFO "
                               "or socket); refusing to replace it")
    parts = output.with_name(output.name + ".parts")
    if parts.exists() and not parts.is_dir():
        raise McrouteError(f"{parts} exists and is not a folder of sweep parts; delete it")
    return output


def _finished_output(output: Path, spec: SweepSpec):
    """The finished ``.nc`` output of the same spec, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with xr.open_dataset(output, engine="h5netcdf", decode_times=False,
                                 decode_timedelta=False) as old:
                if old.attrs.get("sweep_spec_hash") != spec.spec_hash():
                    return None
                return old.load()
    except Exception as exc:  # noqa: BLE001 - any parser failure means a bad file
        raise McrouteError(f"{output}: --resume cannot read the existing output "
                           f"({type(exc).__name__}: {_short(exc)}); move it away or run "
                           "without --resume") from None


def _sweep(spec, output=None, *, resume=False, workers=None, scheduler=None, client=None,
           progress=None, n_trials=None, numba_threads=None, recompute_bad=False):
    """:func:`sweep` returning ``(dataset, info)``; info has cells, computed, resumed, seconds.

    ``numba_threads``: numba threads per Dask task (default 1 on a cluster started with
    ``workers``, else the workers' own setting). Everything is validated before the parts
    folder is created; a run that fails before writing any part removes the folder it created.
    """
    spec = load_sweep_spec(spec)
    if n_trials is not None:
        spec = spec.with_trials(n_trials)
    _check_n_cells(spec.n_cells, spec.source)
    n_dask = sum(x is not None for x in (workers, scheduler, client))
    if n_dask > 1:
        raise McrouteError("give at most one of workers, scheduler and client")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise McrouteError(f"workers must be an integer >= 1, got {workers!r}")
    if scheduler is not None and not isinstance(scheduler, str):
        raise McrouteError(f"scheduler must be an address string, got {scheduler!r}")
    if workers is not None or scheduler is not None:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise McrouteError("workers/scheduler need Dask: pip install "
                               "'mcroute[distributed]'") from None
    if not isinstance(resume, bool) or not isinstance(recompute_bad, bool):
        raise McrouteError("resume and recompute_bad must be true or false")
    if resume and output is None:
        raise McrouteError("resume needs an output path (its parts folder holds the cells)")
    if recompute_bad and not resume:
        raise McrouteError("recompute_bad (--recompute-bad) only applies with resume "
                           "(--resume)")
    if output is not None:
        output = _check_output(output)
    kind = CELL_KINDS[spec.kind]
    if kind.prepare is not None:
        for i in range(spec.n_cells):
            try:
                kind.prepare(spec.cell_params(i))
            except McrouteError as exc:
                raise McrouteError(f"{spec.source}: cell "
                                   f"{_describe_cell(spec.cell_coords(i))}: {exc}") from None
            except (ValueError, TypeError, OverflowError, MemoryError) as exc:
                raise McrouteError(f"{spec.source}: cell {_describe_cell(spec.cell_coords(i))}"
                                   f": {type(exc).__name__}: {_short(exc)}") from None
    # -- validated: from here on files are created
    t0 = time.perf_counter()
    if output is not None:
        folder = output.with_name(output.name + ".parts")
        remove_stale_temporaries(output)  # of a killed earlier write of the output
        if resume and not folder.exists() and output.suffix.lower() == ".nc" and output.exists():
            ds = _finished_output(output, spec)
            if ds is not None:
                return ds, {"cells": spec.n_cells, "computed": 0, "resumed": spec.n_cells,
                            "seconds": 0.0}
        tmpdir = None
    else:
        tmpdir = tempfile.mkdtemp(prefix="mcroute-sweep-")
        folder = Path(tmpdir) / "parts"
    store = _PartStore(folder)
    try:
        done = store.start(spec, resume, recompute_bad)
        remaining = [i for i in range(spec.n_cells) if i not in done]
        show = (_stderr_is_tty() if progress is None else bool(progress)) and bool(remaining)
        if n_dask == 0:
            bar = _Progress(spec.n_cells, len(done), show)
            try:
                for cells in _tasks(remaining, spec.cells_per_task, 1):
                    store.write(_run_task(spec, cells, on_cell=bar.advance))
            finally:
                bar.close()
        elif remaining:
            with _dask_client(workers, scheduler, client) as c:
                n_workers = max(1, sum(c.nthreads().values()))
                bar = _Progress(spec.n_cells, len(done), show)  # after the cluster is up
                try:
                    if numba_threads is None and workers is not None:
                        numba_threads = 1
                    _run_dask(c, spec, _tasks(remaining, spec.cells_per_task, n_workers),
                              store, bar, numba_threads=numba_threads)
                finally:
                    bar.close()
        ds = _merge(spec, store.load())
        if output is not None:
            save_dataset(ds, output)
            store.remove()
    except BaseException:
        if store.created and store.n_written == 0:  # nothing worth keeping: leave no debris
            store.remove()
        raise
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    info = {"cells": spec.n_cells, "computed": len(remaining), "resumed": len(done),
            "seconds": time.perf_counter() - t0}
    return ds, info


def _stderr_is_tty() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def sweep(spec, output=None, *, resume=False, workers=None, scheduler=None, client=None,
          progress=None, n_trials=None, recompute_bad=False) -> xr.Dataset:
    """Run a parameter sweep: every cell of the spec's grid, in-process or on Dask.

    Parameters
    ----------
    spec : SweepSpec, str, os.PathLike or Mapping
        The sweep (see :func:`load_sweep_spec` and docs/sweeps.md).
    output : str or os.PathLike, optional
        Result file (``.nc``, ``.csv`` or ``.json``), written atomically at the end. Finished
        cells are kept in ``<output>.parts/`` while the sweep runs (removed after the output is
        in place). Without it the parts go to a temporary folder and only the Dataset is
        returned.
    resume : bool
        Continue an interrupted sweep: cells found in ``<output>.parts/`` are not recomputed.
        The spec (and ``n_trials``) must be the same; a different one is refused. Every part
        is checked (SHA-256 against the manifest, then its content) before use; a bad part is
        an error naming it.
    recompute_bad : bool
        With ``resume``: delete the parts that fail their check and compute their cells again.
    workers : int, optional
        Start a local Dask cluster of this many single-threaded worker processes.
    scheduler : str, optional
        Address of an existing Dask scheduler (its workers need mcroute installed).
    client : distributed.Client, optional
        An existing Dask client to use (not closed).
    progress : bool, optional
        Show a progress bar on stderr; default: only when stderr is a terminal.
    n_trials : int, optional
        Override the spec's ``n_trials``.

    Returns
    -------
    xarray.Dataset
        One dim per axis (in the spec's order, coordinates = the canonical axis values, with
        units), then each cell's own dims (``ci_bound``, ``quantile``, ``layer``, ``context``…).
        The cell function's summary variables (``<name>_mean``, ``_se``, ``_ci``, ``_q`` and
        the deterministic ones); per-trial variables only with ``keep_trials``; ``cell_seed``
        (axes): the seed that repeats a cell alone. Cells whose own dims are shorter than
        others' are padded with NaN. Attrs: provenance, ``sweep_spec`` (JSON),
        ``sweep_spec_hash``, ``sweep_kind``, ``sweep_axes``, and the cell attrs that are the
        same for every cell.

    Examples
    --------
    >>> import mcroute as mr
    >>> spec = {"kind": "simulate", "seed": 7, "n_trials": 32,
    ...         "axes": {"routing": ["uniform", "zipf:1.2"], "batch_size": [1, 16]},
    ...         "fixed": {"n_experts": 32, "top_k": 2}}
    >>> ds = mr.sweep(spec, progress=False)
    >>> dict(ds["active_experts_mean"].sizes)
    {'routing': 2, 'batch_size': 2, 'layer': 1}
    >>> float(ds["active_experts_mean"].sel(routing="uniform", batch_size=1).item())
    2.0
    """
    ds, _ = _sweep(spec, output, resume=resume, workers=workers, scheduler=scheduler,
                   client=client, progress=progress, n_trials=n_trials,
                   recompute_bad=recompute_bad)
    return ds
