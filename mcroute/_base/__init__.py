"""Base floor (2): errors, validation, seeds, atomic writes, limits, data locations.

Base floor (2): validation and errors, seeds and random streams, atomic writes, resource
limits and where data files live.

May import: the standard library, numpy, ``mcroute._version``. Nothing else from mcroute.
"""
