"""Small helpers shared by the bench scripts (run as ``python bench/<script>.py``, so this folder is on the path)."""
from __future__ import annotations

import statistics
import time


def median_ms(fn, repeat: int, warmup: int = 1, after=None) -> float:
    """Median wall time of ``fn()`` in ms over ``repeat`` calls, after ``warmup`` untimed calls;
    ``after()`` (e.g. zeroing gradients) runs untimed after each timed call."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
        if after is not None:
            after()
    return statistics.median(out) * 1000


def emit(md: str, write: str | None) -> None:
    """Print a result section; with ``write``, also append it to that markdown file."""
    print(md)
    if write:
        with open(write, "a", encoding="utf-8") as f:
            f.write(md + "\n")
