"""Hardware specs: one GPU's datasheet numbers (HBM, bandwidths, peak FLOP/s per dtype).

A *hardware card* (``models/hardware/<name>.toml``) holds one GPU's HBM size and bandwidth, dense
peak FLOP/s per dtype and interconnect bandwidths; :class:`HardwareSpec` is its frozen form. The
card format is documented in ``docs/cards.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mcroute._base.validate import McrouteError
from mcroute._cards.dtypes import DTYPE_BYTES
from mcroute._cards.schema import _HW_SCHEMA, _malformed, _validate

__all__ = ["HardwareSpec"]


@dataclass(frozen=True)
class HardwareSpec:
    """One accelerator (per-GPU numbers).

    Attributes
    ----------
    name, display_name : str
        Card name (``"h100-sxm"``) and a human-readable name.
    hbm_bytes : float
        HBM capacity per GPU [B].
    hbm_bandwidth : float
        HBM bandwidth per GPU [B/s].
    flops : dict
        Dense (non-sparse) peak FLOP/s per dtype, keys among ``bf16, fp8, fp4, ...`` [FLOP/s].
    interconnect_bandwidth : float
        Scale-up interconnect (NVLink / Infinity Fabric) bandwidth per GPU, one direction [B/s].
    gpus_per_node : int
        GPUs in one scale-up domain (NVLink / Infinity Fabric node), default 8.
    scaleout_bandwidth : float
        Scale-out network (NIC, e.g. 400 Gb/s InfiniBand NDR = 50e9 B/s) bandwidth per GPU, one
        direction [B/s]; 0 when unknown.
    scaleout_latency : float
        One-way latency of a small message over the scale-out network [s]; 0 when unknown.
    source : tuple of str
        Datasheets the numbers come from.
    notes : str
        Conventions and caveats from the card.
    """

    name: str
    display_name: str
    hbm_bytes: float
    hbm_bandwidth: float
    flops: dict = field(hash=False)
    interconnect_bandwidth: float
    source: tuple
    notes: str = field(default="", compare=False)
    gpus_per_node: int = 8
    scaleout_bandwidth: float = 0.0
    scaleout_latency: float = 0.0

    def peak_flops(self, dtype: str = "bf16") -> float:
        """Dense peak FLOP/s for ``dtype`` [FLOP/s]; error naming the dtypes this GPU has.

        Examples
        --------
        >>> from mcroute import load_hardware
        >>> load_hardware("h100-sxm").peak_flops("bf16")
        989400000000000.0
        """
        key = str(dtype).strip().lower()
        if key not in self.flops:
            raise McrouteError(f"hardware {self.name!r} has no peak FLOP/s for dtype {dtype!r}; "
                               f"known: {', '.join(self.flops)}")
        return self.flops[key]

    def replace(self, **changes: Any) -> HardwareSpec:
        """Return a copy with fields replaced (:func:`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict:
        """Return a small JSON-able summary (for provenance attrs)."""
        return {"name": self.name, "hbm_bytes": self.hbm_bytes,
                "hbm_bandwidth_bytes_per_s": self.hbm_bandwidth,
                "peak_dense_flops_per_s": dict(self.flops),
                "interconnect_bandwidth_bytes_per_s": self.interconnect_bandwidth,
                "gpus_per_node": self.gpus_per_node,
                "scaleout_bandwidth_bytes_per_s": self.scaleout_bandwidth,
                "scaleout_latency_s": self.scaleout_latency}

    @classmethod
    def from_dict(cls, card: dict, origin: str = "<dict>") -> HardwareSpec:
        """Build a spec from a hardware card dictionary, validating every key."""
        with _malformed(origin):
            return cls._from_dict(card, origin)

    @classmethod
    def _from_dict(cls, card: dict, origin: str) -> HardwareSpec:
        c = _validate(card, _HW_SCHEMA, origin, "")
        flops = c["peak_dense_flops_per_s"]
        for k in flops:
            if k not in DTYPE_BYTES:
                raise McrouteError(f"{origin}: unknown key 'peak_dense_flops_per_s.{k}' "
                                   f"(allowed dtypes: {', '.join(DTYPE_BYTES)})")
        if "bf16" not in flops:
            raise McrouteError(f"{origin}: missing required field 'peak_dense_flops_per_s.bf16'")
        return cls(
            name=c["name"], display_name=c["display_name"], hbm_bytes=float(c["hbm_bytes"]),
            hbm_bandwidth=float(c["hbm_bandwidth_bytes_per_s"]),
            flops={k: float(v) for k, v in flops.items()},
            interconnect_bandwidth=float(c["interconnect_bandwidth_bytes_per_s"]),
            source=tuple(c["source"]), notes=c.get("notes", ""),
            gpus_per_node=int(c["gpus_per_node"]),
            scaleout_bandwidth=float(c["scaleout_bandwidth_bytes_per_s"]),
            scaleout_latency=float(c["scaleout_latency_s"]),
        )

    def to_dict(self) -> dict:
        """Return the hardware card dictionary of this spec."""
        out = {"name": self.name, "display_name": self.display_name,
               "source": list(self.source), "hbm_bytes": self.hbm_bytes,
               "hbm_bandwidth_bytes_per_s": self.hbm_bandwidth,
               "interconnect_bandwidth_bytes_per_s": self.interconnect_bandwidth,
               "gpus_per_node": self.gpus_per_node,
               "scaleout_bandwidth_bytes_per_s": self.scaleout_bandwidth,
               "scaleout_latency_s": self.scaleout_latency,
               "peak_dense_flops_per_s": dict(self.flops)}
        if self.notes:
            out["notes"] = self.notes
        return out

