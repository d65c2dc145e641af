"""KGAT's CF step (full CKG propagation + BPR + backward + Adam) and KG step (TransR + backward + Adam),
before and after the 2026-11-30 changes, interleaved in ONE process so every variant sees the same load:

* propagation: the whole (n_nodes, d_out) output sliced afterwards (before) vs only the user and item rows
  (``KGPropagation(rows=...)``, now); both with the current one-gather L2 term;
* optimiser: torch's default CPU Adam (before) vs ``Adam(fused=True)`` (now, ``Trainer``);
* KG step: three embedding lookups and ``W[k]`` per relation group (before, re-created below) vs one lookup
  and ``W.unbind(0)`` (now, ``KGAT.calculate_kg_loss`` / ``TransR.project``);
* message dropout (second round, fused Adam in all): ``nn.Dropout`` (one Bernoulli draw per element) vs
  ``layers.MessageDropout`` (16-bit lanes of 64-bit random words);
* last layer (second round): over all nodes, then the user and item rows picked (before, re-created below)
  vs over those rows only (``KGPropagation(rows=...)`` with ``SparseAdjacency.row_slice``, now).

    python bench/studies/bench_kgat_step.py --dataset ml-100k --steps 10 --reps 5 --write bench/results/kgat_step.md
"""
from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from multikg4rec.config import load_config
from multikg4rec.data import load_dataset
from multikg4rec.nn import MessageDropout, propagate
from multikg4rec.sampling import BPRSampler, KGSampler
from multikg4rec.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
    ap.add_argument("--reps", type=int, default=3, help="timed blocks per variant (interleaved)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config("kgat", args.dataset, None, {"seed": 0})
    ds = load_dataset(args.dataset, cfg)
    model = build_model(cfg, ds).train()
    lr = cfg["learning_rate"]
    opts = {"default": torch.optim.Adam(model.parameters(), lr=lr),
            "fused": torch.optim.Adam(model.parameters(), lr=lr, fused=True)}
    rng = np.random.default_rng(0)
    cf_sampler = BPRSampler(ds.train, ds.n_items, cfg["batch_size"], rng)
    kg_sampler = KGSampler(*model.kg_train_triples(), cfg["kg_batch_size"], rng)
    cf = [b for _, b in zip(range(args.steps), cf_sampler)]
    kg = [b for _, b in zip(range(args.steps), kg_sampler)]
    rows_only = model.propagate

    def kg_before(batch):                   # the KG loss as it was: 3 lookups, W[k] per relation group
        tr, emb, r = model.transr, model.node_emb, batch["relations"]
        order = torch.argsort(r, stable=True)
        rels, counts = torch.unique_consecutive(r[order], return_counts=True)
        inv = torch.empty_like(order)
        inv[order] = torch.arange(order.shape[0])

        def project(e):
            return torch.cat([c @ tr.W[k] for c, k in zip(e[order].split(counts.tolist()), rels.tolist())])[inv]
        eh, ept, ent = emb(batch["heads"]), emb(batch["pos_tails"]), emb(batch["neg_tails"])
        ph, ppt, pnt = project(eh), project(ept), project(ent)
        er = tr.relation_emb.index_select(0, r)
        pos, neg = (ph + er - ppt).pow(2).sum(-1), (ph + er - pnt).pow(2).sum(-1)
        reg = (ph.pow(2).sum() + er.pow(2).sum() + ppt.pow(2).sum() + pnt.pow(2).sum()) / (2 * len(r))
        return -torch.nn.functional.logsigmoid(neg - pos).mean() + model.kg_reg_weight * reg

    def whole_table():                      # before: every node's (n_nodes, 176) row, sliced afterwards
        out = model.propagation(model.node_emb.weight, model.adjacency("id"))
        return out[model.n_entities:], out[: model.n_items]

    def rows_all_layers():                  # before round 2: every layer over all nodes, then the rows picked
        pick = lambda z: z.index_select(0, model.ui_rows)  # noqa: E731
        x = h = model.node_emb.weight
        outs = [pick(x)]
        for layer in model.propagation.layers:
            h = layer(h, propagate(model.adjacency("id"), h))
            outs.append(torch.nn.functional.normalize(pick(h), p=2, dim=1))
        out = torch.cat(outs, dim=1)
        return out[model.n_items:], out[: model.n_items]

    aggs = list(model.propagation.layers)
    drops = {"nn.Dropout": [torch.nn.Dropout(a.dropout.p) for a in aggs], "MessageDropout": [a.dropout for a in aggs]}

    def with_dropout(kind, prop):
        def run():
            for a, d in zip(aggs, drops[kind]):
                a.dropout = d
            return prop()
        return run

    variants = {  # name -> (step kind, propagate, optimiser)
        "CF: whole table, default Adam (before)": ("cf", with_dropout("nn.Dropout", whole_table), "default"),
        "CF: user + item rows, default Adam": ("cf", with_dropout("nn.Dropout", rows_all_layers), "default"),
        "CF: user + item rows, fused Adam": ("cf", with_dropout("nn.Dropout", rows_all_layers), "fused"),
        "CF: + MessageDropout": ("cf", with_dropout("MessageDropout", rows_all_layers), "fused"),
        "CF: + last layer on the user + item rows": ("cf", with_dropout("nn.Dropout", rows_only), "fused"),
        "CF: + both (now)": ("cf", with_dropout("MessageDropout", rows_only), "fused"),
        "KG: 3 lookups, W[k], default Adam (before)": ("kg_before", rows_only, "default"),
        "KG: 1 lookup, W.unbind, default Adam": ("kg", rows_only, "default"),
        "KG: 1 lookup, W.unbind, fused Adam (now)": ("kg", rows_only, "fused"),
    }

    def block(kind, prop, opt_name) -> float:
        model.propagate = prop
        opt = opts[opt_name]
        loss_fn, batches = {"cf": (model.calculate_loss, cf), "kg": (model.calculate_kg_loss, kg),
                            "kg_before": (kg_before, kg)}[kind]
        t = time.perf_counter()
        for b in batches:
            opt.zero_grad(set_to_none=True)
            loss_fn(b).backward()
            opt.step()
        return (time.perf_counter() - t) / len(batches)

    for v in variants.values():             # warm-up (also creates both optimisers' state)
        block(*v)
    times = {k: [] for k in variants}
    for _ in range(args.reps):
        for k, v in variants.items():
            times[k].append(block(*v))
    ckg = ds.ckg()
    med = {k: statistics.median(v) for k, v in times.items()}
    base = {"cf": med["CF: whole table, default Adam (before)"],
            "kg": med["KG: 3 lookups, W[k], default Adam (before)"]}
    base["kg_before"] = base["kg"]
    lines = [f"# KGAT training steps, {args.dataset} ({ckg.n_nodes:,} CKG nodes, {len(ckg.head):,} edges, "
             f"CF batch {cfg['batch_size']}, KG batch {cfg['kg_batch_size']}, {args.threads} thread)", "",
             f"`python bench/studies/bench_kgat_step.py --dataset {args.dataset} --steps {args.steps} --reps {args.reps}`, "
             f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, torch {torch.__version__}; median of "
             f"{args.reps} interleaved blocks of {args.steps} steps; peak RSS "
             f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (process, all variants). "
             f"One epoch is {len(cf_sampler)} CF steps and {len(kg_sampler)} KG steps.", "",
             "| variant | ms per step (median) | blocks | ratio to before | ratio to fused Adam |",
             "|---|---|---|---|---|"]
    round2 = med["CF: user + item rows, fused Adam"]
    for k, v in times.items():
        lines.append(f"| {k} | {med[k] * 1e3:.1f} | {', '.join(f'{x * 1e3:.0f}' for x in v)} | "
                     f"{med[k] / base[variants[k][0]]:.2f} | "
                     f"{f'{med[k] / round2:.2f}' if k.startswith('CF:') else ''} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
