"""Front end (5): parameter sweeps.

Front end (5): parameter sweeps over the public functions, written as checksummed NetCDF
parts and run locally or on Dask. (Named ``sweeps`` so that it never shadows the function
``mcroute.sweep``.) Modules: ``core`` (the public ``sweep`` and ``load_sweep_spec``),
``params`` (parameters are :class:`~mcroute._base.options.Option`), ``kinds`` (the built-in
cell kinds), ``spec`` (specs and cell seeds), ``parts`` (the parts folder) and ``run``
(execution, merging, Ctrl-C).

May import: the labeled floor and everything below it.
"""
