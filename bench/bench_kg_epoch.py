"""Seconds per FULL training epoch and peak memory of KG models, side by side in one run.

A full epoch is what the trainer does between two evaluations: the CF (BPR) pass, the KG
(TransR) pass and the end-of-epoch attention update (``Trainer.fit``, evaluation excluded).
Each model runs in its own subprocess (peak RSS = ru_maxrss of that process alone), one
after another, and the table reports each model's epoch time as a ratio to the FIRST model
measured in the same invocation (the machine is shared: ratios are steadier than seconds).

    python bench/bench_kg_epoch.py --dataset ml-1m --models kgat multikg4rec --epochs 1 \
        --write bench/results/kg_epoch.md

A model may carry its own overrides, ``name@key=value[,key=value]`` (YAML values), e.g.
``multikg4rec@kg_loss_triples=ckg`` (the recipe of the paper tables' runs): a variant measured beside the
default in the same run.
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

CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
import torch
from multikg4rec.config import load_config
from multikg4rec.data import load_dataset
from multikg4rec import runtime
from multikg4rec.models import build_model
from multikg4rec.runtime import seed_everything
from multikg4rec.training import Trainer
model, dataset, threads, epochs, data_dir, overrides = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
                                                        int(sys.argv[4]), sys.argv[5], json.loads(sys.argv[6]))
torch.set_num_threads(threads)
cfg = load_config(model, dataset, None, overrides | {"data_dir": data_dir, "epochs": epochs, "patience": 10**6,
                                                      "eval_every": 10**6})
runtime.configure(cfg)                          # as training.run: threads, malloc thresholds
seed_everything(cfg["seed"])
ds = load_dataset(dataset, cfg, data_dir=data_dir)
t = time.perf_counter()
m = build_model(cfg, ds)
build = time.perf_counter() - t
with tempfile.TemporaryDirectory() as d:
    tr = Trainer(m, ds, cfg, Path(d), quiet=True)
    cf_t, kg_t = [], []
    orig = tr._pass
    def timed(sampler, fn, desc):
        t = time.perf_counter(); out = orig(sampler, fn, desc)
        (kg_t if desc.endswith("KG") else cf_t).append(time.perf_counter() - t)
        return out
    tr._pass = timed
    tr.fit()
print(json.dumps({"seconds": tr.train_seconds, "cf": cf_t, "kg": kg_t, "build": build,
                  "cf_batches": len(tr.cf_sampler), "kg_batches": len(tr.kg_sampler) if tr.kg_sampler else 0,
                  "batch_size": cfg["batch_size"], "kg_batch_size": cfg["kg_batch_size"],
                  "n_params": sum(p.numel() for p in m.parameters()),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--models", nargs="+", default=["kgat", "multikg4rec"],
                   help="the first one is the baseline; name@key=value[,key=value] for a variant")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--data-dir", default=os.environ.get("MULTIKG4REC_DATA",
                                                        str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    p.add_argument("--set", default="{}", help="JSON config overrides for every model, e.g. '{\"batch_size\": 8192}'")
    p.add_argument("--write", help="also write the markdown table to this file")
    a = p.parse_args()
    load0 = os.getloadavg()
    rows, base = [], None
    from multikg4rec.config import parse_value      # the CLI's --key value parsing (YAML scalars/lists)
    for spec in a.models:
        model, _, extra = spec.partition("@")
        over = json.loads(a.set) | {k: parse_value(v) for k, v in
                                    (kv.split("=", 1) for kv in filter(None, extra.split(",")))}
        r = subprocess.run([sys.executable, "-c", CHILD, model, a.dataset, str(a.threads), str(a.epochs),
                            a.data_dir, json.dumps(over)], capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{spec}: failed\n{r.stderr[-2000:]}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        best = min(res["seconds"])
        base = base or best
        rows.append(f"| {spec} | {res['batch_size']} x {res['cf_batches']} | {res['kg_batch_size']} x "
                    f"{res['kg_batches']} | {min(res['cf']):.1f} | {min(res['kg']) if res['kg'] else 0:.1f} | "
                    f"**{best:.1f}** | {best / base:.2f}x | {res['peak_rss_mb']:.0f} | {res['n_params']:,} |")
        print(rows[-1], flush=True)
    load1 = os.getloadavg()
    import torch
    md = "\n".join([
        f"## Full training epoch, {a.dataset}", "",
        f"`python bench/bench_kg_epoch.py --dataset {a.dataset} --models {' '.join(a.models)} --threads {a.threads} "
        f"--epochs {a.epochs}" + (f" --set '{a.set}'" if a.set != "{}" else "") + "`", "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} visible CPUs, {a.threads} torch thread(s); torch {torch.__version__}; load average "
        f"(1 min) {load0[0]:.1f} before, {load1[0]:.1f} after (other jobs share the cores). Epoch = CF pass + KG "
        f"pass + attention update, no evaluation; best of {a.epochs} epoch(s). ratio = epoch time / first row's.", "",
        "| model | CF batch x steps | KG batch x steps | CF pass s | KG pass s | epoch s | ratio | peak RSS MB | "
        "parameters |", "|---|---|---|---|---|---|---|---|---|", *rows, ""])
    print(md)
    if a.write:
        Path(a.write).parent.mkdir(parents=True, exist_ok=True)
        with open(a.write, "a") as f:
            f.write(md + "\n")


if __name__ == "__main__":
    main()
