"""Array floor (3): routing distributions, samplers and expert placement.

Array floor (3): routing distributions, the samplers that draw token-to-expert counts, and
expert placement on devices.

May import: ``mcroute._kernels``, ``mcroute._base``.
"""
