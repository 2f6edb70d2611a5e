"""The caption under a plot: what the figure assumes, in words, on at most two lines.

May import: numpy, xarray, and the plot package's ``select``.

The provenance attrs of a result (docs/schema.md) are JSON specs meant for machines. The caption
says the few things a reader needs, in words: which model on which hardware and how it is
deployed, the routing, q, the dims held fixed, and the trials, confidence level and seed that
repeat the run. When that does not fit on the lines allowed, the least important phrases are
left out first (the dense twin's style, then deployment details, then routing and q); the
subject, the fixed dims and the trials/CI/seed are always kept.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import xarray as xr

from mcroute.plot.select import fmt_value

__all__ = ["caption_text", "caption_parts"]

#: Importance of each kind of phrase: 0 is always kept, higher is left out earlier.
_KEEP, _ROUTING, _DETAIL, _TWIN = 0, 1, 2, 3

#: How each batch policy of ``decode_throughput`` is said.
_BATCH_MODES = {"max": "largest batch that fits", "per_gpu": "batch per GPU given",
                "tpot": "batch from a step-time target"}


def _spec(value):
    """A spec attr as a Python object (JSON strings are parsed; other values kept)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _name(value):
    v = _spec(value)
    if isinstance(v, dict):
        return v.get("name")
    return v if isinstance(v, str) and v else None


def _num(v) -> str:
    return f"{float(v):.3g}"


def _routing_words(r, with_size: bool) -> str | None:
    """``Zipf routing (α = 1.2) over 64 experts, top-4`` from a routing spec."""
    r = _spec(r)
    if isinstance(r, str):
        return f"routing {r}" if r else None
    if not isinstance(r, dict) or "kind" not in r:
        return None
    kind = r["kind"]
    base = {"uniform": "uniform", "zipf": "Zipf", "lognormal": "log-normal",
            "popularity": "explicit-popularity"}.get(kind, str(kind).replace("_", "-"))
    params = [f"{sym} = {_num(r[k])}" for k, sym in (("alpha", "α"), ("sigma", "σ"), ("rho", "ρ"))
              if isinstance(r.get(k), (int, float))]
    text = f"{base} routing" + (f" ({', '.join(params)})" if params else "")
    if kind == "group_limited" and isinstance(r.get("base"), dict):
        inner = _routing_words(r["base"], with_size=False) or "routing"
        text = f"group-limited {inner} ({r.get('topk_groups')} of {r.get('n_groups')} groups)"
        r = {**r["base"], **r}
    if with_size and isinstance(r.get("n_experts"), int) and isinstance(r.get("top_k"), int):
        text += f" over {r['n_experts']} experts, top-{r['top_k']}"
    return text


def _q_words(q) -> str | None:
    q = _spec(q)
    if isinstance(q, (int, float)) and not isinstance(q, bool):
        return f"q = {_num(q)}"
    if not isinstance(q, dict):
        return None
    kind = q.get("kind")
    if kind == "points":
        vals = q.get("values") or []
        return f"q = {', '.join(_num(v) for v in vals)}" if len(vals) <= 4 else None
    if "median" not in q:
        return None
    text = f"q ≈ {_num(q['median'])}"
    if "q05" in q and "q95" in q:
        text += f" (90%: {_num(q['q05'])}–{_num(q['q95'])})"
    source = q.get("source")
    if isinstance(source, dict) and source.get("method") == "fit":
        text += " from the benchmark fit"
    return text


def _facts(attrs: dict) -> dict:
    """One flat dict of what the run assumed: sweep fixed values, then the deployment spec."""
    facts = {}
    sweep = _spec(attrs.get("sweep_spec"))
    if isinstance(sweep, dict) and isinstance(sweep.get("fixed"), dict):
        facts.update(sweep["fixed"])
    dep = _spec(attrs.get("deployment"))
    if isinstance(dep, dict):
        facts.update({k: v for k, v in dep.items() if v is not None})
    for key in ("model", "hardware"):
        if _name(attrs.get(key)):
            facts[key] = _name(attrs[key])
    for key in ("routing", "q", "n_devices", "placement", "kernels", "dense_style",
                "batch_size_mode"):
        if key in attrs:
            facts[key] = attrs[key]
    return facts


def _subject(facts: dict) -> str | None:
    model, hw, n = facts.get("model"), facts.get("hardware"), facts.get("n_gpus")
    where = None
    if isinstance(hw, str):
        where = f"{n} × {hw}" if isinstance(n, int) else hw
    if isinstance(model, str):
        return f"{model} on {where}" if where else model
    return where


