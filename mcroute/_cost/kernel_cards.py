"""Kernel-efficiency cards: :class:`KernelCard`, loading and choosing one (array floor, 3).

May import: numpy, the standard library, ``mcroute._base``.

A kernel card (``models/kernels/<name>.toml``, written by :mod:`mcroute._cost.fit_kernels`) holds
the fitted parameters of the calibrated time functions of :mod:`mcroute._cost.calibration` (their
names, units and meaning are in that module's docstring), each with its uncertainty, clip bounds
and source rows. The names are re-exported by :mod:`mcroute._cost.calibration`.
"""

from __future__ import annotations

import functools
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mcroute._base.resources import kernels_dir
from mcroute._base.validate import McrouteError

__all__ = [
    "KernelParam",
    "KernelCard",
    "PARAM_NAMES",
    "GENERIC_CARD",
    "list_kernel_cards",
    "load_kernel_card",
    "kernel_card_for",
]

#: Name of the fallback card for hardware without kernel data.
GENERIC_CARD = "generic"

#: Every parameter a kernel card must define, with its units.
PARAM_NAMES = {
    "moe_layer_floor_s": "s",
    "moe_expert_overhead_s": "s",
    "moe_stream_eta_max": "1",
    "moe_stream_m_half": "tokens",
    "moe_compute_eta": "1",
    "moe_overlap_p": "1",
    "dense_floor_s": "s",
    "dense_stream_eta": "1",
    "dense_compute_eta": "1",
    "dense_overlap_p": "1",
    "mla_eta_bw": "1",
    "mla_eta_compute": "1",
    "gqa_eta_bw": "1",
    "gqa_eta_compute": "1",
    "hbm_eta": "1",
    "layer_overhead_s": "s",
    "a2a_latency_scaleup_s": "s",
    "a2a_latency_scaleout_s": "s",
    "a2a_eta_scaleup": "1",
    "a2a_eta_scaleout": "1",
    "allreduce_latency_s": "s",
    "allreduce_eta": "1",
}

# Hard physical limits applied to every value (card and draw): efficiencies in (0, 1], overheads
# and half-saturation loads >= 0, overlap exponents >= 1. These are what make every calibrated
# time >= its roofline time.
_EFF_MIN = 1e-3
_LIMITS = {n: ((_EFF_MIN, 1.0) if u == "1" else (0.0, math.inf)) for n, u in PARAM_NAMES.items()}
_LIMITS["moe_overlap_p"] = (1.0, 64.0)
_LIMITS["dense_overlap_p"] = (1.0, 64.0)

_DISTS = ("normal", "lognormal")
_PARAM_KEYS = {"value", "sd", "units", "dist", "lower", "upper", "source", "fit_residual",
               "residual_kind", "note"}


@dataclass(frozen=True)
class KernelParam:
    """One fitted kernel parameter with its uncertainty and provenance.

    Attributes
    ----------
    value : float
        Point estimate in SI units.
    sd : float
        One-sigma uncertainty (fit covariance and/or spread across sources), same units.
    units : str
        ``"1"``, ``"s"``, ``"tokens"``.
    dist : str
        ``"normal"`` or ``"lognormal"``: how per-trial draws are made. A lognormal draw is
        ``value * exp(s z)`` with ``s = sqrt(log(1 + (sd / value)**2))`` (median ``value``; the
        log-scale width of a lognormal whose coefficient of variation is ``sd / value``).
    lower, upper : float
        Clip bounds of the draws (always within the parameter's physical limits).
    source : str
        File(s) and rows the value was fitted on.
    fit_residual : float
        Residual of the fit (see ``residual_kind``), NaN when the value is not a fit.
    residual_kind : str
        ``"max_rel"`` (largest |model/measured - 1| over the fitted rows) or ``"none"``.
    note : str
        How the value was obtained, caveats.
    """

    value: float
    sd: float
    units: str
    dist: str
    lower: float
    upper: float
    source: str
    fit_residual: float = math.nan
    residual_kind: str = "none"
    note: str = ""


