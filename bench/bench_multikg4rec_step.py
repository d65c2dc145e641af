"""Where one Multi-KG4Rec CF step spends its time (forward + backward), part by part, against
one KGAT-sized propagation measured in the same process.

    python bench/bench_multikg4rec_step.py --dataset ml-1m --write bench/results/kg_epoch.md

Parts: the §2 modal tables (as the model computes them, and as it did before 2026-12-01: the
projection of every user's mean feature), the §3 fusion of ``fusion_items``
items, ONE §4 propagation (KGAT's whole propagation costs about this), and the full CF step
(``calculate_loss`` + backward), and one KG step (``calculate_kg_loss`` + backward). Each part is timed ``--repeat`` times after one warm-up call;
the median is reported.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from benchlib import emit, median_ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--data-dir", default=os.environ.get("MULTIKG4REC_DATA",
                                                        str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    p.add_argument("--write", help="also append the markdown table to this file")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    a = p.parse_args()
    from multikg4rec import runtime
    from multikg4rec.config import load_config, parse_value
    from multikg4rec.data import load_dataset
    from multikg4rec.sampling import BPRSampler, KGSampler
    from multikg4rec.models import build_model
    from multikg4rec.runtime import seed_everything

    over = {k: parse_value(v) for k, _, v in (s.partition("=") for s in a.set)}
    cfg = load_config("multikg4rec", a.dataset, None, over | {"data_dir": a.data_dir, "threads": a.threads})
    runtime.configure(cfg)                              # torch threads, malloc thresholds (as a run)
    seed_everything(cfg["seed"])
    ds = load_dataset(a.dataset, cfg, data_dir=a.data_dir)
    m = build_model(cfg, ds)
    m.train()
    batch = next(iter(BPRSampler(ds.train, ds.n_items, cfg["batch_size"], np.random.default_rng(0))))
    items = torch.unique(torch.cat([batch["pos_items"], batch["neg_items"]]))

    def timed(fn) -> float:
        return median_ms(fn, a.repeat, after=lambda: m.zero_grad(set_to_none=True))

    def tables():
        sum(v.sum() for v in m.pre_tables().values()).backward()

    def tables_every_row():     # the same tables as the code before 2026-12-01: every user's mean feature projected
        from torch.nn import functional as F

        from multikg4rec.models.multikg4rec import NEGATIVE_SLOPE
        out = 0.0
        for t in m.modalities:
            tab = m.id_emb[t].weight * getattr(m, f"idw_{t}")
            out = out + tab.index_add(0, getattr(m, f"cidx_{t}"), F.leaky_relu(m.proj[t](getattr(m, f"raw_{t}")),
                                                                                NEGATIVE_SLOPE)).sum()
        out.backward()

    kg_batch = next(iter(KGSampler(torch.stack([ds.ckg().head, ds.ckg().relation, ds.ckg().tail], 1).numpy(),
                                   ds.ckg().n_nodes, cfg["kg_batch_size"], np.random.default_rng(0))))

    def kg_step():
        m.calculate_kg_loss(kg_batch).backward()

    pre = {k: v.detach() for k, v in m.pre_tables().items()}
    k = m.fusion_items or len(items)

    def fuse():
        z = m.fuse(pre, items[:k])
        sum(v.sum() for v in z.values()).backward()

    t0 = m.tables[0]
    x = pre[t0].clone().requires_grad_()

    def propagate():
        m.propagation[t0](x, m.adjacency(t0)).sum().backward()

    def step():
        m.calculate_loss(batch).backward()

    load0 = os.getloadavg()[0]
    rows = [("§2 modal tables (items projected, users = mean of their items' projected rows), fwd+bwd",
             timed(tables)),
            ("§2 modal tables, every user's mean feature projected (before 2026-12-01), fwd+bwd",
             timed(tables_every_row)),
            (f"§3 fusion of {min(k, len(items))} items, fwd+bwd", timed(fuse)),
            ("§4 ONE propagation (3 layers, whole CKG), fwd+bwd", timed(propagate)),
            (f"full CF step ({len(m.tables)} modalities), fwd+bwd", timed(step)),
            (f"KG step (TransR per modality, batch {cfg['kg_batch_size']}), fwd+bwd", timed(kg_step))]
    one = rows[3][1]
    md = "\n".join([
        f"## One Multi-KG4Rec CF step, part by part, {a.dataset}", "",
        f"`python bench/bench_multikg4rec_step.py --dataset {a.dataset} --threads {a.threads}"
        + "".join(f" --set {s}" for s in a.set) + "`", "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {a.threads} torch thread(s); torch {torch.__version__}; "
        f"CF batch {cfg['batch_size']}, {ds.ckg().n_nodes:,} CKG nodes, {len(ds.ckg().head):,} CKG edges; "
        f"median of {a.repeat}; load average (1 min) {load0:.1f} before, {os.getloadavg()[0]:.1f} after.", "",
        "| part | ms | x one propagation |", "|---|---|---|",
        *[f"| {name} | {ms:.0f} | {ms / one:.2f} |" for name, ms in rows], ""])
    emit(md, a.write)


if __name__ == "__main__":
    main()
