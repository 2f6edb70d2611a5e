"""The options of ``simulate``, ``decode_throughput`` and ``qs_analysis``, declared once (floor 4).

May import: ``mcroute._base``, ``mcroute._routing.spec``, ``mcroute._twin``.

Each option is an :class:`~mcroute._base.options.Option` (type, default, units, one line of
documentation, range, choices, short CLI alias, metavar). From these declarations come:

* the checks of the labeled functions (:meth:`Option.check <mcroute._base.options.Option.check>`
  for one value, :func:`check_sizes` for a size or a list of sizes);
* the parameters of the sweep cell kinds (``mcroute.sweeps.kinds``);
* the CLI flags of ``mcroute simulate``, ``throughput`` and ``qs`` (``mcroute.cli.deployment``:
  ``--n-trials`` for ``n_trials``, with the short alias, range, help and metavar declared here).

So a range is written once and the API, the CLI and sweeps accept and refuse the same values.
The Deployment options (model, hardware, n_gpus, dtypes, ...) are declared by
``mcroute._cost.deployment.DEPLOYMENT_OPTIONS``; the ones here are the functions' own.

Defaults are the Python API's. Where a front end documents another default it says so itself:
the CLI runs more trials for ``simulate`` (2000) and fewer for ``qs`` (400), and gives default
contexts and batch sizes; a sweep requires ``context`` (and simulate's ``batch_size``) in every
spec and routes with ``"uniform"`` unless told otherwise (``mcroute.sweeps.kinds``).
``n_experts`` and ``top_k`` are required with a routing string (a Routing object carries its
own). ``seed`` is the API's ``rng`` keyword when it is an integer (``rng`` also takes a
``numpy.random.Generator``); the CLI flag is ``--seed``.
"""

from __future__ import annotations

from mcroute._base.options import REQUIRED, Option
from mcroute._base.units import parse_size_list
from mcroute._base.validate import (
    MAX_BATCH_SIZE,
    MAX_CAPACITY_FACTOR,
    MAX_CONTEXT,
    MAX_EXPERTS,
    MAX_GPUS,
    MAX_LAYERS,
    MAX_Q_SAMPLES,
)
from mcroute._routing.spec import ROUTING_SYNTAX
from mcroute._twin import DENSE_STYLES

__all__ = ["METHODS", "SIMULATE_OPTIONS", "THROUGHPUT_OPTIONS", "QS_OPTIONS", "RUN_OPTIONS",
           "by_name", "check_sizes"]

#: Sampling methods of the routing Monte Carlo (``mcroute._routing.sampling``).
METHODS = ("auto", "assignment", "counts")

# -- shared by the three functions -----------------------------------------------------------
_N_TRIALS = Option("n_trials", "int", 1000, "trials",
                   "Monte Carlo trials per point (intervals need two)", minimum=2,
                   short="-n", metavar="N")
_CI_PROB = Option("ci_prob", "float", 0.95, "1", "confidence level of the intervals",
                  minimum=0.0, maximum=1.0, open_min=True, open_max=True, metavar="P")
_SEED = Option("seed", "int", None, "1", "seed of the random draws (the API's rng)", minimum=0,
               maximum=2**63 - 1, short="-s", metavar="SEED")
_METHOD = Option("method", "str", "auto", "1", "sampling method", choices=METHODS)
_CONTEXT = Option("context", "tokens", REQUIRED, "tokens", "context length L (k = 1024)",
                  minimum=1, maximum=MAX_CONTEXT, vector=True, short="-c", metavar="L[,L...]")
_MODEL_ROUTING = Option("routing", "routing", None, "1",
                        "routing of the MoE layers (E and k from the model card): "
                        + ROUTING_SYNTAX, short="-r")

#: Options of a run rather than of a point: a sweep sets them once for every cell (its
#: ``n_trials``, ``ci_prob`` and ``seed`` keys), so they are not cell parameters.
RUN_OPTIONS = ("n_trials", "ci_prob", "seed")

