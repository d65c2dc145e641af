#!/usr/bin/env python
"""Ours vs RecBole 1.2.1 on the SAME split: a side-by-side markdown table.

Runs in OUR venv (.venv); RecBole runs in its own (bench/.venv-recbole, made by bench/recbole/setup.sh)
through bench/recbole/run_recbole.py, on the split our run wrote (``<run_dir>/split``).

    MULTIKG4REC_DATA=../shared/data .venv/bin/python bench/recbole/compare.py \\
        --dataset ml-100k --models bprmf,lightgcn --seeds 2024 --threads 1

* ``--models``: our model names (RecBole's counterpart from ``PAIRS``) or ``ours:RecBoleName`` pairs.
* Ours is trained with ``multikg4rec.training.run(load_config(...))`` in a child process (so peak RSS is
  that run's alone); a finished run directory is read, not redone.
* ``--recbole-only``: do not train ours; only write the run directory's ``config.yaml`` and ``split/``
  (the split does not depend on the model) and run RecBole on it; ours shows as "not run".
* ``--epochs N`` caps BOTH frameworks (timing-only runs, e.g. on ml-1m); the table says so. With
  ``--no-eval`` both only train those epochs (no validation, no test: the row shows seconds and peak memory,
  accuracy "-"); for ConvNCF on ml-1m, whose full ranking costs hours on one core.
* ``--set KEY=YAML`` overrides OUR config (a separate run directory); RecBole gets the value through the
  mapping of run_recbole.py (e.g. ``--set patience=30`` -> ``stopping_step: 29``). The row is labelled with it.
* ``--recbole-env KEY=VALUE`` sets an environment variable for RecBole's process only (e.g. the glibc malloc
  thresholds ours raises itself, ``multikg4rec.runtime``); the row is labelled with it.
* ConvNCF starts from BPR-MF on both sides (the paper): ours from its BPR-MF run (``pretrain_path: auto``,
  trained first when missing), RecBole's from RecBole's BPR trained on the same split with our BPR-MF config
  mapped (``train_method: after_pretrain``); the row records that BPR run under ``recbole_pretrain``.
  ``--set pretrain_path=null`` compares both from scratch (RecBole's default ``no_pretrain``).
* ``--check-eval`` also scores RecBole's best model with OUR evaluator (bench/recbole/check_eval.py).
* Resumable: RecBole's run keeps its state in ``bench/out/recbole/state/<run>/`` before every epoch
  (``run_recbole.py --state-dir``); a killed ``compare.py`` started again with the same arguments reuses
  our finished run and continues RecBole's from its last finished epoch, ending where an uninterrupted run
  ends (``bench/recbole/check_resume.py``; ``resumed_from_epoch`` in the row says it happened).
* The table is ``bench/results/recbole_<dataset>.md``. Rows accumulate across invocations: the file embeds
  its rows as JSON (an HTML comment) and a new result replaces the row of the same (model, seed,
  variant); each row's command, date and machine are listed under the table. Paths in the records are relative
  to the repository (``runs/...``, ``MULTIKG4REC_DATA=../shared/data``): no machine's absolute paths.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_RECBOLE_PY = ROOT / "bench" / ".venv-recbole" / "bin" / "python"

# our model -> RecBole model
PAIRS = {"bprmf": "BPR", "lightgcn": "LightGCN", "kgat": "KGAT", "cke": "CKE", "kgcn": "KGCN",
         "spectralcf": "SpectralCF", "convncf": "ConvNCF"}
METRICS = ("recall@20", "mrr@20", "ndcg@20")
ROWS_TAG = "<!-- recbole-compare rows:"


# --------------------------------------------------------------------------- child: one run of ours
def _ours_child(spec: dict) -> None:
    """In a fresh process: train (or read) one run of ours, or only write its split; print a JSON line."""
    from multikg4rec.config import load_config
    from multikg4rec.rundir import default_run_dir
    from multikg4rec.training import run

    cfg = load_config(spec["model"], spec["dataset"], overrides=spec["overrides"])
    if spec["split_only"]:
        run_dir = default_run_dir(cfg)
        if not (run_dir / "split").is_dir() or not (run_dir / "config.yaml").is_file():
            _write_run_split(cfg, _load(cfg))
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    elif spec.get("no_eval"):
        run_dir, metrics = _ours_timing(cfg)
    else:
        from multikg4rec.models import get_model_class
        for pre in get_model_class(cfg["model"]).prerequisites(cfg):   # ConvNCF: its BPR-MF initialisation
            run(pre, quiet=True)
        reused = (default_run_dir(cfg) / "metrics.json").is_file() and not spec.get("restart")
        res = run(cfg, quiet=True, restart=bool(spec.get("restart")))
        run_dir, metrics = res.run_dir, res.metrics
        if metrics:
            metrics["reused"] = reused
    out = {"run_dir": str(Path(run_dir).resolve()), "metrics": metrics}
    if cfg["model"] == "convncf" and cfg.get("pretrain_path"):
        from multikg4rec.models.pretrained import bprmf_config    # the BPR-MF config ours starts from
        pre = bprmf_config(cfg) if str(cfg["pretrain_path"]) == "auto" else load_yaml_file(cfg["pretrain_path"])
        out["pretrain_config"] = pre
    print(json.dumps(out, default=str), flush=True)


def _load(cfg: dict):
    from multikg4rec.data import load_dataset
    return load_dataset(cfg["dataset"], cfg, data_dir=cfg.get("data_dir"), cache_dir=cfg.get("cache_dir"))


def _write_run_split(cfg: dict, ds) -> Path:
    """The run directory ours would use, with only its ``config.yaml`` and ``split/`` (what RecBole reads)."""
    from multikg4rec.config import dump_config
    from multikg4rec.rundir import default_run_dir, write_split
    run_dir = default_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    write_split(ds, run_dir / "split")
    return run_dir


def _ours_timing(cfg: dict) -> tuple[Path, dict]:
    """``--no-eval``: ``cfg['epochs']`` training epochs of ours (``Trainer.train_epoch``, the same epoch ``fit``
    runs), no validation or test. Writes the run directory's ``config.yaml`` and ``split/`` for RecBole; the
    trainer's checkpoints go to a temporary folder (nothing of a timing run is kept as a run)."""
    import tempfile

    import torch
    from multikg4rec import runtime
    from multikg4rec.models import get_model_class
    from multikg4rec.models import build_model
    from multikg4rec.runtime import peak_rss_mb, reset_peak_rss, seed_everything
    from multikg4rec.training import Trainer, run

    for pre in get_model_class(cfg["model"]).prerequisites(cfg):      # ConvNCF: its BPR-MF initialisation
        run(pre, quiet=True)
    runtime.configure(cfg)
    reset_peak_rss()
    seed_everything(cfg["seed"])
    ds = _load(cfg)
    model = build_model(cfg, ds)
    run_dir = _write_run_split(cfg, ds)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, ds, cfg, Path(tmp), quiet=True)
        secs = [trainer.train_epoch()["train_seconds"] for _ in range(int(cfg["epochs"]))]
    none = {m: None for m in METRICS}
    return run_dir, {"test": none, "valid": none, "best_epoch": None, "epochs_run": len(secs),
                     "seconds_per_epoch": round(sum(secs) / len(secs), 3), "epoch_seconds": secs,
                     "peak_rss_mb": round(peak_rss_mb(), 1), "threads": torch.get_num_threads(),
                     "n_params": int(sum(p.numel() for p in model.parameters())), "torch": torch.__version__,
                     "reused": False, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def load_yaml_file(path) -> dict:
    """The config.yaml of a BPR-MF run directory (or of the directory holding its best_model.pt)."""
    import yaml
    p = Path(path)
    p = p / "config.yaml" if p.is_dir() else p.parent / "config.yaml"
    return yaml.safe_load(p.read_text(encoding="utf-8"))


def run_ours(model: str, dataset: str, seed: int, args) -> dict:
    overrides = {"seed": seed, "output_dir": args.output_dir}
    if args.threads:
        overrides["threads"] = args.threads
    if args.epochs:
        overrides["epochs"] = args.epochs
    overrides.update(args.overrides)
    spec = {"model": model, "dataset": dataset, "overrides": overrides, "split_only": args.recbole_only,
            "restart": args.restart_ours, "no_eval": args.no_eval}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_ours-child", json.dumps(spec)],
                       cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise SystemExit(f"compare: our {model} failed (exit {p.returncode})")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def run_recbole(recbole_model: str, run_dir: str, seed: int, args, extra: tuple[str, ...] = (),
                pretrain: bool = False) -> dict:
    """RecBole's ``recbole_model`` on ``run_dir``'s split. ``pretrain``: the BPR-MF pretraining of a ConvNCF
    pair (``extra`` holds its ``--config``; no epoch cap, no score dump, work folder kept for the checkpoint)."""
    cmd = [str(args.recbole_python), str(HERE / "run_recbole.py"), "--run-dir", run_dir, "--model", recbole_model,
           "--seed", str(seed), "--threads", str(args.threads or 1), "--out", str(ROOT / "bench" / "out" / "recbole")]
    if args.epochs and not pretrain:
        cmd += ["--epochs", str(args.epochs)]
    if args.no_eval and not pretrain:
        cmd += ["--no-eval"]
    # the same process settings as ours (ConvNCF: flush-to-zero)
    ours_cfg = Path(run_dir) / "config.yaml"
    if not pretrain and ours_cfg.is_file() and load_yaml_file(run_dir).get("flush_denormal"):
        cmd += ["--flush-denormal"]
    if not pretrain:   # resumable: a killed compare.py, run again, continues RecBole's run from its last epoch
        tag = f"{recbole_model}-{Path(run_dir).name}-seed{seed}" + (f"-e{args.epochs}" if args.epochs else "") + \
            ("-noeval" if args.no_eval else "")
        cmd += ["--state-dir", str(ROOT / "bench" / "out" / "recbole" / "state" / tag)]
    if args.check_eval and not pretrain:
        cmd += ["--dump-scores", str(ROOT / "bench" / "out" / "recbole" / f"scores_{recbole_model}_{Path(run_dir).name}.npz")]
    cmd += list(extra)
    for kv in ([] if pretrain else args.recbole_set):
        cmd += ["--set", kv]
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    env.update(kv.split("=", 1) for kv in args.recbole_env)
    print("compare: " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"compare: RecBole {recbole_model} failed (exit {p.returncode})")
    return json.loads(p.stdout.strip().splitlines()[-1])


def recbole_pretrain(o: dict, seed: int, args) -> tuple[dict, tuple[str, ...]]:
    """ConvNCF starts from BPR-MF (the paper; ours: ``pretrain_path``). Train RecBole's BPR on the SAME split
    with OUR BPR-MF config mapped (as the BPR rows), keep its checkpoint, and return the extra run_recbole.py
    arguments that start RecBole's ConvNCF from it (``train_method: after_pretrain``)."""
    import yaml
    out_dir = ROOT / "bench" / "out" / "recbole"
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = out_dir / f"pretrain_bprmf_{Path(o['run_dir']).name}.yaml"
    cfg_file.write_text(yaml.safe_dump(o["pretrain_config"], sort_keys=True), encoding="utf-8")
    print(f"compare: RecBole BPR on the same split first (ConvNCF's initialisation, config {cfg_file})",
          file=sys.stderr, flush=True)
    b_pre = run_recbole("BPR", o["run_dir"], seed, args, extra=("--config", str(cfg_file), "--keep"), pretrain=True)
    if not b_pre.get("saved_model_file") or not Path(b_pre["saved_model_file"]).is_file():
        raise SystemExit("compare: RecBole BPR pretraining left no checkpoint")
    return b_pre, ("--set", "train_method=after_pretrain", "--set", f"pre_model_path={b_pre['saved_model_file']}")


def check_eval(recbole_model: str, run_dir: str, seed: int, dataset: str) -> float | None:
    """Our evaluator on RecBole's dumped scores: max |ours - RecBole's reported| over the test metrics."""
    out = ROOT / "bench" / "out" / "recbole"
    p = subprocess.run([sys.executable, str(HERE / "check_eval.py"), "--run-dir", run_dir,
                        "--scores", str(out / f"scores_{recbole_model}_{Path(run_dir).name}.npz"),
                        "--recbole-json", str(out / f"recbole_{recbole_model}_{dataset}_seed{seed}.json")],
                       cwd=ROOT, capture_output=True, text=True)
    print(p.stdout, p.stderr, file=sys.stderr, flush=True)
    diffs = [abs(float(line.split()[-1])) for line in p.stdout.splitlines()[1:] if line.strip()]
    return max(diffs) if diffs else None


# --------------------------------------------------------------------------- machine
def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"nproc {os.cpu_count()}, {cpu}; Python {platform.python_version()}, ours torch {torch.__version__}; "
            f"1-min load {load:.2f} at the end")


