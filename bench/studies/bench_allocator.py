"""CF training steps with glibc's default malloc vs ``multikg4rec.runtime.tune_allocator`` (mmap and trim
thresholds raised to 1 GiB), per model, in alternating child processes so both settings see the same load.

A mallopt setting cannot be undone inside a process, so every (model, setting) block is its own child
process: load the data, build the model, 3 warm-up CF steps (BPR loss + backward + fused Adam), then
``--steps`` timed steps. Reported per model and setting: median ms per step over ``--rounds`` children,
minor page faults per step, and the largest peak RSS of those children.

    python bench/studies/bench_allocator.py --dataset ml-100k --models kgat lightgcn multikg4rec --steps 10 \
        --rounds 3 --write bench/results/allocator.md
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/, for benchlib
from benchlib import emit  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
model, dataset, steps, tuned = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
if tuned:
    from multikg4rec.runtime import tune_allocator
    assert tune_allocator()
from multikg4rec.config import load_config
from multikg4rec.data import load_dataset
from multikg4rec.sampling import BPRSampler
from multikg4rec.models import build_model
from multikg4rec.runtime import seed_everything
torch.set_num_threads(1)
cfg = load_config(model, dataset, None, {"seed": 0})
seed_everything(0)
ds = load_dataset(dataset, cfg)
m = build_model(cfg, ds).train()
opt = torch.optim.Adam(m.parameters(), lr=cfg["learning_rate"], fused=True)
batches = [b for _, b in zip(range(steps + 3), BPRSampler(ds.train, ds.n_items, cfg["batch_size"],
                                                          np.random.default_rng(0)))]
def step(b):
    opt.zero_grad(set_to_none=True)
    m.calculate_loss(b).backward()
    opt.step()
for b in batches[:3]:
    step(b)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t = time.perf_counter()
for b in batches[3:]:
    step(b)
dt = (time.perf_counter() - t) / steps
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"ms": dt * 1e3, "faults": (ru.ru_minflt - f0) / steps, "rss_mb": ru.ru_maxrss / 1024}))
"""


def child(model: str, dataset: str, steps: int, tuned: bool) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, model, dataset, str(steps), "1" if tuned else "0"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--models", nargs="+", default=["kgat", "lightgcn", "multikg4rec"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    res = {(m, t): [] for m in args.models for t in (False, True)}
    for r in range(args.rounds):
        for m in args.models:
            for t in ((False, True) if r % 2 == 0 else (True, False)):
                res[m, t].append(child(m, args.dataset, args.steps, t))
                print(m, "tuned" if t else "default", res[m, t][-1], file=sys.stderr)
    lines = [f"# CF training steps with glibc's default malloc vs tuned thresholds, {args.dataset} (1 thread)", "",
             f"`python bench/studies/bench_allocator.py --dataset {args.dataset} --models {' '.join(args.models)} "
             f"--steps {args.steps} --rounds {args.rounds}`, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
             f"{platform.libc_ver()[0]} {platform.libc_ver()[1]}; each cell: median over {args.rounds} child "
             f"processes (alternating settings) of {args.steps} timed steps; RSS: the largest peak of them.", "",
             "| model | malloc | ms per step (median) | children | minor page faults per step | peak RSS MB | ratio |",
             "|---|---|---|---|---|---|---|"]
    for m in args.models:
        base = statistics.median(x["ms"] for x in res[m, False])
        for t in (False, True):
            xs = res[m, t]
            med = statistics.median(x["ms"] for x in xs)
            each = ", ".join(f"{x['ms']:.0f}" for x in xs)
            lines.append(f"| {m} | {'tuned' if t else 'default'} | {med:.1f} | "
                         f"{each} | "
                         f"{statistics.median(x['faults'] for x in xs):,.0f} | {max(x['rss_mb'] for x in xs):.0f} | "
                         f"{med / base:.2f} |")
    emit("\n".join(lines) + "\n", args.write)          # appends: the file keeps its earlier sections


if __name__ == "__main__":
    main()
