"""Benchmarks (not timed tests; results are committed under benchmarks/results), among them:

    python -m benchmarks.core_memory     memory and time of the four training modes against steps
    python -m benchmarks.recurrence      our modes against torchdeq's implicit backward, per workload

`benchmarks.common` holds the measurement code both use.
"""
