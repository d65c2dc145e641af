"""Full-ranking scoring (``full_sort_predict``) of one model: seconds and peak memory, the working tree against
a git revision of the model's file.

For the models whose scoring is the cost of an evaluation: KGCN's scores are user-dependent at every node of
every item's sampled tree, ConvNCF sends every (user, item) pair through its CNN; both work in blocks
(``EVAL_BLOCK`` floats). Each (version, block size) is measured in its own child process, versions
alternating, so both see the same load and neither inherits the other's heap: load the data, build the
(untrained: the cost does not depend on the weights) model, one warm-up call on 2 users, then score
``--users`` users (default: all) against every item once. Reported per configuration: median seconds over
``--rounds`` children, projected to all users, and the largest rise of peak RSS (VmHWM, reset just before
the call) above the RSS before it. Scores of every configuration are checked against the first one's (max |diff|).

    python bench/bench_full_sort.py --model kgcn --dataset ml-1m --ref HEAD~1 --blocks 23 21 --rounds 3 \
        --write bench/results/kgcn_eval.md
    python bench/bench_full_sort.py --model convncf --dataset ml-1m --users 8 --blocks 19 --rounds 3 \
        --write bench/results/convncf_eval.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import emit

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import importlib.util, json, sys, time
import numpy as np, torch
model, dataset, block, ref_file, out, n_users = sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:6], int(sys.argv[6])
from multikg4rec.config import load_config
from multikg4rec.data import load_dataset
from multikg4rec.models import get_model_class
from multikg4rec.runtime import peak_rss_mb, reset_peak_rss, seed_everything
cls = get_model_class(model)
if ref_file != "-":     # the reference version of the module, loaded as a submodule of the package
    spec = importlib.util.spec_from_file_location(f"multikg4rec.models._{model}_ref", ref_file)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); cls = getattr(mod, cls.__name__)
torch.set_num_threads(1)
cfg = load_config(model, dataset, None, {"seed": 0, **({"pretrain_path": None} if model == "convncf" else {})})
seed_everything(0)
ds = load_dataset(dataset, cfg)
m = cls(ds, cfg).eval()
cls.EVAL_BLOCK = 1 << block
users = torch.arange(ds.n_users)[:n_users or None]
with torch.no_grad():
    m.prepare_eval()
    m.full_sort_predict(users[:2])
    reset_peak_rss()
    with open("/proc/self/status") as f:
        base = next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:"))
    t = time.perf_counter()
    scores = m.full_sort_predict(users)
    dt = time.perf_counter() - t
    rise = peak_rss_mb() - base
np.save(out, scores.numpy())
print(json.dumps({"s": dt * ds.n_users / len(users), "rise_mb": rise}))
"""


def child(model: str, dataset: str, block: int, ref_file: str, out: str, users: int) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-c", CHILD, model, dataset, str(block), ref_file, out, str(users)], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    import numpy as np
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="kgcn", help="a model with EVAL_BLOCK: kgcn or convncf")
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--users", type=int, default=0, help="score the first N users (0: all); seconds are scaled "
                                                          "to all users")
    ap.add_argument("--ref", default="HEAD", help="git revision of src/multikg4rec/models/<model>.py to compare with")
    ap.add_argument("--blocks", type=int, nargs="+", default=[23, 21], help="log2 of EVAL_BLOCK values")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", help="append the markdown section to this file")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp())
    ref_file = tmp / f"{args.model}_ref.py"
    ref_file.write_text(subprocess.run(["git", "show", f"{args.ref}:src/multikg4rec/models/{args.model}.py"], cwd=ROOT,
                                       stdout=subprocess.PIPE, text=True, check=True).stdout)
    load0 = os.getloadavg()[0]
    configs = [(v, b) for b in args.blocks for v in (args.ref, "working tree")]
    res = {c: [] for c in configs}
    first = None
    maxdiff = {}
    for r in range(args.rounds):
        for v, b in configs:
            out = str(tmp / f"s_{len(res[(v, b)])}.npy")
            res[(v, b)].append(child(args.model, args.dataset, b, str(ref_file) if v == args.ref else "-", out,
                                     args.users))
            s = np.load(out)
            first = s if first is None else first
            maxdiff[(v, b)] = max(maxdiff.get((v, b), 0.0), float(np.abs(s - first).max()))
            print(f"round {r} {v} 2^{b}: {res[(v, b)][-1]}", flush=True)
    load1 = os.getloadavg()[0]
    base = statistics.median(x["s"] for x in res[configs[0]])
    cmd = "python bench/bench_full_sort.py " + " ".join(argv if argv is not None else sys.argv[1:])
    scored = f"{args.users} users scored, seconds scaled to all users" if args.users else "All users scored"
    lines = [f"## {args.model} full-ranking evaluation, {args.dataset}", "", f"`{cmd}`", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}, {os.cpu_count()} visible "
             f"CPUs, 1 torch thread; load average (1 min) {load0:.1f} before, {load1:.1f} after. {scored} "
             f"once per child process; median of {args.rounds} children per row, versions alternating; "
             f"ratio = seconds / first row's.", "",
             "| version | EVAL_BLOCK | seconds, all users (median) | all runs | ratio | peak RSS rise MB (max) | max abs score diff |",
             "|---|---|---|---|---|---|---|"]
    for v, b in configs:
        ts = [x["s"] for x in res[(v, b)]]
        med = statistics.median(ts)
        lines.append(f"| {v} | 2^{b} | {med:.2f} | {', '.join(f'{t:.2f}' for t in ts)} | {med / base:.2f}x | "
                     f"{max(x['rise_mb'] for x in res[(v, b)]):.0f} | {maxdiff[(v, b)]:.1e} |")
    emit("\n" + "\n".join(lines), args.write)


if __name__ == "__main__":
    main()
