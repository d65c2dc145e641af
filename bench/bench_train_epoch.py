"""Seconds per training epoch (CF pass only, no evaluation) and peak memory, per model, on a real dataset.

Each (model, threads) runs in its own subprocess so that peak RSS (ru_maxrss) belongs to that run alone.

    python bench/bench_train_epoch.py --dataset ml-1m --models bprmf lightgcn --threads 1 2 --epochs 2
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from multikg4rec.config import load_config
from multikg4rec.data import load_dataset
from multikg4rec.sampling import BPRSampler
from multikg4rec.models import build_model
from multikg4rec.runtime import seed_everything
model, dataset, threads, epochs, data_dir, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], json.loads(sys.argv[6])
torch.set_num_threads(threads)
cfg = load_config(model, dataset, None, overrides | {"data_dir": data_dir})
seed_everything(cfg["seed"])
ds = load_dataset(dataset, cfg, data_dir=data_dir)
m = build_model(cfg, ds)
opt = torch.optim.Adam(m.parameters(), lr=cfg["learning_rate"])
sampler = BPRSampler(ds.train, ds.n_items, cfg["batch_size"], np.random.default_rng(cfg["seed"]))
times = []
for _ in range(epochs):
    t = time.perf_counter()
    for b in sampler:
        opt.zero_grad(); loss = m.calculate_loss(b); loss.backward(); opt.step()
    times.append(time.perf_counter() - t)
print(json.dumps({"seconds": times, "batches": len(sampler), "batch_size": cfg["batch_size"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--models", nargs="+", default=["bprmf", "lightgcn"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--set", default="{}", help="JSON config overrides, e.g. '{\"batch_size\": 8192}'")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_epoch.md"))
    a = p.parse_args()
    rows = []
    for model in a.models:
        for th in a.threads:
            r = subprocess.run([sys.executable, "-c", CHILD, model, a.dataset, str(th), str(a.epochs), a.data_dir, a.set],
                               capture_output=True, text=True, check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            best = min(res["seconds"])
            rows.append(f"| {model} | {th} | {res['batch_size']} | {res['batches']} | {best:.2f} | "
                        f"{', '.join(f'{s:.2f}' for s in res['seconds'])} | {res['peak_rss_mb']:.0f} |")
            print(rows[-1], flush=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    import torch
    head = (f"## Training epoch time, {a.dataset}\n\n"
            f"`python bench/bench_train_epoch.py --dataset {a.dataset} --models {' '.join(a.models)} "
            f"--threads {' '.join(map(str, a.threads))} --epochs {a.epochs}`\n\n"
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu}; {platform.machine()}; torch {torch.__version__}; "
            f"CF pass only (BPR batches, forward+backward+Adam), no evaluation. Peak RSS = ru_maxrss of the "
            f"subprocess (includes loading the dataset).\n\n"
            "| model | threads | batch | batches | best epoch s | all epochs s | peak RSS MB |\n|---|---|---|---|---|---|---|\n")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(head + "\n".join(rows) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
