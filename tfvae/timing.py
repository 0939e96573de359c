"""``median_time``: how benchmarks time a piece of work (no TensorFlow import: the PyTorch peer of
``tfvae.benchmark_peer`` uses it too)."""

from __future__ import annotations

import statistics
import time


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """The median wall time in seconds of ``repeats`` calls of ``fn()``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
