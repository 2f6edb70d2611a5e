"""The paper's four cases and the default q of the main job (``mcroute qs``, docs/qs.md).

Labeled floor (4). May import: the floors below (``mcroute._base``, ``mcroute._quality``;
for type hints only, ``mcroute._cards``).
"""

from __future__ import annotations

import csv
import functools
from typing import TYPE_CHECKING

from mcroute._base.resources import project_data_dir
from mcroute._base.validate import McrouteError
from mcroute._quality.quality import QSpec, as_q, parse_q

if TYPE_CHECKING:
    from mcroute._cards.spec import ModelSpec

__all__ = ["PAPER_CASES", "PAPER_CONTEXTS", "PAPER_GPUS", "PAPER_HARDWARE",
           "SCALING_LAW_LOG_SD", "default_q", "paper_cases"]

#: The paper's four models on the default deployment of ``mcroute qs`` (docs/qs.md): one 8-GPU
#: H200 node (141 GiB HBM, 4.8 TB/s each), each model's weights in the dtype they were released
#: in (the card's ``release_dtype``, the same default as every other command: DeepSeek-V3 fp8,
#: Grok-1 int8, Qwen3-235B and Switch-C bf16) and a bf16 KV cache. DeepSeek-V3's MLA attention
#: runs data-parallel, as engines serve it: under tensor-parallel attention every rank holds the
#: whole latent cache (the calibrated model's engine memory layout), which cuts the admissible
#: batch 8x. Each dense twin keeps its MoE's dtype and attention. Switch-C (1.57T parameters)
#: does not fit on the node, which is the feasibility question the paper raises.
#: ``--weight-dtype bf16`` runs every case in bf16 (the main job before 2026-11-30).
PAPER_CASES = (
    ("deepseek-v3", {"attention_parallel": "data"}),
    ("qwen3-235b-a22b", {}),
    ("grok-1", {}),
    ("switch-c-2048", {}),
)
PAPER_HARDWARE = "h200"
PAPER_GPUS = 8
PAPER_CONTEXTS = (4096, 8192, 16384, 32768, 65536, 131072)
#: Log-sd given to a scaling-law point estimate of q when no benchmark fit exists.
SCALING_LAW_LOG_SD = 0.5


def default_q(model: str | ModelSpec) -> tuple[QSpec, str]:
    """The q used when none is given: the benchmark-fit estimate, else the scaling law.

    1. :func:`mcroute.estimate_q` from the shared benchmark tables (a bootstrap distribution),
       when the tables score the model;
    2. otherwise the scaling-law point estimate in the project's ``data/q_estimates.csv``
       (Clark et al. 2022 effective parameters), widened to a log-normal with log-sd
       :data:`SCALING_LAW_LOG_SD` to say that it is a model, not a measurement.

    Returns
    -------
    (QSpec, str)
        The q and a one-line description of where it came from.
    """
    return _default_q(model if isinstance(model, str) else model.name)


@functools.lru_cache(maxsize=64)
def _default_q(name: str):
    """:func:`default_q` by model name, remembered (reading the tables and fitting is slow)."""
    try:
        q = as_q(parse_q(f"estimate:{name}"))
        if not q.is_point:
            lo, hi = q.interval(0.95)
            return q, f"benchmark fit (median {q.median():.3g}, 95% {lo:.3g}-{hi:.3g})"
    except McrouteError:
        pass
    path = project_data_dir() / "q_estimates.csv"
    with path.open() as fh:
        rows = [r for r in csv.DictReader(line for line in fh if not line.startswith("#"))]
    for r in rows:
        if r["model"] == name and r["method"] == "scaling_law":
            med = float(r["q_median"])
            q = as_q(f"lognormal:{med},{SCALING_LAW_LOG_SD}")
            return q, f"scaling law (Clark et al. 2022) {med:.3g}, log-sd {SCALING_LAW_LOG_SD}"
    raise McrouteError(f"no default q for {name!r}: give --q (a number, lognormal:MEDIAN,SIGMA "
                       "or estimate)")


def paper_cases() -> list[dict]:
    """The paper's four cases as ``mcroute qs`` runs them, ready for :func:`mcroute.qs_analysis`.

    Each is a dict of keyword arguments: ``model``, ``hardware`` (H200), ``n_gpus`` (8),
    ``context`` (4k … 128k) and the case's deployment options (DeepSeek-V3: data-parallel
    attention); the weights are in the card's release dtype and q is left to its default, the
    estimate (:func:`default_q`).

    Examples
    --------
    >>> import mcroute as mr
    >>> [c["model"] for c in mr.paper_cases()]
    ['deepseek-v3', 'qwen3-235b-a22b', 'grok-1', 'switch-c-2048']
    >>> mr.paper_cases()[0]["attention_parallel"], mr.paper_cases()[0]["context"][-1]
    ('data', 131072)
    """
    return [{"model": model, "hardware": PAPER_HARDWARE, "n_gpus": PAPER_GPUS,
             "context": list(PAPER_CONTEXTS), **options} for model, options in PAPER_CASES]
