"""Epoch time of data-parallel training (multikg4rec.distributed) against one process, in one invocation:
1 process x 2 threads, 1 process x 1 thread, and 2 ranks x 1 thread (torchrun, gloo), each timing whole
training epochs (``Trainer.train_epoch``: CF pass, KG pass, attention update; no evaluation) of the same model
and data, with peak RSS per rank. Then two lone 1-thread processes at once (no communication): how much a
one-thread epoch slows down when the other core is busy, which bounds what 2 ranks can gain. Writes a table
(ratios against 1 x 2 threads, and the seconds each epoch spends in the gradient all-reduce) to ``--write``.

    python bench/bench_ddp.py --dataset ml-1m --models kgat multikg4rec --epochs 3 --write bench/results/ddp.md

The first epoch of each configuration is reported apart (it pays the allocator's and the caches' warm-up);
the speed-up uses the mean of the others.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import emit


def worker(args) -> None:
    """Under torchrun (or alone): train ``--epochs`` epochs, print one JSON line from rank 0."""
    import torch

    from multikg4rec import distributed
    from multikg4rec.config import load_config
    from multikg4rec.data import load_dataset
    from multikg4rec.models import build_model, model_features
    from multikg4rec.runtime import configure, peak_rss_mb, seed_everything
    from multikg4rec.training import Trainer

    rank, world = distributed.init_from_env()
    cfg = load_config(args.model, args.dataset, None, {"threads": args.threads, "seed": 0, "quiet": True})
    cfg |= {"world_size": world} if world > 1 else {}
    configure(cfg)
    seed_everything(0)
    if rank:
        distributed.barrier()                            # rank 0 fills the caches first
    ds = load_dataset(args.dataset, cfg, data_dir=cfg.get("data_dir"), cache_dir=cfg.get("cache_dir"))
    feats = model_features(cfg, ds)
    if world > 1 and not rank:
        distributed.barrier()
    model = build_model(cfg, ds, feats)
    comm = [0.0]                                          # seconds in the gradient all-reduce (2 ranks)
    average = distributed.average_gradients

    def timed_average(*a, **kw):
        t = time.perf_counter()
        out = average(*a, **kw)
        comm[0] += time.perf_counter() - t
        return out
    distributed.average_gradients = timed_average
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, ds, cfg, Path(tmp), quiet=True)
        secs = [trainer.train_epoch()["train_seconds"] for _ in range(args.epochs)]
    rss = distributed.all_gather_object(round(peak_rss_mb(), 1))
    if rank == 0:
        print(json.dumps({"seconds": secs, "rss_mb": rss, "threads": torch.get_num_threads(), "world": world,
                          "allreduce_s_per_epoch": comm[0] / args.epochs,
                          "steps_per_epoch": -(-len(trainer.cf_sampler) // world)}), flush=True)
    distributed.shutdown()


def launch(model: str, dataset: str, epochs: int, threads: int, nproc: int, copies: int = 1) -> list[dict]:
    """One launch (``nproc`` ranks under torchrun, or one process); ``copies`` > 1 starts that many
    independent one-process launches at once (no communication) and returns each one's result."""
    me = [str(Path(__file__).resolve()), "--worker", "--model", model, "--dataset", dataset, "--epochs", str(epochs),
          "--threads", str(threads)]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *me]
           if nproc > 1 else [sys.executable, *me])
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(copies)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--models", nargs="+", default=["kgat", "multikg4rec"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--write")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    setups = (("1 process x 2 threads", 2, 1, 1), ("1 process x 1 thread", 1, 1, 1), ("2 ranks x 1 thread", 1, 2, 1),
              ("2 lone processes x 1 thread at once (no DDP)", 1, 1, 2))
    lines = [f"## {args.dataset}: data-parallel epochs ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"`python bench/bench_ddp.py --dataset {args.dataset} --models {' '.join(args.models)} --epochs "
             f"{args.epochs}` on {platform.machine()}, {os.cpu_count()} cores; each setup a fresh launch, one "
             f"after another. Epoch = CF + KG pass + attention update, no evaluation. 2 ranks: each trains half "
             f"of every epoch's batches (global batch 2 x batch_size, half the steps).", "",
             "| model | setup | CF steps per rank | first epoch s | later epochs s (mean) | of which all-reduce s | "
             "speed-up vs 1 x 2 threads | peak RSS MB per rank |", "|---|---|---|---|---|---|---|---|"]
    notes = []
    for m in args.models:
        base, alone = None, {}
        for name, threads, nproc, copies in setups:
            rs = launch(m, args.dataset, args.epochs, threads, nproc, copies)
            later = [x for r in rs for x in (r["seconds"][1:] or r["seconds"])]
            mean = sum(later) / len(later)
            base = base or mean
            alone[copies, nproc, threads] = mean
            r = rs[0]
            comm = f"{r['allreduce_s_per_epoch']:.1f}" if nproc > 1 else ""
            speed = f"{base / mean:.2f}x" if copies == 1 else f"{2 * base / mean:.2f}x (two epochs at once)"
            lines.append(f"| {m} | {name} | {r['steps_per_epoch']} | {r['seconds'][0]:.1f} | {mean:.1f} | {comm} | "
                         f"{speed} | {', '.join(f'{x:.0f}' for r in rs for x in r['rss_mb'])} |")
            print(lines[-1], flush=True)
        one, pair, two = alone[1, 1, 1], alone[2, 1, 1], alone[1, 1, 2]   # keys: (copies, ranks, threads)
        notes.append(f"* {m}: a one-thread epoch takes {pair / one:.2f}x as long while a second one-thread process "
                     f"trains beside it ({one:.1f} s alone, {pair:.1f} s side by side), with no communication at "
                     f"all. Two ranks that split an epoch perfectly and never wait would take {pair / 2:.1f} s: "
                     f"{2 * one / pair:.2f}x over 1 x 1 thread and {2 * two / pair:.2f}x over 1 x 2 threads, the "
                     f"ceiling of data parallelism here; 2 ranks measured {two / alone[1, 2, 1]:.2f}x.")
    emit("\n".join(lines + [""] + notes) + "\n", args.write)


if __name__ == "__main__":
    main()
