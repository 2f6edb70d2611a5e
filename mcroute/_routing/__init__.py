"""Array floor (3): routing distributions, samplers and expert placement.

Array floor (3): routing distributions (``distributions``: Uniform, Zipf, LogNormal,
Popularity; ``composite``: Correlated, GroupLimited), their inclusion probabilities
(``inclusion``), the one parser of routing strings (``spec``), the samplers that draw
token-to-expert counts (``sampling``) and expert placement on devices (``placement``).

May import: ``mcroute._kernels``, ``mcroute._base``.

The labeled floor takes routing arguments through :func:`as_routing` (a routing object or a
string such as ``"zipf:1.2"``).
"""

from mcroute._routing.spec import (
    ROUTING_SYNTAX,
    as_routing,
    is_routing,
    normalize_routing_text,
    parse_routing,
)

__all__ = ["ROUTING_SYNTAX", "as_routing", "is_routing", "normalize_routing_text",
           "parse_routing"]
