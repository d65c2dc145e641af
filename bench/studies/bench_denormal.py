"""ConvNCF training steps as training goes on, with and without ``flush_denormal`` (x86 FTZ/DAZ).

From random embeddings (``pretrain_path: null``, as both sides of ``compare.py --no-eval``'s timing rows), the
L2 penalty pushes some embedding entries towards zero; once two factors of an interaction map entry are below
~1e-19 their product is a denormal float, which x86 CPUs compute on a slow path. Each setting is one child
process: load the data, build the model, then ``--steps`` CF steps through the trainer's own step loop
(``Trainer._pass``) on the same seed-0 batches, timed per window of ``--window`` steps. Reported per window: ms
per step with the setting off and on, and the smallest nonzero |entry| of the item embeddings at its end (off).

    python bench/studies/bench_denormal.py --dataset ml-1m --steps 1200 --window 100 --write bench/results/convncf_memory.md
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/, for benchlib
from benchlib import emit, run_child  # noqa: E402

CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
dataset, steps, window, flush = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
from multikg4rec import runtime
from multikg4rec.config import load_config
from multikg4rec.data import load_dataset
from multikg4rec.sampling import BPRSampler
from multikg4rec.models import build_model
from multikg4rec.runtime import seed_everything
from multikg4rec.training import Trainer
cfg = load_config("convncf", dataset, None, {"seed": 0, "threads": 1, "pretrain_path": None,
                                            "flush_denormal": flush})
runtime.configure(cfg)
seed_everything(0)
ds = load_dataset(dataset, cfg)
m = build_model(cfg, ds).train()
batches = iter(BPRSampler(ds.train, ds.n_items, cfg["batch_size"], np.random.default_rng(0)))
rows = []
with tempfile.TemporaryDirectory() as tmp:
    trainer = Trainer(m, ds, cfg, Path(tmp), quiet=True)
    for _ in range(steps // window):
        bs = [next(batches) for _ in range(window)]
        t = time.perf_counter()
        loss = trainer._pass(bs, m.calculate_loss, "timed")
        w = m.item_emb.weight.detach().abs()
        rows.append({"ms": (time.perf_counter() - t) / window * 1e3, "loss": loss,
                     "min_abs": float(w[w > 0].min())})
print(json.dumps(rows))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    res = {}
    for flush in (False, True):
        res[flush] = run_child(CHILD, args.dataset, args.steps, args.window, "1" if flush else "0")
        print("flush" if flush else "off", [round(r["ms"]) for r in res[flush]], file=sys.stderr)
    lines = [f"## ConvNCF from random embeddings: steps with and without flush_denormal ({args.dataset}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"`python bench/studies/bench_denormal.py --dataset {args.dataset} --steps {args.steps} --window "
             f"{args.window}`; {platform.machine()} ({platform.processor() or 'cpu'}), 1 torch thread, one child "
             f"per setting (off first), the same batches; 1-min load average at the end "
             f"{open('/proc/loadavg').read().split()[0]}.", "",
             "| steps | ms per step, off | ms per step, flush_denormal | ratio | smallest nonzero item |entry| "
             "(off) | mean loss off / on |", "|---|---|---|---|---|---|"]
    for k, (a, b) in enumerate(zip(res[False], res[True])):
        lines.append(f"| {k * args.window + 1}-{(k + 1) * args.window} | {a['ms']:.0f} | {b['ms']:.0f} | "
                     f"{a['ms'] / b['ms']:.2f} | {a['min_abs']:.1e} | {a['loss']:.6f} / {b['loss']:.6f} |")
    emit("\n".join(lines) + "\n", args.write)


if __name__ == "__main__":
    main()
