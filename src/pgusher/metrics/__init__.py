"""Statistics and observability: counters, stats_period averages, the HTTP endpoint.

Kept free of imports so the data path can import :mod:`.counters` without loading the rest.
"""
