"""ConvNCF training steps, peak memory and time, by how the first two layers are computed (``_FirstTwoLayers``):

* ``autograd``: whole layers through plain autograd (``ConvNCF.TRAIN_WORKSPACE = False``; the default before
  2026-12-02), e^(1) and its gradient allocated afresh at each step;
* ``workspace`` (the default): whole layers, e^(1) and its gradient in buffers reused by every step;
* ``workspace-glibc``: the same with glibc's default malloc thresholds (``tune_allocator: false``);
* ``blocks``: blocks with the first layer recomputed in the backward pass (``ConvNCF.TRAIN_BLOCK = 1 << 23``).

Each (variant, round) is its own child process (peak RSS is per process): load the data, build the model
(random start, no BPR-MF file needed) and the Trainer, 3 warm-up CF steps, then ``--steps`` timed steps on
the same batches through the trainer's own step loop (``Trainer._pass``: BPR loss, backward, fused Adam).
Same parameters, same batches, same scores. Reported: median ms per step over the rounds, the largest peak RSS
(``VmHWM``, the whole process incl. data and model), the RSS after the trainer was built and at the end, with
the run's default allocator setting (``tune_allocator``).

    python bench/studies/bench_convncf_memory.py --dataset ml-1m --steps 150 --rounds 2 \
        --write bench/results/convncf_memory.md
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/, for benchlib
from benchlib import emit, run_child  # noqa: E402

CHILD = r"""
import json, sys
dataset, steps, variant = sys.argv[1], int(sys.argv[2]), sys.argv[3]
from benchlib import rss_mb, timed_trainer_steps
from multikg4rec import runtime
from multikg4rec.config import load_config
from multikg4rec.data import load_dataset
from multikg4rec.models.convncf import ConvNCF
from multikg4rec.models import build_model
from multikg4rec.runtime import peak_rss_mb, seed_everything
cfg = load_config("convncf", dataset, None, {"seed": 0, "threads": 1, "pretrain_path": None,
                                            "tune_allocator": variant != "workspace-glibc"})
runtime.configure(cfg)
if variant == "blocks":
    ConvNCF.TRAIN_BLOCK = 1 << 23
ConvNCF.TRAIN_WORKSPACE = variant != "autograd"
seed_everything(0)
ds = load_dataset(dataset, cfg)
m = build_model(cfg, ds).train()
r = timed_trainer_steps(m, ds, cfg, steps)
print(json.dumps({"ms": r["ms"], "peak_mb": peak_rss_mb(), "built_mb": r["built_mb"], "end_mb": rss_mb(),
                  "loss": float(m.calculate_loss(r["batches"][0]))}))
"""


VARIANTS = ("autograd", "workspace", "workspace-glibc", "blocks")


def child(dataset: str, steps: int, variant: str) -> dict:
    return run_child(CHILD, dataset, steps, variant)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--write", type=Path)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = ap.parse_args()
    variants = tuple(args.variants)
    res = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            res[v].append(child(args.dataset, args.steps, v))
            print(v, res[v][-1], file=sys.stderr)
    base = statistics.median(x["ms"] for x in res[variants[0]])
    lines = [f"## ConvNCF training step: {' vs '.join(variants)} ({args.dataset}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"`python bench/studies/bench_convncf_memory.py --dataset {args.dataset} --steps {args.steps} "
             f"--rounds {args.rounds} --variants {' '.join(variants)}`; {platform.machine()}, 1 torch thread, "
             f"tuned allocator (the default) unless named; ratio: to {variants[0]}; "
             f"each cell: {args.rounds} child processes, alternating order, {args.steps} timed steps each; "
             f"1-min load average at the end {open('/proc/loadavg').read().split()[0]}.", "",
             "| variant | ms per step (median) | children | RSS after trainer built MB | peak RSS MB (max) | "
             "peaks | RSS at the end MB | ratio |", "|---|---|---|---|---|---|---|---|"]
    for v in variants:
        xs = res[v]
        med = statistics.median(x["ms"] for x in xs)
        each_ms = ", ".join(f"{x['ms']:.0f}" for x in xs)
        peaks = ", ".join(f"{x['peak_mb']:.0f}" for x in xs)
        lines.append(f"| {v} | {med:.0f} | {each_ms} | {max(x['built_mb'] for x in xs):.0f} | "
                     f"{max(x['peak_mb'] for x in xs):.0f} | {peaks} | "
                     f"{', '.join(str(round(x['end_mb'])) for x in xs)} | {med / base:.2f} |")
    lines.append("")
    lines.append("Loss of the first batch after training, each child: " + "; ".join(
        f"{v} " + ", ".join(f"{x['loss']:.6f}" for x in res[v]) for v in variants))
    emit("\n".join(lines) + "\n", args.write)


if __name__ == "__main__":
    main()
