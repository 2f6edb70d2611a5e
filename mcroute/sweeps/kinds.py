"""The built-in cell kinds: ``simulate``, ``throughput`` and ``qs``, and the kind registry.

Each kind is a :class:`~mcroute.sweeps.params.CellKind`: its parameters (the keys a spec may
give: the labeled function's own options, declared once in :mod:`mcroute._labeled.options`,
and Deployment's, ``DEPLOYMENT_OPTIONS``), a ``run`` function calling the labeled function
once per cell and a cheap ``prepare`` check run on every cell before any work starts. Cells
draw no progress line of their own (the sweep has one for all cells).
"""

from __future__ import annotations

import dataclasses

from mcroute._base.validate import McrouteError
from mcroute._cards.cards import load_model
from mcroute._cost.deployment import DEPLOYMENT_OPTIONS, Deployment
from mcroute._labeled.options import QS_OPTIONS, RUN_OPTIONS, SIMULATE_OPTIONS, THROUGHPUT_OPTIONS
from mcroute._labeled.qs import qs_analysis
from mcroute._labeled.simulate import simulate
from mcroute._labeled.throughput import decode_throughput
from mcroute._routing.sampling import sampling_draws
from mcroute._routing.spec import parse_routing
from mcroute.sweeps.params import REQUIRED, CellKind

__all__ = ["CELL_KINDS", "DEPLOYMENT_KEYS", "DEPLOYMENT_PARAMS", "register_cell_kind"]

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
    routing = parse_routing(p.get("routing", "uniform"), p["n_experts"], p["top_k"])
    bs = list(p["batch_size"]) if isinstance(p["batch_size"], tuple) else p["batch_size"]
    kw = {k: p[k] for k in ("n_layers", "n_devices", "capacity_factor", "method") if k in p}
    return simulate(routing, bs, n_trials, rng=rng, ci_prob=ci_prob, quantiles=quantiles,
                    progress=False, **kw)


def _prepare_simulate(p):
    if p["top_k"] > p["n_experts"]:
        raise McrouteError(f"top_k ({p['top_k']}) must be <= n_experts ({p['n_experts']})")
    routing = parse_routing(p.get("routing", "uniform"), p["n_experts"], p["top_k"])
    batches = p["batch_size"] if isinstance(p["batch_size"], tuple) else (p["batch_size"],)
    for b in batches:  # e.g. method = "counts" with a weighted top-k routing
        sampling_draws(routing, b, 1, 1, p.get("method", "auto"))


def _cell_params(options, **sweep_defaults) -> tuple:
    """The cell parameters of a function's declared options (mcroute._labeled.options).

    Run-level options (``n_trials``, ``ci_prob``, ``seed``: set once per sweep) are not cell
    parameters. ``sweep_defaults`` are the defaults a sweep documents where they differ from
    the function's (a spec must give ``context``).
    """
    out = []
    for o in options:
        if o.name in RUN_OPTIONS:
            continue
        out.append(dataclasses.replace(o, default=sweep_defaults[o.name])
                   if o.name in sweep_defaults else o)
    return tuple(out)


_SIMULATE_PARAMS = _cell_params(SIMULATE_OPTIONS)

#: Deployment's own declarations (type, default, units, range, doc) of the options a sweep
#: passes to ``Deployment``: all but the model, hardware and GPU count (declared by each kind)
#: and ``expert_placement`` (a per-expert list or Placement object: give it through the API).
_DEPLOYMENT_OPTION = {o.name: o for o in DEPLOYMENT_OPTIONS}
DEPLOYMENT_PARAMS = tuple(o for o in DEPLOYMENT_OPTIONS
                          if o.name not in ("model", "hardware", "n_gpus", "expert_placement"))
DEPLOYMENT_KEYS = tuple(p.name for p in DEPLOYMENT_PARAMS)


def _deployment(p):
    opts = {k: p[k] for k in DEPLOYMENT_KEYS if k in p}
    return Deployment(p["model"], p["hardware"], p["n_gpus"], **opts)


def _model_routing(text, model):
    """The cell's routing; ``None`` (not given) is the model card's routing, as in the API."""
    if text is None:
        return None
    if not model.is_moe:
        if text != "uniform":
            raise McrouteError(f"routing {text!r}: model {model.name!r} is dense (no routed "
                               "experts); leave routing at 'uniform'")
        return None
    return parse_routing(text, model.n_experts, model.top_k)


def _context(p):
    return list(p["context"]) if isinstance(p["context"], tuple) else p["context"]


def _run_throughput(p, *, rng, n_trials, ci_prob, quantiles):
    dep = _deployment(p)
    routing = _model_routing(p.get("routing"), dep.model)
    batch = p.get("batch_size", "max")
    batch = list(batch) if isinstance(batch, tuple) else batch
    kw = _batch_policy(p)
    if "method" in p:
        kw["method"] = p["method"]
    return decode_throughput(dep, _context(p), batch, routing, n_trials, rng=rng,
                             ci_prob=ci_prob, quantiles=quantiles, progress=False, **kw)


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
    _model_routing(p.get("routing"), dep.model)
    _batch_policy(p)


_THROUGHPUT_PARAMS = (
    _DEPLOYMENT_OPTION["model"],
    _DEPLOYMENT_OPTION["hardware"],
    _DEPLOYMENT_OPTION["n_gpus"],
    *_cell_params(THROUGHPUT_OPTIONS),
    *DEPLOYMENT_PARAMS,
)


_QS_OWN = ("dense_style", "dense_n_gpus", "n_q_samples", "method", "dense_model")


def _run_qs(p, *, rng, n_trials, ci_prob, quantiles):
    model = load_model(p["model"])
    routing = _model_routing(p.get("routing"), model)
    q = p.get("q")
    q = list(q) if isinstance(q, tuple) else q
    kw = {k: p[k] for k in (*_QS_OWN, *DEPLOYMENT_KEYS) if k in p}
    return qs_analysis(model, p["hardware"], p["n_gpus"], q, _context(p), routing,
                       n_trials=n_trials, rng=rng, ci_prob=ci_prob, quantiles=quantiles,
                       progress=False, **kw)


def _prepare_qs(p):
    model = load_model(p["model"])
    if not model.is_moe:
        raise McrouteError(f"model {model.name!r} is dense; the qs kind needs a "
                           "Mixture-of-Experts model")
    if "q" not in p and "dense_model" not in p:
        raise McrouteError("q is required unless dense_model is given")
    _deployment(p)
    _model_routing(p.get("routing"), model)


_QS_PARAMS = (
    dataclasses.replace(_DEPLOYMENT_OPTION["model"],
                        doc="Mixture-of-Experts model card name or path"),
    _DEPLOYMENT_OPTION["hardware"],
    dataclasses.replace(_DEPLOYMENT_OPTION["n_gpus"], doc="GPUs serving the MoE (and the twin)"),
    *_cell_params(QS_OPTIONS, context=REQUIRED),
    *DEPLOYMENT_PARAMS,
)

register_cell_kind(CellKind("simulate", _SIMULATE_PARAMS, _run_simulate, _prepare_simulate,
                            "mcroute.simulate: routing fragmentation and load statistics"))
register_cell_kind(CellKind("throughput", _THROUGHPUT_PARAMS, _run_throughput,
                            _prepare_throughput,
                            "mcroute.decode_throughput of a Deployment"))
register_cell_kind(CellKind("qs", _QS_PARAMS, _run_qs, _prepare_qs,
                            "mcroute.qs_analysis: MoE vs its quality-matched dense twin"))
