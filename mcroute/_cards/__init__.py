"""Array floor (3): model and hardware cards.

Array floor (3): model and hardware cards (TOML files and Hugging Face ``config.json``):
``dtypes`` (the dtype table), ``schema`` (card keys and their checks), ``hf`` (config.json to a
card), ``spec`` (LayerSpec, ModelSpec), ``hardware`` (HardwareSpec) and ``cards`` (names,
aliases, listing and loading; the home of the public names).

May import: ``mcroute._base``, ``mcroute._routing``.
"""
