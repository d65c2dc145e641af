"""Growth curve: time and memory per training epoch and per full evaluation against the number of
interactions, for LightGCN, KGAT and Multi-KG4Rec, one fresh process per (dataset, model) point.

    python bench/synthetic_powerlaw.py --interactions 1000000 3000000 10000000 --out bench/out/data
    python bench/bench_scaling.py --write bench/results/scaling.md

Per point: the dataset is loaded and the model built as a run builds it (``features: random`` for
Multi-KG4Rec everywhere, so every size gets the same kind of content: 10% of the rows without it), then
``--steps`` CF steps are timed through the trainer's own loop (after one warm-up step) and the epoch is
estimated as steps per epoch x ms per step; for the attentive models one attention update (once per epoch)
is timed beside it; a full evaluation is ``prepare_eval`` plus the exact top-50 ranking of a sample of up to
``--eval-users`` users, scaled to all users. Peak RSS is the child's. A child is limited to ``--max-gb`` of
address space, so a point that does not fit is reported as such instead of swapping the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchlib import BENCH_DIR, emit, timed_trainer_steps

POINTS = [("ml-100k", None), ("ml-1m", None), ("amazon-book", None), ("synthetic-1000000", "bench/out/data"),
          ("synthetic-3000000", "bench/out/data"), ("synthetic-10000000", "bench/out/data")]
MODELS = ("lightgcn", "kgat", "multikg4rec")


def point(args) -> None:
    import numpy as np
    import torch

    from multikg4rec.config import load_config
    from multikg4rec.data import load_dataset
    from multikg4rec.evaluation import Evaluator
    from multikg4rec.models import build_model, model_features
    from multikg4rec.runtime import configure, peak_rss_mb, seed_everything
    over = {"threads": args.threads, "seed": 0, "quiet": True}
    if args.data_dir:
        over["data_dir"] = args.data_dir
    if args.model == "multikg4rec":
        over["features"] = "random"
    cfg = load_config(args.model, args.dataset, None, over)
    configure(cfg)
    seed_everything(0)
    t = time.perf_counter()
    ds = load_dataset(args.dataset, cfg, data_dir=cfg.get("data_dir"), cache_dir=cfg.get("cache_dir"))
    model = build_model(cfg, ds, model_features(cfg, ds))
    build_s = time.perf_counter() - t
    out = {"interactions": int(len(ds.train) + len(ds.valid) + len(ds.test)), "users": ds.n_users,
           "items": ds.n_items, "build_s": build_s}
    r = timed_trainer_steps(model, ds, cfg, args.steps, warmup=1)
    steps = -(-len(ds.train) // int(cfg["batch_size"]))
    out |= {"step_ms": r["ms"], "epoch_s": r["ms"] * steps / 1e3, "cf_steps": steps}
    if getattr(model, "attention_tables", ()):
        t = time.perf_counter()
        model.update_attention()
        out["attention_s"] = time.perf_counter() - t
        out["epoch_s"] += out["attention_s"]
    model.eval()
    ev = Evaluator(ds.n_items, ks=(50,), batch_size=int(cfg["eval_batch_size"]))
    users = np.random.default_rng(0).permutation(ds.n_users)[: args.eval_users]
    exc = ev.exclusion([ds.csr("train"), ds.csr("valid")], ds.n_users)
    with torch.no_grad():
        t = time.perf_counter()
        model.prepare_eval()
        prep = time.perf_counter() - t
        t = time.perf_counter()
        for _ in ev.ranked(model.full_sort_predict, np.sort(users), 50, exc):
            pass
        rank = time.perf_counter() - t
    out |= {"eval_s": prep + rank * ds.n_users / len(users), "peak_rss_mb": peak_rss_mb()}
    print(json.dumps(out), flush=True)


def run_point(dataset: str, data_dir: str | None, model: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--point", "--dataset", dataset, "--model", model,
           "--threads", str(args.threads), "--steps", str(args.steps), "--eval-users", str(args.eval_users)]
    if data_dir:
        cmd += ["--data-dir", str(BENCH_DIR.parent / data_dir)]
    limit = int(args.max_gb * 2 ** 30)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    if p.returncode:
        last = [ln for ln in p.stderr.strip().splitlines() if ln.strip()][-1:] or ["?"]
        return {"error": last[0][:160]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=[d for d, _ in POINTS])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--eval-users", type=int, default=2048)
    ap.add_argument("--max-gb", type=float, default=20.0)
    ap.add_argument("--write")
    ap.add_argument("--point", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.point:
        return point(args)
    where = dict(POINTS)
    lines = [f"## Growth curve ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"`python bench/bench_scaling.py --datasets {' '.join(args.datasets)} --models {' '.join(args.models)} "
             f"--threads {args.threads} --steps {args.steps}` on {platform.machine()}, {os.cpu_count()} cores, one "
             f"process per point limited to {args.max_gb:g} GiB. Epoch: estimated from {args.steps} timed CF steps "
             "(+ one attention update for KGAT and Multi-KG4Rec; the KG pass is not included); evaluation: the "
             f"exact top-50 of {args.eval_users} sampled users scaled to all users.", "",
             "| dataset | interactions | users | items | model | ms per CF step | CF steps | epoch s (est.) | "
             "attention update s | full evaluation s (est.) | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in args.datasets:
        for m in args.models:
            if d == "amazon-book" and m != "lightgcn":
                continue                                  # no KG offline: the KG models cannot run on it
            r = run_point(d, where.get(d), m, args)
            if "error" in r:
                lines.append(f"| {d} | | | | {m} | does not run: {r['error']} | | | | | |")
            else:
                lines.append(f"| {d} | {r['interactions']:,} | {r['users']:,} | {r['items']:,} | {m} | {r['step_ms']:.0f} | "
                             f"{r['cf_steps']} | {r['epoch_s']:.1f} | {r.get('attention_s', 0):.1f} | {r['eval_s']:.1f} | "
                             f"{r['peak_rss_mb']:.0f} |")
            print(lines[-1], flush=True)
    emit("\n".join(lines) + "\n", args.write)


if __name__ == "__main__":
    main()
