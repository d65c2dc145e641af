"""KGAT's CF step (full CKG propagation + BPR + backward + Adam): only the user and item rows
(``KGPropagation(rows=...)``, the current code) against the whole (n_nodes, d_out) output sliced
afterwards (the propagation before 2026-11-30; both use the current L2 term), interleaved in ONE process so both see the same load.

    python bench/bench_kgat_step.py --dataset ml-100k --steps 10 --reps 3 --write bench/results/kgat_step.md
"""
from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from multikg4rec.config import load_config
from multikg4rec.data import load_dataset
from multikg4rec.sampling import BPRSampler
from multikg4rec.training import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--steps", type=int, default=10, help="CF steps per timed block")
    ap.add_argument("--reps", type=int, default=3, help="timed blocks per variant (interleaved)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config("kgat", args.dataset, None, {"seed": 0})
    ds = load_dataset(args.dataset, cfg)
    model = build_model(cfg, ds).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"])
    sampler = BPRSampler(ds.train, ds.n_items, cfg["batch_size"], np.random.default_rng(0))
    batches = [b for _, b in zip(range(args.steps), sampler)]

    def whole_table():                      # before: every node's (n_nodes, 176) row, sliced afterwards
        out = model.propagation(model.node_emb.weight, model.adjacency)
        return out[model.n_entities:], out[: model.n_items]

    variants = {"whole table, sliced": whole_table, "user + item rows only": model.propagate}

    def block(prop) -> float:
        model.propagate = prop
        t = time.perf_counter()
        for b in batches:
            opt.zero_grad(set_to_none=True)
            model.calculate_loss(b).backward()
            opt.step()
        return (time.perf_counter() - t) / len(batches)

    block(whole_table)                      # warm-up
    times = {k: [] for k in variants}
    for _ in range(args.reps):
        for k, f in variants.items():
            times[k].append(block(f))
    ckg = ds.ckg()
    base = statistics.median(times["whole table, sliced"])
    lines = [f"# KGAT CF step, {args.dataset} ({ckg.n_nodes:,} CKG nodes, {len(ckg.head):,} edges, "
             f"batch {cfg['batch_size']}, {args.threads} thread)", "",
             f"`python bench/bench_kgat_step.py --dataset {args.dataset} --steps {args.steps} --reps {args.reps}`, "
             f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, torch {torch.__version__}; "
             f"median of {args.reps} interleaved blocks of {args.steps} steps; peak RSS "
             f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (process).", "",
             "| variant (both with the one-gather L2 term) | ms per CF step (median) | blocks | ratio to before |", "|---|---|---|---|"]
    for k, v in times.items():
        med = statistics.median(v)
        lines.append(f"| {k} | {med * 1e3:.0f} | {', '.join(f'{x * 1e3:.0f}' for x in v)} | {med / base:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