@dataclass(frozen=True)
class KernelCard:
    """A kernel-efficiency card: one hardware family and kernel library.

    Attributes
    ----------
    name : str
    description : str
    hardware : tuple of str
        Hardware card names this card applies to.
    params : Mapping[str, KernelParam]
    origin : str
        The file the card was read from.
    """

    name: str
    description: str
    hardware: tuple
    params: Mapping = field(hash=False)
    origin: str = field(default="", compare=False)

    def point(self) -> dict:
        """Return the central value of every parameter as a dict of floats.

        Examples
        --------
        >>> p = load_kernel_card("hopper").point()
        >>> 0 < p["hbm_eta"] <= 1
        True
        """
        return {k: float(v.value) for k, v in self.params.items()}

    def draw(self, n, rng=None) -> dict:
        """Draw ``n`` per-trial parameter sets, each clipped to its bounds.

        Parameters
        ----------
        n : int
            Number of draws (trials), >= 1.
        rng : None, int, SeedSequence or Generator
            Seed; the same seed gives the same draws. Parameters are drawn in sorted-name order
            from one ``(n_params, n)`` block of standard normals.

        Returns
        -------
        dict of str to numpy.ndarray
            Each value has shape ``(n,)``.

        Examples
        --------
        >>> d = load_kernel_card("hopper").draw(4, rng=1)
        >>> d["hbm_eta"].shape, bool((d["hbm_eta"] <= 1).all())
        ((4,), True)
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise McrouteError(f"n (number of draws) must be an integer >= 1, got {n!r}")
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        names = sorted(self.params)
        z = gen.standard_normal((len(names), int(n)))
        out = {}
        for i, name in enumerate(names):
            p = self.params[name]
            if p.sd == 0:
                x = np.full(int(n), p.value)
            elif p.dist == "lognormal":
                x = p.value * np.exp(math.sqrt(math.log1p((p.sd / p.value) ** 2)) * z[i])
            else:
                x = p.value + p.sd * z[i]
            out[name] = np.clip(x, p.lower, p.upper)
        return out


def _parse_card(data: dict, origin: str) -> KernelCard:
    _check_card_keys(data, origin)
    params = {name: _parse_param(name, spec, f"{origin}: params.{name}")
              for name, spec in data["params"].items()}
    return KernelCard(name=str(data["name"]), description=str(data["description"]),
                      hardware=tuple(data["hardware"]), params=params, origin=origin)


def _check_card_keys(data: dict, origin: str) -> None:
    """The card's top-level fields and the set of parameter names."""
    for key in ("name", "description", "hardware", "params"):
        if key not in data:
            raise McrouteError(f"{origin}: missing required field {key!r}")
    extra = set(data) - {"name", "description", "hardware", "params", "source_dir"}
    if extra:
        raise McrouteError(f"{origin}: unknown key(s) {sorted(extra)} (allowed: name, "
                           "description, hardware, source_dir, params)")
    if not isinstance(data["hardware"], list) or not all(isinstance(h, str)
                                                         for h in data["hardware"]):
        raise McrouteError(f"{origin}: field 'hardware' must be a list of hardware card names")
    raw = data["params"]
    if not isinstance(raw, dict):
        raise McrouteError(f"{origin}: field 'params' must be a table of parameters")
    missing = sorted(set(PARAM_NAMES) - set(raw))
    if missing:
        raise McrouteError(f"{origin}: missing parameter(s) {', '.join(missing)}")
    unknown = sorted(set(raw) - set(PARAM_NAMES))
    if unknown:
        raise McrouteError(f"{origin}: unknown parameter(s) {', '.join(unknown)} "
                           f"(known: {', '.join(PARAM_NAMES)})")


def _param_numbers(name: str, spec: dict, where: str) -> dict:
    """The table ``params.<name>`` checked for its keys; its numbers as floats."""
    if not isinstance(spec, dict):
        raise McrouteError(f"{where} must be a table")
    bad = set(spec) - _PARAM_KEYS
    if bad:
        raise McrouteError(f"{where}: unknown key(s) {sorted(bad)} "
                           f"(allowed: {', '.join(sorted(_PARAM_KEYS))})")
    for key in ("value", "sd", "units", "dist", "source"):
        if key not in spec:
            raise McrouteError(f"{where}: missing required key {key!r}")
    lim_lo, lim_hi = _LIMITS[name]
    nums = {}
    for key in ("value", "sd", "lower", "upper", "fit_residual"):
        v = spec.get(key, {"lower": lim_lo, "upper": lim_hi, "fit_residual": math.nan}.get(key))
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise McrouteError(f"{where}.{key} must be a number, got {v!r}")
        nums[key] = float(v)
    return nums


