"""Array floor (3): real router logs and their file formats.

Array floor (3): real router logs (``trace``: ``Trace``, ``PopularityTrace``;
``overdispersed``: ``Overdispersed``; ``calibrate``: Plackett–Luce weights fitted to observed
inclusion probabilities) and their file formats (``io``: ``load_trace``, ``save_trace``, the
canonical ``.npz`` and routed-expert arrays; ``jsonl``: JSON-lines logs; ``histogram``:
histogram CSVs; ``text``: line reading, field checks, format guessing).

May import: ``mcroute._kernels``, ``mcroute._base``, ``mcroute._routing``.
"""
