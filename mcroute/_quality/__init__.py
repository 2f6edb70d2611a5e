"""Array floor (3): quality multipliers q.

Array floor (3): quality multipliers q: the q format (``quality``: ``QSpec``, ``parse_q``,
``as_q``), the benchmark tables (``tables``), the fits (``fits``) and the estimate as arrays
(``estimate``). The Dataset of ``estimate_q`` is built in ``mcroute._labeled.q_estimate``.

May import: ``mcroute._base``, ``mcroute._cards``.
"""