def utc_date() -> str:
    try:
        return subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime())


# --------------------------------------------------------------------------- table
def read_rows(md: Path) -> list[dict]:
    if not md.is_file():
        return []
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith(ROWS_TAG):
            return json.loads(line[len(ROWS_TAG):].rsplit("-->", 1)[0])
    return []


def _f(v, nd=4):
    return "-" if v is None else f"{v:.{nd}f}"


def _mean_sd(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def render(dataset: str, rows: list[dict]) -> str:
    order = list(PAIRS)
    rows = sorted(rows, key=lambda r: (order.index(r["ours"]) if r["ours"] in order else 99, r["ours"],
                                       r.get("variant") or "", r["seed"]))
    out = [f"# Ours vs RecBole 1.2.1 on {dataset} (same split, full ranking)", "",
           "Each pair is trained on the SAME train/valid/test files: ours writes `split/` into its run directory "
           "and RecBole loads it with `benchmark_filename: [train, valid, test]` (bench/recbole/run_recbole.py). "
           "Both rank every item except the user's train (and, for test, valid) items; early stopping on valid "
           "NDCG@20 with the same patience; test metrics of the best valid epoch. Hyper-parameters are ours, "
           "mapped onto RecBole's (bench/recbole/README.md lists the mapping and the deliberate differences). "
           "`variant`: config overrides of that row (for both frameworks), `-` = our defaults.", "",
           "| model (ours / RecBole) | variant | seed | framework | Recall@20 | MRR@20 | NDCG@20 | best / run epochs "
           "| s/epoch | RecBole s/epoch ÷ ours | peak RSS MB |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    checks, reused, pretrained = [], [], []
    for r in rows:
        o, b = r.get("ours_result"), r.get("recbole_result")
        name = f"{r['ours']} / {r['recbole']}"
        var = r.get("variant") or "-"
        lead = f"| {name} | {var} | {r['seed']}"
        if o:
            dag = ""
            if o.get("reused"):
                dag = " †"
                reused.append(f"{name} ({var}, seed {r['seed']}): trained {o.get('finished', '?')}")
            out.append(f"{lead} | ours | " + " | ".join(_f(o["test"].get(m)) for m in METRICS)
                       + f" | {o['best_epoch'] or '-'} / {o['epochs_run']} | {_f(o['seconds_per_epoch'], 3)}{dag} | | "
                       f"{_f(o['peak_rss_mb'], 0)} |")
        else:
            out.append(f"{lead} | ours | not run | | | | | | |")
        if b:
            ratio = (b["seconds_per_epoch"] / o["seconds_per_epoch"]
                     if o and o.get("seconds_per_epoch") and b.get("seconds_per_epoch") else None)
            out.append(f"{lead} | RecBole | " + " | ".join(_f(b["test"].get(m)) for m in METRICS)
                       + f" | {b['best_epoch'] or '-'} / {b['epochs_run']} | {_f(b['seconds_per_epoch'], 3)} | "
                       f"{_f(ratio, 2)}{'x' if ratio else ''} | {_f(b['peak_rss_mb'], 0)} |")
        if r.get("recbole_pretrain"):
            bp = r["recbole_pretrain"]
            pretrained.append(f"{name} ({var}, seed {r['seed']}): RecBole BPR test NDCG@20 "
                              f"{_f(bp['test'].get('ndcg@20'))}, best epoch {bp['best_epoch']} of {bp['epochs_run']}")
        if r.get("eval_agreement") is not None:
            checks.append(f"{name} ({var}, seed {r['seed']}): max |diff| {r['eval_agreement']:.1e}")
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["ours"], r["recbole"], r.get("variant")), []).append(r)
    multi = {k: v for k, v in groups.items() if len(v) > 1}
    if multi:
        out += ["", "Mean ± sd over seeds (test):", "",
                "| model | variant | framework | seeds | Recall@20 | MRR@20 | NDCG@20 |", "|---|---|---|---|---|---|---|"]
        for (ours, rb, var), rs in multi.items():
            for fw, key in (("ours", "ours_result"), ("RecBole", "recbole_result")):
                res = [r[key] for r in rs if r.get(key)]
                if not res:
                    continue
                cells = []
                for m in METRICS:
                    mu, sd = _mean_sd([x["test"].get(m) for x in res])
                    cells.append(_f(mu) + (f" ± {sd:.4f}" if sd is not None else ""))
                out.append(f"| {ours} / {rb} | {var or '-'} | {fw} | {len(res)} | " + " | ".join(cells) + " |")
    out += ["", "Seconds per epoch: training only (ours: `train_seconds` of log.jsonl, i.e. the CF pass plus, for KG "
            "models, the KG pass and attention update; RecBole: the trainer's `_train_epoch`, same scope), mean over "
            "the epochs run; evaluation and data loading excluded. Peak RSS: `ru_maxrss` of the process that trained "
            "(RecBole's includes its `ray`/`tensorboard` imports). The machine is shared: compare timings only "
            "within a row pair, and read the load average below."]
    if reused:
        out += ["", "† ours read from a run that had already finished, not re-timed beside RecBole (`--restart-ours` "
                "retrains it): " + "; ".join(reused) + "."]
    if pretrained:
        out += ["", "ConvNCF from BPR-MF on both sides (the paper's initialisation): ours from our BPR-MF run of the "
                "same split, RecBole's (`train_method: after_pretrain`) from RecBole's BPR trained first on the same "
                "split with our BPR-MF config: " + "; ".join(pretrained) + ". Seconds per epoch exclude the "
                "pretraining on both sides."]
    if checks:
        out += ["", "Evaluator cross-check (`--check-eval`: OUR evaluator on RecBole's best-model score matrix vs "
                "RecBole's reported test Recall/MRR/NDCG@20): " + "; ".join(checks) + "."]
    out += ["", "## Runs", ""]
    by_cmd: dict = {}
    for r in rows:  # one line per command: its rows' dates (each row finished at its own date)
        by_cmd.setdefault(r["command"], []).append(r)
    for cmd, rs in by_cmd.items():
        dates = ", ".join(dict.fromkeys(r["date"] for r in rs))
        out.append(f"* `{cmd}` — {dates}; {rs[-1]['machine']}")
    out += ["", ROWS_TAG + json.dumps(rows, separators=(",", ":")) + "-->", ""]
    return "\n".join(out)


