"""Array floor (3): the quality-matched dense twin of a Mixture-of-Experts model.

May import: numpy and the floors below (``mcroute._base``), and ``mcroute._cards`` (same floor).
"""

from mcroute._twin.twin import DENSE_STYLES, check_moe, check_q_value, dense_twin, twin_for

__all__ = ["DENSE_STYLES", "check_moe", "check_q_value", "dense_twin", "twin_for"]
