"""Benchmark harness of redlock_aio: ``python benchmarks/run.py [--quick]``.

Modules: ``_common`` (plan, statistics, leftover checks), ``_floor`` (the
benchmark's own minimal Redlock floors), ``_peers`` (adapters for redlock_aio and
the other libraries), ``_proxy`` (a latency-adding TCP forwarder), ``_scenarios``
(the five measurements), ``_overload`` (2b and 6-8: many requests at once),
``_fake`` (an in-process fake node and transport, for scenario 6), ``_bursts``
and ``_child`` (the heavy overload bodies, run in a child process), ``_report``
(markdown, JSON, plots), ``_main`` (CLI).
"""
