"""Benchmark of the hot step of KGAT-style models: propagation over the CKG.

Measures on ml-1m's real CKG (``Dataset.ckg()``, ~1.65M directed edges, ~14.4K nodes):

* ``prop-*``: one full 3-layer Bi-Interaction propagation (64 -> 64/32/16, message
  dropout 0.1) forward + backward (to the 64-d input embeddings and the layer weights)
  with a fixed attention adjacency, per SpMM backend:
    - ``coo``: ``torch.sparse.mm`` on a coalesced COO tensor, torch's own autograd;
    - ``csr-native``: ``torch.sparse.mm`` on a CSR tensor, torch's own autograd;
    - ``csr-cached``: ``layers.SparseAdjacency`` (CSR forward, cached CSR transpose backward);
    - ``pyg-scatter``: gather ``x[tail] * a`` then ``torch_geometric.utils.scatter`` sum
      (what a PyG ``MessagePassing`` does without torch-sparse).
* ``att-*``: the attention recompute (no grad, as KGAT after each epoch):
  ``pi(h, r, t)`` + segment softmax, per vectorisation:
    - ``rel-bmm``: per relation, project the gathered (E_r, 64) head/tail rows with W_r;
    - ``edge-gather``: per chunk of edges, bmm with W_r gathered per edge;
    - ``node-proj``: ``layers.KnowledgeAwareAttention`` (project each relation's nodes once, gather);
  and the softmax alone: ``segment_softmax`` vs ``torch_geometric.utils.softmax``.
* ``kgat-*``: real KGAT steps (``models.kgat.KGAT``): one CF step (propagation + BPR +
  Adam) per batch size, one KG step, the attention update; and the epoch estimate.

Each case runs in its own subprocess. Time: median and min of ``--repeats`` runs after one
warm-up (on a shared machine the min is the steadier number). Memory: the peak RSS
(``VmHWM`` of /proc/self/status, reset with ``clear_refs`` just before the case) minus the
RSS after loading the data and building the inputs, i.e. the extra memory of the step
(tracemalloc does not see torch's allocator; ``ru_maxrss`` cannot be reset).

    python bench/studies/bench_propagation.py [--repeats 5] [--threads 2] [--only prop-csr-cached ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]          # the repository (this file is bench/studies/)
DATA = ROOT.parent / "shared" / "data"

CASES = ["prop-coo", "prop-csr-native", "prop-csr-cached", "prop-pyg-scatter",
         "att-rel-bmm", "att-edge-gather", "att-node-proj", "softmax-ours", "softmax-pyg",
         "kgat-cf-1024", "kgat-cf-4096", "kgat-cf-8192", "kgat-kg-2048", "kgat-kg-16384", "kgat-attention",
         "epoch-kgat", "epoch-cke"]


def current_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak RSS since the last reset: VmHWM, falling back to ru_maxrss (peak of the process)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load():
    from multikg4rec.data import load_dataset
    return load_dataset("ml-1m", {"seed": 2024}, data_dir=DATA)


def setup_graph(ds):
    from multikg4rec.nn import KGPropagation, KnowledgeAwareAttention, TransR
    torch.manual_seed(0)
    ckg = ds.ckg()
    att = KnowledgeAwareAttention(ckg.head, ckg.relation, ckg.tail, ckg.n_nodes)
    transr = TransR(ckg.n_relations, 64, 64)
    x = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(ckg.n_nodes, 64)))
    with torch.no_grad():
        adj = att(x, transr)
    prop = KGPropagation(64, (64, 32, 16), "bi-interaction", 0.1)
    return ckg, att, transr, x, adj, prop


def run_case(case: str, repeats: int) -> dict:
    ds = load()
    out = {"case": case}
    if case.startswith("kgat-"):
        return run_kgat(case, ds, repeats)
    if case.startswith("epoch-"):
        return run_epoch(case[6:], ds)
    ckg, att, transr, x, adj, prop = setup_graph(ds)
    N = ckg.n_nodes
    if case.startswith("prop-"):
        kind = case[5:]
        if kind == "coo":
            A = torch.sparse_coo_tensor(torch.stack([adj.row, adj.col]), adj.values, (N, N)).coalesce()
            spmm = lambda h: torch.sparse.mm(A, h)  # noqa: E731
        elif kind == "csr-native":
            A = adj.csr()
            spmm = lambda h: torch.sparse.mm(A, h)  # noqa: E731
        elif kind == "csr-cached":
            spmm = adj.matmul
        elif kind == "pyg-scatter":
            from torch_geometric.utils import scatter
            row, col, val = adj.row, adj.col, adj.values.unsqueeze(1)
            spmm = lambda h: scatter(h[col] * val, row, dim=0, dim_size=N, reduce="sum")  # noqa: E731
        g = torch.randn(N, prop.out_dim)

        def step():
            h, outs = x, [x]
            for layer in prop.layers:
                h = layer(h, spmm(h))
                outs.append(torch.nn.functional.normalize(h, dim=1))
            (torch.cat(outs, 1) * g).sum().backward()
            x.grad = None
            prop.zero_grad()
    elif case.startswith("att-"):
        kind = case[4:]
        head, tail, rel = att.head, att.tail, att.relation

        def finish(pi):
            from multikg4rec.nn import segment_softmax
            return segment_softmax(pi, head, N)
        if kind == "rel-bmm":
            groups = [(r, torch.nonzero(rel == r).squeeze(1)) for r in range(ckg.n_relations)]

            def step():
                with torch.no_grad():
                    pi = torch.empty(len(head))
                    for r, idx in groups:
                        W = transr.W[r]
                        ph, pt = x[head[idx]] @ W, x[tail[idx]] @ W
                        pi[idx] = (pt * torch.tanh(ph + transr.relation_emb[r])).sum(-1)
                    return finish(pi)
        elif kind == "edge-gather":
            chunk = 1 << 14

            def step():
                with torch.no_grad():
                    out = []
                    for s in range(0, len(head), chunk):
                        sl = slice(s, s + chunk)
                        W = transr.W[rel[sl]]
                        ph = torch.bmm(x[head[sl]].unsqueeze(1), W).squeeze(1)
                        pt = torch.bmm(x[tail[sl]].unsqueeze(1), W).squeeze(1)
                        out.append((pt * torch.tanh(ph + transr.relation_emb[rel[sl]])).sum(-1))
                    return finish(torch.cat(out))
        elif kind == "node-proj":
            def step():
                with torch.no_grad():
                    return att(x, transr).values
        ref = att(x, transr).values.detach()
        got = step()
        out["max_abs_diff_vs_node_proj"] = float((got - ref).abs().max())
    elif case.startswith("softmax-"):
        pi = torch.randn(len(att.head))
        if case == "softmax-ours":
            from multikg4rec.nn import segment_softmax
            step = lambda: segment_softmax(pi, att.head, N)  # noqa: E731
        else:
            from torch_geometric.utils import softmax
            step = lambda: softmax(pi, att.head, num_nodes=N)  # noqa: E731
    else:
        raise SystemExit(f"unknown case {case}")
    return time_it(step, repeats, out)


def time_it(step, repeats, out):
    import gc
    gc.collect()
    base = current_rss_mb()
    out["peak_measure"] = "VmHWM after clear_refs" if reset_peak_rss() else "ru_maxrss (process peak)"
    step()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    out.update(seconds_median=float(np.median(ts)), seconds_min=float(np.min(ts)),
               peak_rss_increase_mb=round(peak_rss_mb() - base, 1), repeats=repeats)
    return out


def run_kgat(case, ds, repeats):
    from multikg4rec.config import load_config
    from multikg4rec.models.kgat import KGAT
    from multikg4rec.sampling import BPRSampler, KGSampler
    cfg = load_config("kgat", "ml-1m")
    torch.manual_seed(0)
    model = KGAT(ds, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"])
    rng = np.random.default_rng(0)
    out = {"case": case}
    if case.startswith("kgat-cf-"):
        bs = int(case.rsplit("-", 1)[1])
        it = iter(BPRSampler(ds.train, ds.n_items, bs, rng))
        batch_fn, loss_fn, n = (lambda: next(it)), model.calculate_loss, -(-len(ds.train) // bs)
    elif case.startswith("kgat-kg-"):
        bs = int(case.rsplit("-", 1)[1])
        triples, n_nodes = model.kg_train_triples()
        it = iter(KGSampler(triples, n_nodes, bs, rng))
        batch_fn, loss_fn, n = (lambda: next(it)), model.calculate_kg_loss, -(-len(triples) // bs)
    else:
        out = time_it(model.update_attention, repeats, out)
        out["steps_per_epoch"] = 1
        return out

    def step():
        batch = batch_fn()
        opt.zero_grad()
        loss_fn(batch).backward()
        opt.step()
    out = time_it(step, repeats, out)  # sampling included
    out["steps_per_epoch"] = n
    out["seconds_per_pass"] = round(out["seconds_median"] * n, 1)
    return out


def run_epoch(model: str, ds) -> dict:
    """One real epoch through the trainer (CF pass + KG pass + on_epoch_end, then the
    valid evaluation), with the model's ml-1m config."""
    import tempfile
    from multikg4rec.config import load_config
    from multikg4rec.training import run
    cfg = load_config(model, "ml-1m", overrides={"epochs": 1, "quiet": True})
    base = current_rss_mb()
    reset_peak_rss()
    with tempfile.TemporaryDirectory() as tmp:
        run(cfg, run_dir=Path(tmp) / "run", quiet=True, dataset=ds)
        row = json.loads((Path(tmp) / "run" / "log.jsonl").read_text().splitlines()[0])
    return {"case": f"epoch-{model}", "batch_size": cfg["batch_size"], "kg_batch_size": cfg["kg_batch_size"],
            "train_seconds": row["train_seconds"], "eval_seconds": row.get("eval_seconds"),
            "loss": row["loss"], "kg_loss": row.get("kg_loss"), "valid_ndcg@20": row["valid"]["ndcg@20"],
            "peak_rss_increase_mb": round(peak_rss_mb() - base, 1), "peak_measure": "VmHWM after clear_refs"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.case:
        print(json.dumps(run_case(a.case, a.repeats)))
        return
    results = []
    for case in a.only or CASES:
        p = subprocess.run([sys.executable, __file__, "--case", case, "--repeats", str(a.repeats),
                            "--threads", str(a.threads)], capture_output=True, text=True)
        if p.returncode:
            res = {"case": case, "error": p.stderr.strip().splitlines()[-1] if p.stderr else f"rc {p.returncode}"}
        else:
            res = json.loads(p.stdout.strip().splitlines()[-1])
        print(json.dumps(res), flush=True)
        results.append(res)
    meta = {"load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "threads": a.threads,
            "torch": torch.__version__, "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "python": platform.python_version()}
    print(json.dumps(meta))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
