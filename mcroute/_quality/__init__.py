"""Array floor (3): quality multipliers q.

Array floor (3): quality multipliers q: the q format, the quality tables and the fits that
turn them into q.

May import: ``mcroute._base``, ``mcroute._cards``.
"""
