#!/usr/bin/env python
"""The GPU check: every model, a few epochs on ml-100k, on the CPU and on a CUDA device, side by side.

For a session that has a GPU (CI never has one; tests/test_device.py checks on the CPU what the GPU path
relies on). Each (model, device) run is a normal ``multikg4rec.training.run`` in a fresh run directory
under ``--output-dir``; a run that fails is reported with its one-line error and the script exits 1.

    MULTIKG4REC_DATA=/path/to/data python bench/device_check.py --epochs 2 --models bprmf kgat multikg4rec

Prints (and writes to ``--md``) a markdown table: per model and device, seconds per epoch, evaluation
seconds, test NDCG@20 and peak memory (RSS; GPU memory on cuda). The CPU and GPU metrics are not expected
to agree to the last digit (different kernels, float summation order, random streams), only to be of the
same size after the same number of epochs.
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

MODELS = ["bprmf", "lightgcn", "spectralcf", "convncf", "cke", "kgcn", "kgat", "mkgat", "multikg4rec"]


def _child(spec: dict) -> None:
    """One run in a fresh process (peak memory is that run's alone); prints one JSON line."""
    from multikg4rec.config import load_config
    from multikg4rec.errors import UserError
    from multikg4rec.training import run
    t0 = time.perf_counter()
    try:
        cfg = load_config(spec["model"], spec["dataset"], None, spec["overrides"])
        if spec["model"] == "convncf" and str(cfg.get("pretrain_path")) == "auto":
            run(load_config("bprmf", spec["dataset"], None, spec["bprmf_overrides"]), quiet=True)
        res = run(cfg, quiet=True)
        out = {"ok": True, "metrics": res.metrics, "run_dir": str(res.run_dir)}
        log = [json.loads(line) for line in open(Path(res.run_dir) / "log.jsonl")]
        out["eval_seconds"] = round(sum(r.get("eval_seconds", 0) for r in log) / max(len(log), 1), 3)
    except UserError as e:
        out = {"ok": False, "error": str(e)}
    except Exception as e:  # a GPU-path bug: report it, do not stop the other checks
        out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, default=str), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--output-dir", default="bench/out/device_check")
    ap.add_argument("--md", default=None, help="also write the table here")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        _child(json.loads(args._child))
        return 0
    rows, failed = [], 0
    for model in args.models:
        for dev in args.devices:
            over = {"seed": args.seed, "epochs": args.epochs, "device": dev, "output_dir": args.output_dir}
            if args.threads:
                over["threads"] = args.threads
            bpr = {k: over[k] for k in ("seed", "device", "output_dir") if k in over}
            spec = {"model": model, "dataset": args.dataset, "overrides": over, "bprmf_overrides": bpr}
            print(f"device_check: {model} on {dev} ...", file=sys.stderr, flush=True)
            p = subprocess.run([sys.executable, __file__, "--_child", json.dumps(spec)], stdout=subprocess.PIPE,
                               text=True)
            lines = p.stdout.strip().splitlines()
            res = json.loads(lines[-1]) if lines else {"ok": False, "error": f"exit {p.returncode}, no output"}
            failed += not res["ok"]
            rows.append((model, dev, res))
    head = ["| model | device | s/epoch | eval s | test NDCG@20 | peak RSS MB | peak GPU MB | |",
            "|---|---|---|---|---|---|---|---|"]
    body = []
    for model, dev, r in rows:
        if not r["ok"]:
            body.append(f"| {model} | {dev} | | | | | | FAILED: {r['error'][:200]} |")
            continue
        m = r["metrics"]
        body.append(f"| {model} | {dev} | {m['seconds_per_epoch']} | {r.get('eval_seconds')} | "
                    f"{m['test']['ndcg@20']:.4f} | {m['peak_rss_mb']} | {m.get('peak_gpu_mb', '')} | |")
    stamp = (f"`python bench/device_check.py {' '.join(argv if argv is not None else sys.argv[1:])}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
             f"{os.cpu_count()} CPUs, {args.epochs} epochs each, seed {args.seed}")
    text = "\n".join([stamp, ""] + head + body) + "\n"
    print(text)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(text, encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
