"""Fold-in cost of the graph models: the time to rebuild a trained model over its graph grown by one new
item (what `POST /items` waits for) or by one anonymous 5-item session (what a graph model's
`POST /recommend` waits for), against another checkout of the code in the same invocation.

    python bench/bench_foldin.py --bundle B1 [B2 ...] [--repeats 5] [--baseline-src CHECKOUT]
        [--write bench/results/foldin.md]

Each (source tree, bundle) runs in its own process, one thread: the bundle's model is rebuilt once, one
warm-up rebuild runs, then ``--repeats`` timed rebuilds per case; the table gives medians and the process's
peak RSS. The new item copies the KG triples and content of the bundle's item with the most triples (as
bench/bench_serve.py's new items do); the session is five items drawn with a fixed seed.
``--baseline-src``: a checkout of another commit (``git worktree add DIR REV``).
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def child(bundle: Path, repeats: int) -> dict:
    """Runs inside the measured source tree."""
    import resource

    import torch
    torch.set_num_threads(1)
    from benchlib import most_linked_item
    from multikg4rec.bundle import Bundle
    from multikg4rec.foldin import NewItem, grow
    from multikg4rec.rundir import run_features
    b = Bundle(bundle)
    ds, feats = b.dataset, run_features(bundle)
    model = b.build_model()
    x, links = most_linked_item(ds)
    content = {m: v[x] for m, (v, mask) in (feats or {}).items() if mask[x]}
    session = np.random.default_rng(0).choice(ds.n_items, 5, replace=False).tolist()
    cases = {"new item": lambda: grow(model, ds, feats, items=[NewItem("bench-new", links, content)]),
             "5-item session": lambda: grow(model, ds, feats, users=[("session", session)])}
    out = {"model": model.config["model"], "items": ds.n_items, "links": len(links)}
    for name, run in cases.items():
        new, _ = run()                                              # warm-up (first use builds caches)
        new.scoring_rows()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            new, _ = run()
            new.scoring_rows()
            times.append(time.perf_counter() - t0)
        out[name] = float(np.median(times))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def measure(src: Path, bundle: Path, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT / 'bench')!r}); import bench_foldin; "
            f"print(json.dumps(bench_foldin.child(__import__('pathlib').Path({str(bundle)!r}), {repeats})))")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{src} on {bundle}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def rev(src: Path) -> str:
    r = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no", "--", "src"],
                           capture_output=True, text=True).stdout.strip()
    return (r.stdout.strip() or "?") + ("+changes" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", nargs="+", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=5, help="timed rebuilds per case (default 5)")
    ap.add_argument("--baseline-src", type=Path, help="a checkout of another commit, measured first")
    ap.add_argument("--write", type=Path, help="write the markdown table here")
    a = ap.parse_args()
    trees = ([("baseline", a.baseline_src.resolve())] if a.baseline_src else []) + [("now", ROOT)]
    rows = []
    for bundle in a.bundle:
        res = {who: measure(src, bundle.resolve(), a.repeats) for who, src in trees}
        for who, src in trees:
            r = res[who]
            print(bundle.name, who, json.dumps(r), flush=True)
            rows.append((bundle.name, r["model"], f"{who} ({rev(src)})", r))
    lines = [f"# Fold-in cost ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
             f"{os.cpu_count()} cores, one thread)", "",
             f"`python bench/bench_foldin.py --bundle {' '.join(str(b) for b in a.bundle)} --repeats {a.repeats}"
             + (" --baseline-src <checkout>`" if a.baseline_src else "`"), "",
             "Median seconds of one rebuild over the grown graph (plus its scoring rows), one thread.", "",
             "| bundle | model | code | new item (s) | 5-item session (s) | peak RSS (MB) |", "|---|---|---|---|---|---|"]
    base = {}
    for name, model, who, r in rows:
        ratio = ""
        if who.startswith("baseline"):
            base[name] = r
        elif name in base:
            ratio = f" ({base[name]['new item'] / r['new item']:.1f}x)"
        sess_ratio = f" ({base[name]['5-item session'] / r['5-item session']:.1f}x)" if ratio else ""
        lines.append(f"| {name} | {model} | {who} | {r['new item']:.3f}{ratio} | {r['5-item session']:.3f}{sess_ratio} "
                     f"| {r['peak_rss_mb']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write:
        a.write.write_text(text)


if __name__ == "__main__":
    main()
