"""The planner's world, plain data and pure functions: profiles, the cost model, min cuts (no torch).

Modules, bottom up (each imports only those above it):

- :mod:`~lightning_split.planning.profile`: :class:`Profile`, :class:`NodeCost`, :class:`Link`,
  the profile JSON format.
- :mod:`~lightning_split.planning.costmodel`: the cost model ``T(D, S)`` in float (``step_time``,
  ``is_feasible``) and the :class:`Plan` and :class:`PlanningError` the planners return and raise.
- :mod:`~lightning_split.planning.csgraph_flow`, :mod:`~lightning_split.planning.cutarrays`,
  :mod:`~lightning_split.planning.batchcuts`: the compiled engine (scipy's max-flow by exact
  capacity scaling), cut graphs of ranges as arrays, and several ranges cut in one call with
  those that cannot win dropped after one phase.
- :mod:`~lightning_split.planning.mincut`: minimum s-t cuts of an integer edge list (networkx's
  preflow_push, or augmenting paths for small graphs).
- :mod:`~lightning_split.planning.cutgraph`: the integer cost graph, pin checking, and the one
  builder of the s-t cut graph that every exact solver cuts.
- :mod:`~lightning_split.planning.ranges`: the optimal placement of a range of nodes, rtt
  included; the ``"full"`` method.
- :mod:`~lightning_split.planning.exhaustive`: the one enumerator of feasible placements; the
  ``"exhaustive"`` method.
- :mod:`~lightning_split.planning.clusters`: side nodes (dead ends, constants), grouped into
  clusters placed on their own.
- :mod:`~lightning_split.planning.boundaries`: the boundary nodes the graph splits at.
- :mod:`~lightning_split.planning.blockwise`: the ``"blockwise"`` method, by series decomposition.
- :mod:`~lightning_split.planning.baselines`: ``device_only``, ``server_only``, ``best_layerwise``.
- :mod:`~lightning_split.planning.planner`: :func:`~lightning_split.planning.planner.plan`, the
  entry point, and every public name of the above.

Nothing is imported here, so that ``import lightning_split.planning.profile`` stays light (no
networkx); import the public API from :mod:`lightning_split.planning.planner`.
"""