def _parse_param(name: str, spec, where: str) -> KernelParam:
    nums = _param_numbers(name, spec, where)
    lim_lo, lim_hi = _LIMITS[name]
    if spec["units"] != PARAM_NAMES[name]:
        raise McrouteError(f"{where}.units must be {PARAM_NAMES[name]!r}, "
                           f"got {spec['units']!r}")
    if spec["dist"] not in _DISTS:
        raise McrouteError(f"{where}.dist must be one of {', '.join(_DISTS)}, "
                           f"got {spec['dist']!r}")
    lo = max(nums["lower"], lim_lo)
    hi = min(nums["upper"], lim_hi)
    if not (lo <= nums["value"] <= hi) or not math.isfinite(nums["value"]):
        raise McrouteError(f"{where}.value must lie in [{lo:g}, {hi:g}] (clip bounds and "
                           f"physical limits), got {nums['value']!r}")
    if not (nums["sd"] >= 0 and math.isfinite(nums["sd"])):
        raise McrouteError(f"{where}.sd must be a finite number >= 0, got {nums['sd']!r}")
    if spec["dist"] == "lognormal" and nums["value"] <= 0 and nums["sd"] > 0:
        raise McrouteError(f"{where}: a lognormal parameter needs value > 0")
    return KernelParam(
        value=nums["value"], sd=nums["sd"], units=spec["units"], dist=spec["dist"],
        lower=lo, upper=hi, source=str(spec["source"]), fit_residual=nums["fit_residual"],
        residual_kind=str(spec.get("residual_kind", "none")), note=str(spec.get("note", "")))


def list_kernel_cards() -> list:
    """Return the names of the bundled kernel cards (sorted).

    Examples
    --------
    >>> list_kernel_cards()
    ['generic', 'hopper', 'mi300']
    """
    folder = kernels_dir()
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


@functools.lru_cache(maxsize=32)
def _load_cached(key: str, is_path: bool) -> KernelCard:
    if is_path:
        path = Path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise McrouteError(f"cannot read kernel card {key!r}: {exc.strerror or exc}") \
                from None
        origin, expect = str(path), None
    else:
        res = kernels_dir().joinpath(key + ".toml")
        text = res.read_text(encoding="utf-8")
        origin, expect = str(res), key
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise McrouteError(f"{origin}: not valid TOML: {exc}") from None
    if expect is not None and data.get("name") != expect:
        raise McrouteError(f"{origin}: field 'name' must equal the file name {expect!r}, "
                           f"got {data.get('name')!r}")
    return _parse_card(data, origin)


def load_kernel_card(name_or_path) -> KernelCard:
    """Load a kernel card by name (see :func:`list_kernel_cards`) or from a ``.toml`` path.

    Raises
    ------
    McrouteError
        Unknown name (the message lists the known ones), unreadable file, invalid TOML, or a
        missing, unknown or out-of-range field (named with the file).

    Examples
    --------
    >>> load_kernel_card("hopper").name
    'hopper'
    """
    if isinstance(name_or_path, KernelCard):
        return name_or_path
    s = str(name_or_path)
    if s.endswith(".toml") or "/" in s or isinstance(name_or_path, Path):
        return _load_cached(str(Path(s).resolve()), True)
    key = s.strip().lower()
    known = list_kernel_cards()
    if key not in known:
        raise McrouteError(f"unknown kernel card {s!r}; known: {', '.join(known)}")
    return _load_cached(key, False)


def kernel_card_for(hardware) -> KernelCard:
    """Return the kernel card that applies to a hardware card, else the generic card.

    Parameters
    ----------
    hardware : str or object with a ``name`` attribute (``HardwareSpec``)

    Returns
    -------
    KernelCard
        The card listing the hardware name in its ``hardware`` field; ``"generic"`` (its
        ``name`` says so) when no card lists it.

    Examples
    --------
    >>> kernel_card_for("h800").name, kernel_card_for("no-such-gpu").name
    ('hopper', 'generic')
    """
    hw = getattr(hardware, "name", hardware)
    if not isinstance(hw, str):
        raise McrouteError(f"hardware must be a hardware name or HardwareSpec, got {hardware!r}")
    key = hw.strip().lower()
    for name in list_kernel_cards():
        if name == GENERIC_CARD:
            continue
        card = load_kernel_card(name)
        if key in card.hardware:
            return card
    return load_kernel_card(GENERIC_CARD)
