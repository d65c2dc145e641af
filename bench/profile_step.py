"""Where one training step of a model spends its time: torch.profiler over a few CF (BPR) steps,
or KG (TransR) steps with ``--pass kg``.

    python bench/profile_step.py --model multikg4rec --dataset ml-1m --steps 5 --threads 1
    python bench/profile_step.py --model kgat --dataset ml-1m --set kg_loss_triples=kg
    python bench/profile_step.py --model multikg4rec --dataset ml-1m --pass kg --threads 2

Prints the mean seconds per step (timed without the profiler) and the ops with the most
self CPU time, grouped by input shape, per step. On a machine shared with other jobs the
split of memory-bound ops (fills, copies, element-wise products) moves a lot from run to
run; compare ops within one run.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from multikg4rec import runtime
from multikg4rec.config import load_config, parse_value
from multikg4rec.data import load_dataset
from multikg4rec.models import build_model
from multikg4rec.runtime import seed_everything
from multikg4rec.training import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="multikg4rec")
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--steps", type=int, default=5, help="steps timed, then as many profiled (after 3 warm-up steps)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pass", dest="which", choices=("cf", "kg"), default="cf",
                   help="profile CF (BPR) steps or KG (TransR) steps")
    p.add_argument("--top", type=int, default=25, help="rows of the op table")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--data-dir", default=os.environ.get("MULTIKG4REC_DATA", "../shared/data"))
    a = p.parse_args()
    over = {k: parse_value(v) for k, _, v in (s.partition("=") for s in a.set)}
    cfg = load_config(a.model, a.dataset, None, over | {"data_dir": a.data_dir, "threads": a.threads})
    runtime.configure(cfg)                              # torch threads, malloc thresholds (as a run)
    seed_everything(cfg["seed"])
    ds = load_dataset(a.dataset, cfg, data_dir=a.data_dir)
    model = build_model(cfg, ds)
    tr = Trainer(model, ds, cfg, Path(tempfile.mkdtemp()), quiet=True)
    if a.which == "kg" and tr.kg_sampler is None:
        raise SystemExit(f"{a.model} has no KG pass")
    batches = iter(tr.cf_sampler if a.which == "cf" else tr.kg_sampler)
    loss_fn = model.calculate_loss if a.which == "cf" else model.calculate_kg_loss
    model.train()

    def step() -> None:
        tr.optimizer.zero_grad(set_to_none=True)
        loss_fn(next(batches)).backward()
        tr.optimizer.step()

    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    print(f"{a.model} on {a.dataset}, {a.threads} thread(s): {(time.perf_counter() - t) / a.steps:.3f} s per {a.which.upper()} step "
          f"(batch {cfg['batch_size' if a.which == 'cf' else 'kg_batch_size']})")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(a.steps):
            step()
    rows = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows)
    print(f"{'op':48s} {'ms/step':>8s} {'share':>6s} {'calls':>5s}  input shapes")
    for e in rows[: a.top]:
        print(f"{e.key[:48]:48s} {e.self_cpu_time_total / 1e3 / a.steps:8.1f} {e.self_cpu_time_total / total:6.1%} "
              f"{e.count // a.steps:5d}  {str(e.input_shapes)[:110]}")


if __name__ == "__main__":
    main()
