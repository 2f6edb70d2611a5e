"""Array floor (3): model and hardware cards.

Array floor (3): model and hardware cards (TOML files and Hugging Face ``config.json``).

May import: ``mcroute._base``, ``mcroute._routing``.
"""
