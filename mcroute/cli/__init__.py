"""Front end (5): the ``mcroute`` command line.

Front end (5): the ``mcroute`` command line, one module per command.

May import: every floor below and the other front ends (``mcroute.sweeps``, ``mcroute.bench``,
``mcroute.plot``).
"""

from mcroute.cli.app import main

__all__ = ["main"]
