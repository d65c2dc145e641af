"""Accuracy at world size 2 against world size 1: test NDCG@20 of 2-rank runs (``multikg4rec train --nproc 2``,
Table 2's config for the model, seeds 0..S-1) beside the archived one-process Table 2 runs of the same config
(``results/runs``), with the one-process seed spread. Resumable: finished runs are found again.

    python bench/ddp_accuracy.py --datasets ml-100k --models kgat --seeds 2 [--lr-scale 2] --write bench/results/ddp_accuracy.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchlib import emit

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["ml-100k"])
    ap.add_argument("--models", nargs="+", default=["kgat", "multikg4rec"])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--lr-scale", type=float, default=1.0,
                    help="world size 2 runs use the config's learning_rate times this (default 1: unchanged)")
    ap.add_argument("--output-dir", default="runs")
    ap.add_argument("--write")
    args = ap.parse_args()
    from multikg4rec.experiments.archive import archived
    from multikg4rec.experiments.jobs import table_job
    lines = [f"## Test NDCG@20 at world size 2 against world size 1 ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
             "", f"`python bench/ddp_accuracy.py --datasets {' '.join(args.datasets)} --models {' '.join(args.models)} "
             f"--seeds {args.seeds} --lr-scale {args.lr_scale:g}` on {platform.machine()}, {os.cpu_count()} cores. World size 1: the archived Table 2 "
             "runs (results/runs); world size 2: `multikg4rec train --nproc 2` with the same config (global batch "
             f"2 x batch_size, learning_rate x {args.lr_scale:g}, early stopping on valid).", "",
             "| dataset | model | world size 1: seeds, mean ± std (min-max) | world size 2: per seed | ws2 mean | within ws1 range | s/epoch ws1 -> ws2 |",
             "|---|---|---|---|---|---|---|"]
    for d in args.datasets:
        for m in args.models:
            one, one_spe = [], []
            for s in range(10):
                cfg = table_job(m, m, d, s).config({})
                if (kept := archived(cfg, REPO / "results" / "runs")) is not None:
                    mt = json.loads((kept / "metrics.json").read_text())
                    one.append(mt["test"]["ndcg@20"])
                    one_spe.append(mt["seconds_per_epoch"])
            cfg = table_job(m, m, d, 0).config({})
            two, two_spe = [], []
            for s in range(args.seeds):
                recipe = dict(table_job(m, m, d, s).defaults)
                if args.lr_scale != 1.0:
                    recipe["learning_rate"] = float(cfg["learning_rate"]) * args.lr_scale
                extra = [x for k, v in recipe.items() for x in (f"--{k}", str(v))]
                cmd = [sys.executable, "-m", "multikg4rec", "train", "--model", m, "--dataset", d, "--seed", str(s),
                       "--nproc", "2", "--output-dir", args.output_dir, "--quiet", *extra]
                p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                if p.returncode:
                    raise SystemExit(f"{' '.join(cmd)}:\n{p.stderr[-3000:]}")
                res = json.loads(p.stdout[p.stdout.index("{"):])
                mt = json.loads((Path(res["run_dir"]) / "metrics.json").read_text())
                two.append(mt["test"]["ndcg@20"])
                two_spe.append(mt["seconds_per_epoch"])
                print(d, m, s, two[-1], flush=True)
            o = np.array(one)
            inside = all(o.min() <= x <= o.max() for x in two) if len(o) else False
            lines.append(f"| {d} | {m} | {len(o)}: {o.mean():.4f} ± {o.std(ddof=1):.4f} ({o.min():.4f}-{o.max():.4f}) | "
                         f"{', '.join(f'{x:.4f}' for x in two)} | {np.mean(two):.4f} | {'yes' if inside else 'no'} | "
                         f"{np.mean(one_spe):.1f} -> {np.mean(two_spe):.1f} |")
    emit("\n".join(lines) + "\n", args.write)


if __name__ == "__main__":
    main()