#: The options of :func:`mcroute.simulate`.
SIMULATE_OPTIONS = (
    Option("routing", "routing", "uniform", "1", "routing distribution: " + ROUTING_SYNTAX,
           short="-r"),
    Option("n_experts", "int", REQUIRED, "experts", "routed experts per layer E", minimum=1,
           maximum=MAX_EXPERTS, short="-E", metavar="E"),
    Option("top_k", "int", REQUIRED, "experts", "experts per token k",
           minimum=1, maximum=MAX_EXPERTS, short="-k", metavar="K"),
    Option("batch_size", "tokens", REQUIRED, "tokens", "tokens per decode microbatch B",
           minimum=1, maximum=MAX_BATCH_SIZE, vector=True, short="-b", metavar="B[,B...]"),
    _N_TRIALS,
    Option("n_layers", "int", 1, "layers", "MoE layers per microbatch", minimum=1,
           maximum=MAX_LAYERS, metavar="L"),
    Option("n_devices", "int", 1, "devices", "devices for expert parallelism", minimum=1,
           maximum=MAX_EXPERTS, metavar="D"),
    Option("capacity_factor", "float", 1.0, "1", "expert capacity factor (overflow_fraction)",
           minimum=0.0, open_min=True, maximum=MAX_CAPACITY_FACTOR),
    _METHOD,
    _CI_PROB,
    _SEED,
)

#: The options of :func:`mcroute.decode_throughput` (its Deployment's are DEPLOYMENT_OPTIONS).
THROUGHPUT_OPTIONS = (
    _CONTEXT,
    Option("batch_size", "batch", "max", "sequences",
           "sequences per decode batch, or 'max' (the admissible batch)", minimum=1,
           maximum=MAX_BATCH_SIZE, vector=True, short="-b", metavar="max|B[,B...]"),
    Option("batch_per_gpu", "tokens", None, "sequences",
           "sequences per GPU instead of batch_size (batch_size = batch_per_gpu x n_gpus)",
           minimum=1, maximum=MAX_BATCH_SIZE, vector=True, metavar="B[,B...]"),
    Option("tpot", "time", None, "s",
           "time-per-output-token target: the largest batch meeting it (instead of batch_size)",
           metavar="SECONDS|50ms"),
    _MODEL_ROUTING,
    _N_TRIALS,
    _METHOD,
    _CI_PROB,
    _SEED,
)

#: The options of :func:`mcroute.qs_analysis` (its Deployment's are DEPLOYMENT_OPTIONS).
QS_OPTIONS = (
    Option("q", "q", None, "1", "quality-equivalence factor: a number or a q string",
           vector=True),
    _CONTEXT,
    _MODEL_ROUTING,
    Option("dense_style", "str", "widen", "1", "how the dense twin is built",
           choices=DENSE_STYLES),
    Option("dense_n_gpus", "int", None, "GPUs", "GPUs of the twin (default: n_gpus)",
           minimum=1, maximum=MAX_GPUS),
    Option("n_q_samples", "int", 256, "1", "draws of an uncertain q", minimum=1,
           maximum=MAX_Q_SAMPLES),
    _METHOD,
    Option("dense_model", "model", None, "1", "compare with this dense card instead of a twin",
           metavar="NAME|PATH"),
    _N_TRIALS,
    _CI_PROB,
    _SEED,
)


def by_name(options) -> dict[str, Option]:
    """``{name: option}`` of a tuple of options."""
    return {o.name: o for o in options}


def check_sizes(opt: Option, value) -> tuple[list[int], bool]:
    """One size or a list of distinct sizes of ``opt`` (``"128k"`` accepted), in its range.

    Returns ``(values, given_as_one)`` (:func:`mcroute._base.units.parse_size_list`); errors
    name the option.
    """
    return parse_size_list(opt.name, value, None if opt.maximum is None else int(opt.maximum))
