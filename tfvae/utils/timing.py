"""How benchmarks time work: ``median_time`` (a call repeated) and ``Stages`` (the named stages of
one long job, e.g. an evaluation's set-up and scoring). No TensorFlow import: the PyTorch peer of
``tfvae.studies.benchmark_peer`` uses it too."""

from __future__ import annotations

import contextlib
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


class Stages:
    """Wall seconds spent in named stages of one job: ``with stages("calibration"): ...``; a name
    entered again adds to its total. ``seconds``: {name: seconds}, in the order first entered."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