def _portable(v):
    """A row as the committed table records it: every path under this checkout relative to it (``runs/...``),
    and one in the folder above it as ``../`` (``MULTIKG4REC_DATA=../shared/data``), so the records name no
    machine's absolute paths (both frameworks run with ``cwd`` = the repository root)."""
    if isinstance(v, dict):
        return {k: _portable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_portable(x) for x in v]
    if isinstance(v, str):
        return v.replace(f"{ROOT}/", "").replace(f"{ROOT.parent}/", "../") if ROOT.parent != ROOT else v
    return v


def _slim(res: dict | None) -> dict | None:
    if not res:
        return None
    keep = ("test", "valid", "best_epoch", "epochs_run", "seconds_per_epoch", "peak_rss_mb", "run_dir", "threads",
            "resumed_from_epoch", "n_params", "config", "torch", "reused", "finished")
    out = {k: res.get(k) for k in keep if k in res}
    out["test"] = {m: res["test"].get(m) for m in METRICS}
    if "valid" in res:
        out["valid"] = {m: res["valid"].get(m) for m in METRICS}
    return out


# --------------------------------------------------------------------------- main
def parse_models(spec: str) -> list[tuple[str, str]]:
    pairs = []
    for tok in filter(None, (t.strip() for t in spec.split(","))):
        if ":" in tok:
            a, b = tok.split(":", 1)
            pairs.append((a, b))
        elif tok in PAIRS:
            pairs.append((tok, PAIRS[tok]))
        else:
            raise SystemExit(f"compare: no RecBole counterpart known for {tok!r}; write it as {tok}:RecBoleName")
    return pairs


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--_ours-child":
        return _ours_child(json.loads(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--models", default="bprmf,lightgcn",
                    help="comma list of our models, or ours:RecBole pairs (default bprmf,lightgcn)")
    ap.add_argument("--seeds", default="2024", help="comma list (default 2024, our default seed)")
    ap.add_argument("--epochs", type=int, default=None, help="cap on epochs for BOTH (timing-only runs)")
    ap.add_argument("--no-eval", action="store_true",
                    help="with --epochs: train both for that many epochs and time them, no validation or test "
                         "(ConvNCF on ml-1m: one full ranking costs ours ~1 h and RecBole several)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both (default 1)")
    ap.add_argument("--output-dir", default="runs", help="our run directories root (default runs)")
    ap.add_argument("--recbole-only", action="store_true", help="only write our split, do not train ours")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=YAML", dest="ours_set",
                    help="override OUR config (a new run dir); RecBole gets it through the mapping, e.g. "
                         "--set patience=30 (the row is labelled with it)")
    ap.add_argument("--restart-ours", action="store_true",
                    help="retrain ours even if its run finished (to time both frameworks back to back)")
    ap.add_argument("--check-eval", action="store_true",
                    help="also score RecBole's best model with OUR evaluator (bench/recbole/check_eval.py)")
    ap.add_argument("--recbole-python", default=str(DEFAULT_RECBOLE_PY))
    ap.add_argument("--recbole-set", action="append", default=[], metavar="KEY=YAML",
                    help="extra RecBole config passed to run_recbole.py --set")
    ap.add_argument("--recbole-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment variable for RecBole's process only (the row is labelled with it)")
    ap.add_argument("--md", default=None, help="table path (default bench/results/recbole_<dataset>.md)")
    args = ap.parse_args(argv)

    if not Path(args.recbole_python).is_file():
        raise SystemExit(f"compare: {args.recbole_python} not found: run bash bench/recbole/setup.sh first")
    md = Path(args.md) if args.md else ROOT / "bench" / "results" / f"recbole_{args.dataset}.md"
    pairs = parse_models(args.models)
    import yaml
    args.overrides = {kv.split("=", 1)[0]: yaml.safe_load(kv.split("=", 1)[1]) for kv in args.ours_set}
    if args.no_eval and not args.epochs:
        raise SystemExit("compare: --no-eval times a fixed number of epochs: give --epochs N too")
    if args.no_eval and args.check_eval:
        raise SystemExit("compare: --no-eval evaluates nothing, so --check-eval has nothing to check")
    variant = ", ".join(args.ours_set + ([f"epochs<={args.epochs}"] if args.epochs else [])
                        + (["no evaluation (timing)"] if args.no_eval else [])
                        + [f"RecBole {kv}" for kv in args.recbole_env]) or None
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    command = "MULTIKG4REC_DATA=" + os.environ.get("MULTIKG4REC_DATA", "./data") + " python bench/recbole/compare.py " + \
        " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    for ours, rb in pairs:
        for seed in seeds:
            print(f"compare: {args.dataset} {ours} vs RecBole {rb}, seed {seed}", file=sys.stderr, flush=True)
            o = run_ours(ours, args.dataset, seed, args)
            b_pre, extra = None, ()
            if rb == "ConvNCF" and o.get("pretrain_config"):
                b_pre, extra = recbole_pretrain(o, seed, args)
            try:
                b = run_recbole(rb, o["run_dir"], seed, args, extra=extra)
            finally:
                if b_pre and b_pre.get("work_dir"):
                    shutil.rmtree(b_pre["work_dir"], ignore_errors=True)
            agree = check_eval(rb, o["run_dir"], seed, args.dataset) if args.check_eval else None
            row = _portable({"ours": ours, "recbole": rb, "seed": seed, "epochs_cap": args.epochs, "variant": variant,
                             "eval_agreement": agree,
                             "ours_result": _slim(o["metrics"]), "recbole_result": _slim(b), "run_dir": o["run_dir"],
                             **({"recbole_pretrain": _slim(b_pre)} if b_pre else {}),
                             "command": command, "date": utc_date(), "machine": machine()})
            md.parent.mkdir(parents=True, exist_ok=True)
            with open(md.with_suffix(".lock"), "a") as lock:   # two compare.py calls side by side: re-read the
                fcntl.flock(lock, fcntl.LOCK_EX)               # table under a lock, or one drops the other's row
                rows = [r for r in read_rows(md) if (r["ours"], r["recbole"], r["seed"], r.get("variant")) !=
                        (ours, rb, seed, variant)] + [row]
                md.write_text(render(args.dataset, rows), encoding="utf-8")
            def fmt(res):
                return "not run" if not res else " ".join(f"{m} {_f(res['test'][m])}" for m in METRICS) + \
                    f"  {res['seconds_per_epoch']} s/epoch"
            print(f"  ours    : {fmt(o['metrics'])}\n  RecBole : {fmt(b)}", file=sys.stderr, flush=True)
    print(f"compare: wrote {md}", file=sys.stderr)


if __name__ == "__main__":
    main()
