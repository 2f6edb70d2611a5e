"""Array floor (3): real router logs and their file formats.

Array floor (3): real router logs (``Trace``, ``PopularityTrace``, ``Overdispersed``) and
their file formats.

May import: ``mcroute._kernels``, ``mcroute._base``, ``mcroute._routing``.
"""
