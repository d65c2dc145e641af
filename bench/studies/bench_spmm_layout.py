"""Does the layout of the CKG's CSR matrix change the cost of the propagation's SpMM?

    python bench/studies/bench_spmm_layout.py [--dataset ml-1m] [--dim 64] [--rounds 6] [--write bench/results/propagation.md]

One ``torch.sparse.mm(A, X)`` (A: the dataset's CKG with inverse edges and random attention-like values, CSR;
X: (n_nodes, dim)), the product every propagation layer runs forward and (with A^T) backward, on 1 thread
(``--threads``),
for four layouts of the same matrix:

* ``int64``: the node order of ``Dataset.ckg()`` (entities, then users) and int64 indices (what
  ``layers.SparseAdjacency`` builds);
* ``int32``: the same with int32 indices (torch converts int64 indices for MKL on every call);
* ``rcm``: nodes renumbered by reverse Cuthill-McKee (scipy), int32;
* ``degree``: nodes renumbered by decreasing degree, int32.

Every layout computes the same product up to the node permutation (checked). The rounds alternate the layouts
and each reports the median of 5 calls; the table gives the median over rounds and the ratio to ``int64``, so a
shared machine's load drifts through all of them alike.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import reverse_cuthill_mckee

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/, for benchlib
from benchlib import emit, median_ms  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--data-dir", default=os.environ.get("MULTIKG4REC_DATA"))
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--write", help="also append the markdown to this file")
    a = p.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
    torch.set_num_threads(a.threads)
    from multikg4rec.data import load_dataset

    load0 = os.getloadavg()[0]
    ds = load_dataset(a.dataset, {"seed": 2024}, data_dir=a.data_dir)
    ckg = ds.ckg()
    n = ckg.n_nodes
    head, tail = ckg.head.numpy(), ckg.tail.numpy()
    values = np.random.default_rng(0).random(len(head)).astype(np.float32)
    pattern = sp.csr_matrix((np.ones(len(head), dtype=np.float32), (head, tail)), shape=(n, n))

    def renumbering(order: np.ndarray) -> np.ndarray:
        new = np.empty(n, dtype=np.int64)
        new[order] = np.arange(n)
        return new

    identity = np.arange(n)
    perms = {"int64": identity, "int32": identity,
             "rcm": renumbering(reverse_cuthill_mckee(pattern, symmetric_mode=True)),
             "degree": renumbering(np.argsort(-np.asarray(pattern.sum(1)).ravel(), kind="stable"))}
    x = torch.randn(n, a.dim, generator=torch.Generator().manual_seed(0))
    mats, xs = {}, {}
    for name, new in perms.items():
        m = sp.csr_matrix((values, (new[head], new[tail])), shape=(n, n))
        m.sort_indices()
        itype = torch.int64 if name == "int64" else torch.int32
        mats[name] = torch.sparse_csr_tensor(torch.from_numpy(m.indptr).to(itype),
                                             torch.from_numpy(m.indices).to(itype), torch.from_numpy(m.data), (n, n))
        xs[name] = torch.empty_like(x).index_copy_(0, torch.from_numpy(new), x)   # row new[i] holds x[i]
    ref = torch.sparse.mm(mats["int64"], xs["int64"])
    for name, new in perms.items():
        out = torch.sparse.mm(mats[name], xs[name])[torch.from_numpy(new)]
        assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max()), name   # summation order only

    times = {name: [] for name in mats}
    for _ in range(a.rounds):
        for name in mats:
            times[name].append(median_ms(lambda: torch.sparse.mm(mats[name], xs[name]), repeat=5))
    med = {name: statistics.median(t) for name, t in times.items()}
    rows = "\n".join(f"| {name} | {med[name]:.1f} | {med[name] / med['int64']:.2f}x |" for name in mats)
    md = f"""
## SpMM layout of the CKG, {a.dataset} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})

`python bench/studies/bench_spmm_layout.py --dataset {a.dataset} --dim {a.dim} --rounds {a.rounds} --threads {a.threads}`

{platform.machine()}, {os.cpu_count()} visible CPUs, {a.threads} torch thread(s), torch {torch.__version__}; {n:,} nodes,
{len(head):,} edges, X {n:,} x {a.dim}; median over {a.rounds} alternating rounds of the median of 5 calls; load
average (1 min) {load0:.1f} before, {os.getloadavg()[0]:.1f} after.

| layout | ms per SpMM | vs int64 |
|---|---|---|
{rows}
"""
    emit(md, a.write)


if __name__ == "__main__":
    main()
