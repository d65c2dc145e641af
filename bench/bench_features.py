"""Feature-encoder throughput: texts/s and images/s per encoder, end to end through the feature
store (read content, decode images, preprocess, encode, write chunks), plus peak memory.

* minilm (text) and efficientnet (image): the real offline models on real ml-1m texts
  (title + genres + description) and posters.
* clip: a ViT-B/32-SIZED CLIP WITH RANDOM WEIGHTS (no CLIP weights offline): throughput only,
  the numbers mean nothing else. Texts are tokenised by a byte-level vocabulary without merges,
  so every text fills CLIP's 77 tokens (as long real descriptions do).

Each measurement runs in its own process (peak RSS = ru_maxrss of that process).

    python bench/bench_features.py [--data-dir ../shared/data] [--texts 512] [--images 265] [--threads 2]
    python bench/bench_features.py --write bench/results/features.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = ("minilm", "efficientnet", "clip-text", "clip-image")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_case(case: str, data_dir: Path, n_texts: int, n_images: int, batch_size: int, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    from multikg4rec.features import Encoder, build_store, collect_content
    from multikg4rec.features.encoders import ClipBackbone, ClipImage, ClipText, EfficientNetImage, MiniLMText
    content = collect_content("ml-1m", data_dir)
    mod = "text" if case in ("minilm", "clip-text") else "image"
    rows = content.rows_with(mod)[: (n_texts if mod == "text" else n_images)]
    sub = content.subset(rows)
    if mod == "text":
        sub.image = [None] * len(sub)
    else:
        sub.text = [None] * len(sub)
    t0 = time.time()
    if case == "minilm":
        part = MiniLMText(device="cpu")
    elif case == "efficientnet":
        part = EfficientNetImage(device="cpu")
    else:
        b = ClipBackbone("random-vit-b-32", device="cpu")
        from multikg4rec.features.clip_random import random_clip
        b.model, b.processor = random_clip(tiny=False)
        b.dim = 512
        part = ClipText(b) if case == "clip-text" else ClipImage(b)
    part.load()
    load_s = time.time() - t0
    enc = Encoder(case, [part])
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.time(), _cpu()
        store = build_store(sub, enc, cache_dir=tmp, batch_size=batch_size, progress=False)
        secs, cpu = time.time() - t0, _cpu() - c0
        encoded = int(store.masks[mod].sum())
    avg_chars = sum(len(t) for t in (content.text[r] for r in rows)) / len(rows) if mod == "text" else None
    return {"case": case, "modality": mod, "n": int(len(rows)), "encoded": encoded, "seconds": round(secs, 2),
            "per_s": round(encoded / secs, 1),
            "cpu_s": round(cpu, 1), "per_cpu_s": round(encoded / cpu, 2), "load_s": round(load_s, 2), "dim": int(part.dim),
            "batch_size": batch_size, "threads": threads,
            "avg_chars": round(avg_chars) if avg_chars else None,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    return (f"{cpu}; {os.cpu_count()} visible CPUs (torch threads as listed); Python {platform.python_version()}; "
            f"torch {torch.__version__}; {platform.system()} {platform.release()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("MULTIKG4REC_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--images", type=int, default=265)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)   # child process
    ap.add_argument("--write", default=None, help="write a markdown report here")
    a = ap.parse_args()
    data_dir = Path(a.data_dir)
    if a.case:
        print(json.dumps(run_case(a.case, data_dir, a.texts, a.images, a.batch_size, a.threads)))
        return 0
    if not (data_dir / "ml-1m" / "movies.dat").is_file():
        print(f"ml-1m not found under {data_dir}; set --data-dir", file=sys.stderr)
        return 2
    results, load_before = [], os.getloadavg()
    for case in a.cases.split(","):
        cmd = [sys.executable, __file__, "--case", case, "--data-dir", str(data_dir), "--texts", str(a.texts),
               "--images", str(a.images), "--batch-size", str(a.batch_size), "--threads", str(a.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{case:<13} {r['encoded']:>4} {r['modality']}s in {r['seconds']:>6.1f} s = {r['per_s']:>6.1f}/s "
              f"({r['per_cpu_s']} per CPU-s, load {r['load_s']} s, dim {r['dim']}, peak RSS {r['peak_rss_mib']} MiB)", flush=True)
    if a.write:
        date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
        cmd = "python bench/bench_features.py " + " ".join(sys.argv[1:])
        lines = [
            "# Feature encoders: throughput", "",
            f"* command: `{cmd}`", f"* date: {date}", f"* machine: {_machine()}",
            f"* load average (1/5/15 min) before: {'/'.join(f'{x:.1f}' for x in load_before)}, after: "
            f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())} -- the 2 cores are shared with other jobs, so "
            f"wall-clock rates are pessimistic; items per CPU-second (process user+sys time) is the steadier figure",
            f"* data: ml-1m (../shared/data): texts = title + genres + LLM description "
            f"(MiniLM truncates at 256 word pieces, CLIP at 77 tokens); images = posters (~182x268 JPEG)",
            "* end to end through `build_store` (read, decode, preprocess, encode, write chunks); model load "
            "time separate; each case in its own process; peak RSS = that process's maximum resident set", "",
            "| encoder | weights | modality | items | wall s | items/s (wall) | CPU s | items per CPU-s | model load s "
            "| dim | batch | threads | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results:
            weights = "RANDOM (ViT-B/32 sizes), throughput only" if r["case"].startswith("clip") else "real"
            lines.append(f"| {r['case']} | {weights} | {r['modality']} | {r['encoded']} | {r['seconds']} | "
                         f"**{r['per_s']}** | {r['cpu_s']} | {r['per_cpu_s']} | {r['load_s']} | {r['dim']} | {r['batch_size']} | {r['threads']} | "
                         f"{r['peak_rss_mib']} |")
        Path(a.write).parent.mkdir(parents=True, exist_ok=True)
        Path(a.write).write_text("\n".join(lines) + "\n")
        print(f"wrote {a.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
