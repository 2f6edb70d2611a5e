"""Model and hardware cards: listing, names and aliases, loading by name or path.

The cards are TOML files shipped in ``models/llm/`` and ``models/hardware/`` (docs/cards.md).
:func:`load_model` takes a card name, a ``.toml`` path, or a Hugging Face ``config.json`` (or the
folder holding one); :func:`load_hardware` takes a card name, one of the short names in
:data:`HARDWARE_ALIASES`, or a ``.toml`` path. An unknown name is an error that suggests the
closest known names ("did you mean") and lists them all.

This module is also the home of the cards' public names (:class:`ModelSpec`,
:class:`HardwareSpec`, :class:`LayerSpec`, :func:`dtype_bytes`, :data:`DTYPE_BYTES`), defined in
:mod:`mcroute._cards.spec`, :mod:`~mcroute._cards.hardware` and :mod:`~mcroute._cards.dtypes`.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path

from mcroute._base.resources import hardware_dir, models_dir
from mcroute._base.validate import McrouteError, read_bounded, short_repr
from mcroute._cards.dtypes import DTYPE_BYTES, dtype_bytes
from mcroute._cards.hardware import HardwareSpec
from mcroute._cards.hf import HF_MODEL_TYPES
from mcroute._cards.spec import LayerSpec, ModelSpec

__all__ = [
    "DTYPE_BYTES",
    "HARDWARE_ALIASES",
    "HF_MODEL_TYPES",
    "HardwareSpec",
    "LayerSpec",
    "ModelSpec",
    "dtype_bytes",
    "list_hardware",
    "list_models",
    "load_hardware",
    "load_model",
]

#: Short hardware names and the card each stands for. The one table of aliases: each short name
#: is what people call the part and matches exactly one shipped card (``h200``, ``b200``,
#: ``h800`` and the ``mi3xx`` cards are already short). ``a100`` is the 80 GB SXM card, the only
#: A100 card shipped; a 40 GB part needs its own card. :func:`list_hardware` lists card names only.
HARDWARE_ALIASES = {
    "h100": "h100-sxm",
    "a100": "a100-80gb",
}

#: Number of "did you mean" suggestions in an unknown-name error.
_N_SUGGESTIONS = 3


def _card_names(folder) -> list[str]:
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def list_models() -> list[str]:
    """Names of the model cards shipped with mcroute, sorted.

    Examples
    --------
    >>> "deepseek-v3" in list_models()
    True
    """
    return _card_names(models_dir())


def list_hardware() -> list[str]:
    """Names of the hardware cards shipped with mcroute, sorted (aliases not included).

    Examples
    --------
    >>> "h100-sxm" in list_hardware()
    True
    """
    return _card_names(hardware_dir())


def _unknown(kind, given, known, aliases) -> McrouteError:
    """The unknown-name error: close matches among names and aliases, then every name."""
    key = str(given).strip().lower()
    close = difflib.get_close_matches(key, [*known, *aliases], n=_N_SUGGESTIONS, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    also = ""
    if aliases:
        also = " (aliases: " + ", ".join(f"{a} = {c}" for a, c in aliases.items()) + ")"
    return McrouteError(f"unknown {kind} {short_repr(str(given))}{hint}; known: "
                        f"{', '.join(known)}{also}")


def _is_path(x, known=()) -> bool:
    """Whether ``x`` names a file or folder rather than a card.

    A path object, a ``.toml`` or ``.json`` name, a name with a path separator, or an existing
    folder that is not a card name.
    """
    if isinstance(x, os.PathLike):
        return True
    s = str(x)
    if s.endswith((".toml", ".json")) or os.sep in s or "/" in s:
        return True
    return s.strip().lower() not in known and os.path.isdir(s)


def _check_type(name_or_path, kind, what):
    if isinstance(name_or_path, (dict, ModelSpec, HardwareSpec)) \
            or not isinstance(name_or_path, (str, os.PathLike)):
        raise McrouteError(f"{kind} must be {what}, got {type(name_or_path).__name__}")


def _parse_toml(text, origin):
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:  # ValueError: an int of > 4300 digits
        raise McrouteError(f"{origin}: not valid TOML: {str(exc)[:200]}") from None
    except RecursionError:
        raise McrouteError(f"{origin}: not valid TOML: nested too deeply") from None


def _read_named(key, folder, kind):
    """Read the shipped card ``key`` (a known card name)."""
    origin = f"{kind} card {key}.toml"
    data = _parse_toml(folder.joinpath(key + ".toml").read_text(encoding="utf-8"), origin)
    if data.get("name") != key:
        raise McrouteError(f"{origin}: field 'name' must equal the file name {key!r}, "
                           f"got {data.get('name')!r}")
    return data, origin


def _read_path(path, kind):
    """Read a card file given by path."""
    path = Path(path)
    text = read_bounded(path, f"{kind} card {str(path)!r}")
    return _parse_toml(text, str(path)), str(path)


def _hf_config_path(path: Path) -> Path | None:
    """The ``config.json`` a model path points to (the file, or inside the folder), else None."""
    try:
        if path.is_dir():
            inner = path / "config.json"
            if not inner.is_file():
                raise McrouteError(f"model folder {str(path)!r} holds no config.json (a model is "
                                   "a card name, a .toml card or a Hugging Face config.json)")
            return inner
    except (OSError, ValueError) as exc:  # e.g. a NUL byte in the path
        raise McrouteError(f"cannot read model {short_repr(str(path))}: {exc}") from None
    return path if path.suffix.lower() == ".json" else None


def load_model(name_or_path: str | os.PathLike) -> ModelSpec:
    """Load a model card by name (see :func:`list_models`), ``.toml`` path or HF config.json.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        Card name such as ``"deepseek-v3"`` (case-insensitive); a path to a card file; or a path
        to a Hugging Face ``config.json`` or to the folder holding one (read with
        :meth:`ModelSpec.from_hf_config`).

    Returns
    -------
    ModelSpec

    Raises
    ------
    McrouteError
        Unknown name (the message suggests close names and lists the known ones), unreadable
        file, invalid TOML or JSON, or a card field that is missing, unknown, of the wrong type
        or out of range (named with the file).

    Examples
    --------
    >>> m = load_model("deepseek-v3")
    >>> m.n_layers, m.n_experts, m.top_k, m.n_shared_experts, len(m.moe_layers)
    (61, 256, 8, 1, 58)
    >>> round(m.total_params / 1e9, 1), round(m.active_params / 1e9, 1)
    (671.0, 37.6)
    >>> m.release_dtype
    'fp8'
    """
    _check_type(name_or_path, "model", "a card name, a path to a .toml card or a Hugging Face "
                                       "config.json (or its folder)")
    known = list_models()
    if _is_path(name_or_path, known):
        hf = _hf_config_path(Path(name_or_path))
        if hf is not None:
            return ModelSpec.from_hf_config(hf)
        data, origin = _read_path(name_or_path, "model")
    else:
        key = str(name_or_path).strip().lower()
        if key not in known:
            raise _unknown("model", name_or_path, known, {})
        data, origin = _read_named(key, models_dir(), "model")
    return ModelSpec.from_dict(data, origin=origin)


def load_hardware(name_or_path: str | os.PathLike) -> HardwareSpec:
    """Load a hardware card by name (see :func:`list_hardware`), alias or ``.toml`` path.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        Card name such as ``"h100-sxm"`` (case-insensitive), a short name from
        :data:`HARDWARE_ALIASES` (``"h100"`` is ``"h100-sxm"``), or a path to a card file.

    Returns
    -------
    HardwareSpec
        Named by its card (``load_hardware("h100").name == "h100-sxm"``).

    Raises
    ------
    McrouteError
        Unknown name (the message suggests close names and aliases and lists the known ones),
        unreadable file, invalid TOML, or a bad card field (named with the file).

    Examples
    --------
    >>> h = load_hardware("h200")
    >>> h.hbm_bandwidth / 1e12
    4.8
    >>> load_hardware("h100").name
    'h100-sxm'
    """
    _check_type(name_or_path, "hardware", "a card name or a path to a .toml file")
    known = list_hardware()
    if _is_path(name_or_path, [*known, *HARDWARE_ALIASES]):
        if str(name_or_path).lower().endswith(".json"):
            raise McrouteError(f"hardware {short_repr(str(name_or_path))}: a hardware card is "
                               "a .toml file (a .json config describes a model)")
        data, origin = _read_path(name_or_path, "hardware")
    else:
        key = str(name_or_path).strip().lower()
        key = HARDWARE_ALIASES.get(key, key)
        if key not in known:
            raise _unknown("hardware", name_or_path, known, HARDWARE_ALIASES)
        data, origin = _read_named(key, hardware_dir(), "hardware")
    return HardwareSpec.from_dict(data, origin=origin)
