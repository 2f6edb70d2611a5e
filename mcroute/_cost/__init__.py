"""Array floor (3): the decode cost model.

Array floor (3): the decode cost model: roofline step-time functions in SI units, the
calibrated kernel model fitted on measured kernel tables, and ``Deployment``, which gathers the
options of one deployment.

May import: ``mcroute._kernels``, ``mcroute._base``, ``mcroute._routing``, ``mcroute._cards``.
"""
