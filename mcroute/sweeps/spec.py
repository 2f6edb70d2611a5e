"""Sweep specs: reading and validating a TOML spec (or a mapping) into a :class:`SweepSpec`.

Values are normalised by the cell kind's parameters (:mod:`mcroute.sweeps.params`), so they
name the cells' random streams (:func:`cell_seed`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mcroute._base.validate import McrouteError, check_prob
from mcroute._labeled.results import DEFAULT_QUANTILES
from mcroute._version import __version__
from mcroute.sweeps.kinds import CELL_KINDS
from mcroute.sweeps.params import normalize

__all__ = ["MAX_CELLS", "MAX_SPEC_BYTES", "TOP_LEVEL_KEYS", "SweepSpec", "cell_seed",
           "load_sweep_spec"]

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


def load_sweep_spec(source: str | os.PathLike | Mapping) -> SweepSpec:
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
    raw, where = _read_source(source)
    kind, settings = _top_level(raw, where)
    axes_raw, fixed_raw = _tables(raw, kind, where)
    axes = [_axis(kind.param(name), values, f"{where}: [axes] {name}")
            for name, values in axes_raw.items()]
    fixed = [(name, _fixed(kind.param(name), value, f"{where}: [fixed] {name}"))
             for name, value in fixed_raw.items()]
    given = set(axes_raw) | set(fixed_raw)
    for p in kind.params:
        if p.required and p.name not in given:
            raise McrouteError(f"{where}: parameter {p.name!r} of kind {kind.name!r} is required "
                               "(give it in [fixed] or [axes])")
    return SweepSpec(kind=kind.name, axes=tuple(axes), fixed=tuple(sorted(fixed)),
                     source=where, **settings)


def _read_source(source) -> tuple[dict, str]:
    """``(raw spec, where)`` of a mapping or a TOML file (named in every error)."""
    if isinstance(source, Mapping):
        return dict(source), "<spec>"
    if not isinstance(source, (str, os.PathLike)):
        raise McrouteError(f"spec must be a path to a TOML file or a mapping, got "
                           f"{type(source).__name__}")
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
        return tomllib.loads(blob.decode("utf-8")), where
    except UnicodeDecodeError:
        raise McrouteError(f"{where}: not UTF-8 text (a TOML file is expected)") from None
    except tomllib.TOMLDecodeError as exc:
        raise McrouteError(f"{where}: malformed TOML: {exc}") from None


def _top_level(raw: dict, where: str):
    """The cell kind and the checked top-level settings (SweepSpec keywords)."""
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
    if "seed" not in raw:
        raise McrouteError(f"{where}: key 'seed' is required (an integer in [0, 2**63)); every "
                           "cell's random stream is derived from it")
    seed = raw["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise McrouteError(f"{where}: seed must be an integer in [0, 2**63), got {seed!r}")
    n_trials = _check_trials(raw.get("n_trials", 1000), f"{where}: n_trials")
    ci = _ci_prob(raw.get("ci_prob", 0.95), where)
    quantiles = _quantiles(raw.get("quantiles", list(DEFAULT_QUANTILES)), where)
    keep = raw.get("keep_trials", False)
    if not isinstance(keep, bool):
        raise McrouteError(f"{where}: keep_trials must be true or false, got {keep!r}")
    cpt = raw.get("cells_per_task")
    if cpt is not None and (isinstance(cpt, bool) or not isinstance(cpt, int) or cpt < 1):
        raise McrouteError(f"{where}: cells_per_task must be an integer >= 1, got {cpt!r}")
    desc = raw.get("description", "")
    if not isinstance(desc, str):
        raise McrouteError(f"{where}: description must be a string, got {desc!r}")
    return CELL_KINDS[kind_name], {
        "seed": int(seed), "n_trials": n_trials, "ci_prob": ci, "quantiles": quantiles,
        "keep_trials": keep, "cells_per_task": cpt, "description": desc}


def _ci_prob(ci, where: str) -> float:
    if isinstance(ci, bool) or not isinstance(ci, (int, float)):
        raise McrouteError(f"{where}: ci_prob must be a number in (0, 1), got {ci!r}")
    try:
        return float(check_prob("ci_prob", ci))
    except McrouteError as exc:
        raise McrouteError(f"{where}: {exc}") from None


def _quantiles(qs, where: str) -> tuple:
    if (not isinstance(qs, list) or not qs or any(
            isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= 1
            for q in qs)):
        raise McrouteError(f"{where}: quantiles must be a non-empty list of levels in [0, 1], "
                           f"got {qs!r}")
    if len({float(q) for q in qs}) != len(qs):
        raise McrouteError(f"{where}: quantiles: repeated level in {qs!r}")
    return tuple(float(q) for q in qs)


def _tables(raw: dict, kind, where: str) -> tuple[Mapping, Mapping]:
    """The [axes] and [fixed] tables, their keys checked against the kind's parameters."""
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
    return axes_raw, fixed_raw


def _axis(p, values, at: str) -> tuple:
    """``(name, canonical values)`` of one [axes] entry."""
    if not isinstance(values, list) or not values:
        raise McrouteError(f"{at} must be a non-empty list of values, got {values!r}")
    norm = tuple(normalize(p, v, f"{at}[{i}]") for i, v in enumerate(values))
    if p.type == "batch" and "max" in norm:
        raise McrouteError(f"{at}: 'max' is only allowed in [fixed] (the default); an "
                           "axis of batch sizes must be integers")
    if len({type(v) for v in norm}) > 1:
        raise McrouteError(f"{at}: values must all be of one type (numbers or strings), "
                           f"got {values!r}")
    if len(set(norm)) != len(norm):
        raise McrouteError(f"{at}: repeated value in {values!r}")
    return p.name, norm


def _fixed(p, value, at: str):
    """The canonical value of one [fixed] entry (a tuple for a list of a vector parameter)."""
    if not isinstance(value, list):
        return normalize(p, value, at)
    if not p.vector:
        raise McrouteError(f"{at}: a single value is expected (lists go in [axes]), "
                           f"got {value!r}")
    if not value:
        raise McrouteError(f"{at}: empty list")
    norm = tuple(normalize(p, v, f"{at}[{i}]") for i, v in enumerate(value))
    if len({type(v) for v in norm}) > 1 or (len(norm) > 1 and not all(
            isinstance(v, (int, float)) for v in norm)):
        raise McrouteError(f"{at}: a list must hold numbers only, got {value!r}")
    if len(set(norm)) != len(norm):
        raise McrouteError(f"{at}: repeated value in {value!r}")
    return norm


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
    >>> from mcroute.sweeps.spec import cell_seed
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
