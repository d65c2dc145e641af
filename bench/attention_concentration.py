"""How concentrated Multi-KG4Rec's knowledge-aware attention is, per table, in a trained run.

    python bench/attention_concentration.py RUN_DIR [RUN_DIR ...]

For every CKG node, the largest attention weight over its triples (model.md §4 softmax); the mean of
that over users and over items, beside the mean of 1/degree (what uniform attention would give).
A mean max weight far above 1/degree means each node aggregates mostly one neighbour. Also the
mean row norm of the layer-0 tables (items = fused rows, entities, users).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import yaml


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--data-dir", default=os.environ.get("MULTIKG4REC_DATA", "../shared/data"))
    a = p.parse_args()
    torch.set_num_threads(1)
    from multikg4rec.data import load_dataset
    from multikg4rec.models import build_model
    print("| run | epoch | table | mean max attention, users (uniform) | items (uniform) | "
          "row norm items / entities / users |")
    print("|---|---|---|---|---|---|")
    for rd in map(Path, a.runs):
        cfg = yaml.safe_load(open(rd / "config.yaml"))
        ds = load_dataset(cfg["dataset"], cfg, data_dir=a.data_dir)
        m = build_model(cfg, ds)
        state = torch.load(rd / "checkpoint.pt", map_location="cpu", weights_only=False)
        m.load_state_dict(state["model"])
        m.eval()
        with torch.no_grad():
            pre = m.pre_tables()
            l0 = m.layer0(pre, m._fuse_all_nograd(pre) if m.use_fusion else None)
            head = m.attention.head
            deg = torch.bincount(head, minlength=m.n_nodes).float().clamp_min(1)
            for t in m.tables:
                mx = torch.zeros(m.n_nodes).scatter_reduce(0, head, getattr(m, f"att_{t}"), "amax")
                users, items = slice(m.n_entities, None), slice(0, m.n_items)
                x = l0[t].norm(dim=1)
                print(f"| {rd.name} | {state['epoch']} | {t} | {mx[users].mean():.3f} ({(1 / deg[users]).mean():.3f}) | "
                      f"{mx[items].mean():.3f} ({(1 / deg[items]).mean():.3f}) | {x[items].mean():.2f} / "
                      f"{x[m.n_items:m.n_entities].mean():.2f} / {x[users].mean():.2f} |")


if __name__ == "__main__":
    main()
