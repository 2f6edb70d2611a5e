"""Front end (5): parameter sweeps.

Front end (5): parameter sweeps over the public functions, written as checksummed NetCDF
parts and run locally or on Dask. (Named ``sweeps`` so that it never shadows the function
``mcroute.sweep``.)

May import: the labeled floor and everything below it.
"""
