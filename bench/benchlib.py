"""Small helpers shared by the bench scripts (run as ``python bench/<script>.py``, so this folder is on the path;
the studies in ``bench/studies/`` put it there themselves)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


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


def run_child(code: str, *argv) -> dict:
    """Run ``code`` in a fresh interpreter (its own heap, so its own peak RSS) with ``argv``; return the JSON
    object on its last stdout line. The child can ``import benchlib``."""
    path = os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))
    p = subprocess.run([sys.executable, "-c", code, *map(str, argv)], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True, check=True, env={**os.environ, "PYTHONPATH": path})
    return json.loads(p.stdout.strip().splitlines()[-1])


def most_linked_item(ds) -> tuple[int, list[tuple[str, str]]]:
    """The item with the most KG triples as head, and those triples as (relation, entity token) links: the
    new item the serving benchmarks add."""
    import numpy as np
    kg = ds.kg[ds.kg[:, 0] < ds.n_items]
    x = int(np.bincount(kg[:, 0]).argmax())
    tok = lambda e: str(ds.entity_tokens[e]) or str(ds.item_tokens[e])
    return x, [(str(ds.relation_tokens[r]), tok(t)) for _, r, t in kg[kg[:, 0] == x]]


def rss_mb() -> float:
    """This process's resident set now, MB."""
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed_trainer_steps(model, ds, cfg: dict, steps: int, warmup: int = 3) -> dict:
    """``warmup`` untimed then ``steps`` timed CF steps of ``model`` through the Trainer's own step loop
    (``Trainer._pass``: BPR loss, backward, fused Adam) on the first batches of a seed-0 ``BPRSampler``, so
    every call sees the same batches. Returns ms per timed step, their mean loss, the RSS once the trainer
    was built (MB) and the batches."""
    import tempfile

    import numpy as np

    from multikg4rec.sampling import BPRSampler
    from multikg4rec.training import Trainer
    batches = [b for _, b in zip(range(steps + warmup), BPRSampler(ds.train, ds.n_items, cfg["batch_size"],
                                                                   np.random.default_rng(0)))]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, ds, cfg, Path(tmp), quiet=True)
        built = rss_mb()
        trainer._pass(batches[:warmup], model.calculate_loss, "warm-up")
        t = time.perf_counter()
        loss = trainer._pass(batches[warmup:], model.calculate_loss, "timed")
        ms = (time.perf_counter() - t) / steps * 1e3
    return {"ms": ms, "loss": loss, "built_mb": built, "batches": batches}
