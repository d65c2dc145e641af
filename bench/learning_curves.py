"""Summarise learning curves (the trainer's log.jsonl files) side by side: best valid NDCG@20 and its
epoch, the training loss there and at the end, and the epoch-to-epoch swing of valid NDCG@20.

    python bench/learning_curves.py results/studies/diagnosis/*/log.jsonl --write results/studies/diagnosis/curves.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def summarise(path: Path, metric: str = "ndcg@20", max_epoch: int | None = None) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "valid" in r and (max_epoch is None or r["epoch"] <= max_epoch)]
    v = np.array([r["valid"][metric] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    b = int(v.argmax())
    tail = np.abs(np.diff(v[-11:])) if len(v) > 1 else np.array([np.nan])
    return {"epochs": len(rows), "best": v[b], "best_epoch": rows[b]["epoch"], "loss_at_best": loss[b],
            "last_loss": loss[-1], "swing": float(tail.mean()),
            "s_per_epoch": float(np.mean([r["train_seconds"] for r in rows]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+", type=Path, help="log.jsonl files; the run's name is the parent folder")
    ap.add_argument("--metric", default="ndcg@20")
    ap.add_argument("--write", type=Path)
    ap.add_argument("--max-epoch", type=int, help="read each curve up to this epoch only (compare a run stopped "
                                                  "by hand with full runs at the same point)")
    args = ap.parse_args()
    lines = [f"| run | epochs | best valid {args.metric} (epoch) | loss there | last loss | "
             f"mean abs change of valid over the last 10 epochs | s/epoch |", "|---|---|---|---|---|---|---|"]
    for p in args.logs:
        s = summarise(p, args.metric, args.max_epoch)
        lines.append(f"| {p.parent.name} | {s['epochs']} | {s['best']:.4f} ({s['best_epoch']}) | "
                     f"{s['loss_at_best']:.4f} | {s['last_loss']:.4f} | {s['swing']:.4f} | {s['s_per_epoch']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
