"""ConvNCF in fp32 vs bf16 (``precision``): training step time, peak memory, and what bfloat16 products would
do to full ranking (time, scores, top-K lists) if evaluation used them.

Each (precision, round) is its own child process, precisions alternating, so both see the same load: load the
data, build the model (embeddings from ``--pretrain`` when given, e.g. a BPR-MF run directory, else random; CNN
weights from the seed, the same in both precisions) and the Trainer; 3 warm-up CF steps, then ``--steps``
timed steps through the trainer's own step loop (``Trainer._pass``: BPR loss, backward, fused Adam); then
``full_sort_predict`` of ``--users`` users against every item with the TRAINING-mode forward (no gradients;
dropout is 0), i.e. with the precision's products (runs evaluate in eval mode, always fp32: this column is why),
and, on a fresh copy of the untrained model, the same users again: those scores are compared across precisions
(the same weights, only the arithmetic differs). Reported: median ms per step, seconds for a full ranking with
the precision's products projected to all users, peak RSS (``VmHWM``) per child, and, bf16 against fp32 on the
same weights, the largest |score difference| and the mean overlap of the top-20 lists.

    python bench/studies/bench_convncf_precision.py --dataset ml-1m --steps 40 --users 64 --rounds 2 \
        --pretrain runs/ml-1m/bprmf/seed0-724384c7 --write bench/results/convncf_precision.md
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/, for benchlib
from benchlib import emit, run_child  # noqa: E402

CHILD = r"""
import copy, json, sys, time
import numpy as np, torch
dataset, steps, n_users, precision, pretrain, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:7]
from benchlib import timed_trainer_steps
from multikg4rec import runtime
from multikg4rec.config import load_config
from multikg4rec.data import load_dataset
from multikg4rec.models import build_model
from multikg4rec.runtime import peak_rss_mb, seed_everything
cfg = load_config("convncf", dataset, None, {"seed": 0, "threads": 1, "precision": precision,
                                            "pretrain_path": None if pretrain == "-" else pretrain})
runtime.configure(cfg)
seed_everything(0)
ds = load_dataset(dataset, cfg)
m = build_model(cfg, ds).train()
assert cfg["dropout"] == 0, "the training-mode scores below assume no dropout"
fresh = copy.deepcopy(m)
users = torch.arange(ds.n_users)[:n_users]
steps_res = timed_trainer_steps(m, ds, cfg, steps)
with torch.no_grad():                         # training-mode forward: the precision's products
    m.full_sort_predict(users[:2])
    t = time.perf_counter()
    m.full_sort_predict(users)
    eval_s = (time.perf_counter() - t) * ds.n_users / len(users)
    np.save(out, fresh.full_sort_predict(users).numpy())
print(json.dumps({"step_ms": steps_res["ms"], "eval_s": eval_s, "peak_mb": peak_rss_mb(), "loss": steps_res["loss"]}))
"""


def child(args, precision: str, out: Path) -> dict:
    return run_child(CHILD, args.dataset, args.steps, args.users, precision, args.pretrain or "-", out)


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int = 20) -> float:
    ta, tb = np.argsort(-a, axis=1)[:, :k], np.argsort(-b, axis=1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--steps", type=int, default=40, help="timed training steps per child")
    ap.add_argument("--users", type=int, default=64, help="users scored against every item")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pretrain", help="BPR-MF run directory (or best_model.pt) for the embeddings; default random")
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    variants = ("fp32", "bf16")
    res = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        scores = {}
        for r in range(args.rounds):
            for v in (variants if r % 2 == 0 else variants[::-1]):
                out = Path(tmp) / f"{v}.npy"
                res[v].append(child(args, v, out))
                scores[v] = np.load(out)
                print(v, res[v][-1], file=sys.stderr)
    diff = float(np.abs(scores["bf16"] - scores["fp32"]).max())
    spread = float(scores["fp32"].std())
    overlap = topk_overlap(scores["fp32"], scores["bf16"])
    base_step = statistics.median(x["step_ms"] for x in res["fp32"])
    base_eval = statistics.median(x["eval_s"] for x in res["fp32"])
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    amx = "amx_bf16" in open("/proc/cpuinfo").read()
    lines = [f"## ConvNCF fp32 vs bf16 ({args.dataset}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"`python bench/studies/bench_convncf_precision.py --dataset {args.dataset} --steps {args.steps} "
             f"--users {args.users} --rounds {args.rounds}"
             + (f" --pretrain {args.pretrain}" if args.pretrain else "") + "`; "
             f"{platform.machine()} ({cpu}, AMX bf16: {'yes' if amx else 'no'}), 1 torch thread; each cell: "
             f"{args.rounds} child processes, precisions alternating; {args.steps} timed training steps (batch 512) "
             f"and {args.users} users scored against every item per child; 1-min load average at the end "
             f"{open('/proc/loadavg').read().split()[0]}.", "",
             "| precision | ms per training step (median) | each | full ranking with its products, all users, s (median) | each | "
             "peak RSS MB (max) | step ratio | evaluation ratio |", "|---|---|---|---|---|---|---|---|"]
    for v in variants:
        xs = res[v]
        ms, ev = statistics.median(x["step_ms"] for x in xs), statistics.median(x["eval_s"] for x in xs)
        each_ms = ", ".join(f"{x['step_ms']:.0f}" for x in xs)
        each_s = ", ".join(f"{x['eval_s']:.0f}" for x in xs)
        lines.append(f"| {v} | {ms:.0f} | {each_ms} | {ev:.0f} | {each_s} | {max(x['peak_mb'] for x in xs):.0f} | "
                     f"{ms / base_step:.2f} | {ev / base_eval:.2f} |")
    lines += ["", f"Same weights, bf16 against fp32 products' scores ({args.users} users x every item): max |diff| {diff:.2e} "
                  f"(fp32 scores' std {spread:.2e}); mean top-20 overlap {overlap:.4f}. Mean training loss of the "
                  f"timed steps, each child: " + "; ".join(
                      f"{v} " + ", ".join(f"{x['loss']:.5f}" for x in res[v]) for v in variants)]
    emit("\n".join(lines) + "\n", args.write)


if __name__ == "__main__":
    main()
