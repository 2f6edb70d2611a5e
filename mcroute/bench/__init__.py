"""Front end (5): ``mcroute bench``.

Front end (5): ``mcroute bench``, speed figures measured as ratios side by side in one run.

May import: every floor below.
"""
