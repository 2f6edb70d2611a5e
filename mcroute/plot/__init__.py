"""Plots of mcroute results: a variable against a scenario dim with its two kinds of band.

Front end (5). May import: every floor below (``mcroute._base``, ``mcroute._labeled``) and its
own modules; matplotlib is optional (the ``plot`` extra) and is imported inside functions only,
so ``import mcroute.plot`` works without it. Calling a plot function without matplotlib raises
:class:`~mcroute.McrouteError` saying how to install it.

Each plot keeps the two kinds of uncertainty apart (docs/schema.md, docs/plotting.md):

* a **dark band**, ``<var>_ci``: the confidence interval of the Monte Carlo *mean* (it shrinks
  with more trials; it says how sure the estimate of the mean is); error bars mark it where it
  is too thin to see;
* a **light band**, ``<var>_q``: the outermost quantile levels of *single steps* (it does not
  shrink with more trials; it says how much one decode step varies).

Penalties get a dashed line at 1 (parity), infeasible points a × with a legend entry, and a
caption of at most two lines says in words what the figure assumes.

Modules: ``select`` (what to draw, as arrays), ``caption`` (the caption), ``axes`` (drawing
steps), ``band`` (the public functions).
"""

from mcroute.plot.band import plot_band, plot_dataset, require_matplotlib, save_figure
from mcroute.plot.caption import caption_text

__all__ = ["caption_text", "plot_band", "plot_dataset", "require_matplotlib", "save_figure"]
