"""Labeled floor (4): public functions that return xarray Datasets.

Labeled floor (4): the public functions that return ``xarray.Dataset``s with named dims,
units and provenance (``simulate``, ``decode_throughput``, ``qs_analysis``, trace fits).
Input is validated here, at the public edge; the floors below trust what they receive.

May import: the array floor (``mcroute._routing``, ``_traces``, ``_cards``, ``_cost``,
``_quality``, ``_twin``), ``mcroute._base``, ``mcroute._kernels``.
"""
