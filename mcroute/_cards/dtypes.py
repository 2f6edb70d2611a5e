"""The dtype table: bytes per stored value of each supported dtype.

Used by the cards (``release_dtype``, hardware peak FLOP/s keys) and by the cost model.
"""

from __future__ import annotations

from mcroute._base.validate import McrouteError

__all__ = ["DTYPE_BYTES", "dtype_bytes"]

#: Bytes per stored value of each supported dtype.
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "fp4": 0.5, "int4": 0.5}


def dtype_bytes(dtype: str) -> float:
    """Bytes per value of ``dtype`` [B].

    Parameters
    ----------
    dtype : str
        One of ``fp32, bf16, fp16, fp8, int8, fp4, int4`` (case-insensitive).

    Returns
    -------
    float
        Bytes per value, e.g. 2 for ``bf16`` and 0.5 for ``fp4``.

    Examples
    --------
    >>> dtype_bytes("bf16"), dtype_bytes("FP4")
    (2, 0.5)
    """
    key = str(dtype).strip().lower() if isinstance(dtype, str) else None
    if key not in DTYPE_BYTES:
        raise McrouteError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    return DTYPE_BYTES[key]

