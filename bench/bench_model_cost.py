"""Will a model's training fit the time you have? Projected minutes per epoch and per
full-ranking evaluation, from a few timed steps.

    python bench/bench_model_cost.py --models convncf mkgat --dataset ml-1m --threads 1

For each model (own process, same data): mean seconds of ``--steps`` CF (BPR) training
steps on random (user, positive, negative) batches of the model's batch size, after one
warm-up step, times the steps of an epoch (train interactions / batch size); and the
seconds of ``prepare_eval`` (a graph model's propagation) plus those to score ``--users``
users against every item (``full_sort_predict``) times the number of users. The KG pass and the evaluator's top-k are not included (both are small
next to the scoring for the models this is meant for: ConvNCF, MKGAT). Parameters start at
random (no pre-training): the cost per step does not depend on the values.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
from multikg4rec import runtime
from multikg4rec.config import load_config
from multikg4rec.data import load_dataset
from multikg4rec.models import build_model
from multikg4rec.runtime import seed_everything
model, dataset, threads, steps, n_users, data_dir = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), sys.argv[6]
torch.set_num_threads(threads)
over = {"data_dir": data_dir, "threads": threads}
if model == "convncf":
    over["pretrain_path"] = None            # its BPR-MF initialisation: the values do not change the cost
cfg = load_config(model, dataset, None, over)
runtime.configure(cfg)
seed_everything(0)
ds = load_dataset(dataset, cfg, data_dir=data_dir)
m = build_model(cfg, ds)
g = torch.Generator().manual_seed(0)
B = int(cfg["batch_size"])
opt = torch.optim.Adam(m.parameters(), lr=1e-3)
m.train()
def batch():
    return {"users": torch.randint(0, ds.n_users, (B,), generator=g),
            "pos_items": torch.randint(0, ds.n_items, (B,), generator=g),
            "neg_items": torch.randint(0, ds.n_items, (B,), generator=g)}
for i in range(steps + 1):
    if i == 1:
        t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    m.calculate_loss(batch()).backward()
    opt.step()
step = (time.perf_counter() - t) / steps
m.eval()
with torch.no_grad():
    t = time.perf_counter()
    m.prepare_eval()                        # graph models: the one propagation an evaluation starts with
    prepare = time.perf_counter() - t
    users = torch.arange(n_users)
    t = time.perf_counter()
    m.full_sort_predict(users)
    per_user = (time.perf_counter() - t) / n_users
n_train = int(ds.train_csr.nnz)
print(json.dumps({"step_s": step, "batch": B, "epoch_steps": -(-n_train // B), "eval_user_s": per_user, "prepare_s": prepare,
                  "n_users": ds.n_users, "n_items": ds.n_items, "n_train": n_train,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["convncf"])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up)")
    p.add_argument("--users", type=int, default=32, help="users scored against every item")
    p.add_argument("--data-dir", default=os.environ.get("MULTIKG4REC_DATA", "../shared/data"))
    p.add_argument("--write", help="also append the markdown table to this file")
    a = p.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for model in a.models:
        r = subprocess.run([sys.executable, "-c", CHILD, model, a.dataset, str(a.threads), str(a.steps),
                            str(a.users), a.data_dir], capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{model}: failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
        rows.append((model, json.loads(r.stdout.strip().splitlines()[-1])))
    import torch
    out = [f"## Cost of one epoch and one evaluation, {a.dataset}",
           "",
           f"`python bench/bench_model_cost.py --models {' '.join(a.models)} --dataset {a.dataset} "
           f"--threads {a.threads} --steps {a.steps} --users {a.users}`",
           "",
           f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.machine()}, {os.cpu_count()} visible "
           f"CPUs, {a.threads} torch thread(s); torch {torch.__version__}; load average (1 min) {load:.1f} before, "
           f"{os.getloadavg()[0]:.1f} after. CF steps on random batches; evaluation = scoring every item for "
           f"{a.users} users, scaled to all users (the KG pass and the top-k are not included).",
           "",
           "| model | batch | s / step | steps / epoch | min / epoch | s to prepare | ms / user scored | min / evaluation | peak RSS MB |",
           "|---|---|---|---|---|---|---|---|---|"]
    for model, r in rows:
        out.append(f"| {model} | {r['batch']} | {r['step_s']:.3f} | {r['epoch_steps']} | "
                   f"{r['step_s'] * r['epoch_steps'] / 60:.1f} | {r['prepare_s']:.1f} | {r['eval_user_s'] * 1e3:.2f} | "
                   f"{(r['prepare_s'] + r['eval_user_s'] * r['n_users']) / 60:.1f} | {r['peak_rss_mb']:.0f} |")
    text = "\n".join(out) + "\n"
    print(text)
    if a.write:
        with open(a.write, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