def _details(facts: dict) -> list[str]:
    out = []
    if isinstance(facts.get("weight_dtype"), str):
        out.append(f"{facts['weight_dtype']} weights")
    if isinstance(facts.get("attention_parallel"), str):
        out.append(f"{facts['attention_parallel']}-parallel attention")
    if facts.get("kernels") in ("calibrated", "roofline"):
        out.append(f"{facts['kernels']} kernels")
    if facts.get("batch_size_mode") in _BATCH_MODES:
        out.append(_BATCH_MODES[facts["batch_size_mode"]])
    n_dev = _spec(facts.get("n_devices"))
    if isinstance(n_dev, int) and n_dev > 1:
        out.append(f"{n_dev} devices")
    if isinstance(facts.get("placement"), str) and facts["placement"] not in ("", "contiguous"):
        out.append(f"{facts['placement']} expert placement")
    return out


def _stats(attrs: dict) -> str | None:
    parts = []
    if "n_trials" in attrs:
        parts.append(f"{fmt_value(attrs['n_trials'])} trials")
    if "ci_prob" in attrs:
        parts.append(f"{100 * float(attrs['ci_prob']):.3g}% CI")
    if "seed" in attrs:
        parts.append(f"seed {fmt_value(attrs['seed'])}")
    return ", ".join(parts) or None


def caption_parts(ds: xr.Dataset, fixed: dict | None = None, exclude=()) -> list[tuple]:
    """The caption's phrases in reading order, as ``(importance, group, text)``.

    Importance 0 is always kept; phrases of one group are joined by commas.
    """
    fixed = dict(fixed or {})
    drop = set(fixed) | set(exclude)
    facts = {k: v for k, v in _facts(dict(ds.attrs)).items() if k not in drop}
    for key in ("model", "hardware"):  # a model held fixed is the subject, not a "dim = value"
        if isinstance(fixed.get(key), (str, np.str_)):
            facts[key] = str(fixed.pop(key))
    subject = _subject(facts)
    parts = [(_KEEP, "what", subject)] if subject else []
    parts += [(_DETAIL, "what", d) for d in _details(facts)]
    routing = _routing_words(facts.get("routing"), with_size="model" not in facts)
    if routing:
        parts.append((_ROUTING, "routing", routing))
    q = _q_words(facts.get("q"))
    if q:
        parts.append((_ROUTING, "q", q))
    if isinstance(facts.get("dense_style"), str):
        parts.append((_TWIN, "twin", f"dense twin: {facts['dense_style']}"))
    parts += [(_KEEP, "fixed", f"{str(k).replace('_', ' ')} = {fmt_value(v)}")
              for k, v in fixed.items()]
    stats = _stats(dict(ds.attrs))
    if stats:
        parts.append((_KEEP, "stats", stats))
    return parts


def _join(parts) -> str:
    """Phrases of one group joined by ", ", groups by "; "."""
    out = ""
    for k, (_, group, text) in enumerate(parts):
        if k:
            out += ", " if parts[k - 1][1] == group else "; "
        out += text
    return out


def caption_text(ds: xr.Dataset, fixed: dict | None = None, exclude=(), *,
                 width: int | None = None, max_lines: int = 2) -> str:
    """The caption of a plot of ``ds``: its assumptions in words.

    Parameters
    ----------
    ds : xarray.Dataset
        Results with provenance attrs (docs/schema.md); absent attrs are left out.
    fixed : dict, optional
        Dims held at one value in the plot, said as ``dim = value``.
    exclude : iterable of str
        Assumptions to leave out because the plot shows them (the dims drawn as x and hue).
    width : int, optional
        Characters per line. Without it the caption is one line; with it, it is wrapped to at
        most ``max_lines`` lines, leaving out the least important phrases first.
    max_lines : int
        Lines allowed when ``width`` is given.

    Returns
    -------
    str
        Phrases separated by ``; `` (lines separated by newlines when wrapped).

    Examples
    --------
    >>> import xarray as xr
    >>> ds = xr.Dataset(attrs={"routing": '{"kind": "zipf", "alpha": 1.2, "n_experts": 64, '
    ...                        '"top_k": 4}', "n_trials": 50, "ci_prob": 0.95, "seed": 7})
    >>> caption_text(ds, {"layer": 0})
    'Zipf routing (α = 1.2) over 64 experts, top-4; layer = 0; 50 trials, 95% CI, seed 7'
    """
    parts = caption_parts(ds, fixed, exclude)
    if width is None:
        return _join(parts)
    while True:
        lines = textwrap.wrap(_join(parts), width, break_on_hyphens=False)
        droppable = [i for i, part in enumerate(parts) if part[0] > _KEEP]
        if len(lines) <= max_lines or not droppable:
            break
        worst = max(parts[i][0] for i in droppable)
        del parts[max(i for i in droppable if parts[i][0] == worst)]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(width - 1, 1)].rstrip() + "…"
    return "\n".join(lines)
