"""Knowledge-aware attention over a fixed set of triples (docs/model.md §4; KGAT Eq. 4-5)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .functional import segment_softmax
from .sparse import SparseAdjacency
from .transr import TransR

__all__ = ["KnowledgeAwareAttention"]


#: key spaces up to this size are deduplicated with a dense table rather than a sort
DENSE_KEYS = 1 << 28


def _unique_inverse(keys: torch.Tensor, n_keys: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(keys, return_inverse=True)`` for keys in [0, n_keys): the sorted distinct keys and
    each key's index among them. On the CPU, a key space that fits DENSE_KEYS is marked in a table and
    ranked by a cumulative sum (linear time, in NumPy), else sorted."""
    if n_keys > DENSE_KEYS or keys.numel() == 0 or keys.device.type != "cpu":
        return torch.unique(keys, return_inverse=True)
    k = keys.numpy()
    seen = np.zeros(n_keys, dtype=bool)
    seen[k] = True
    rank = np.cumsum(seen, dtype=np.int32 if n_keys < 2 ** 31 else np.int64)
    return torch.from_numpy(np.flatnonzero(seen)), torch.from_numpy(rank[k].astype(np.int64) - 1)


class KnowledgeAwareAttention(nn.Module):
    """Knowledge-aware attention over a fixed set of triples (docs/model.md (12)-(13); KGAT Eq. 4-5).

    ``pi(h, r, t) = (W_r e_t)^T tanh( W_r e_h + e_r )``, normalised by a softmax over
    the triples of each head h; the result is the attention adjacency ``A`` (rows =
    heads, columns = tails) so that ``e_{N_h} = (A e)_h``.

    Holds only the graph structure (non-persistent buffers, not in checkpoints);
    ``W_r``, ``e_r`` come from a :class:`TransR` and the node embeddings from the
    caller, so one instance serves several embedding tables (one per modality).

    Vectorisation (bench/results/propagation.md): per relation r, the nodes that occur
    in r's triples are projected once (``x[nodes_r] @ W_r``); the per-edge scores are
    then dot products of rows gathered from that small table, computed in chunks of
    ``chunk_size`` edges to bound memory.
    """

    def __init__(self, head: torch.Tensor, relation: torch.Tensor, tail: torch.Tensor, n_nodes: int,
                 chunk_size: int = 1 << 16):
        super().__init__()
        head, relation, tail = (torch.as_tensor(a, dtype=torch.long) for a in (head, relation, tail))
        self.n_nodes = int(n_nodes)
        self.n_edges = int(head.shape[0])
        self.chunk_size = int(chunk_size)
        self.structure = SparseAdjacency.from_edges(head, tail, torch.zeros(self.n_edges), (n_nodes, n_nodes))
        rel_sorted = relation[self.structure.perm]
        # slots = distinct (relation, node) pairs among heads and tails; sorted by relation, so
        # each relation's nodes are one contiguous block of the stacked projected table
        keys = torch.cat([rel_sorted * n_nodes + self.structure.row, rel_sorted * n_nodes + self.structure.col])
        slot_keys, inv = _unique_inverse(keys, (int(relation.max()) + 1 if self.n_edges else 0) * n_nodes)
        slot_rel = slot_keys // n_nodes
        rels, sizes = torch.unique_consecutive(slot_rel, return_counts=True)
        self.rel_list, self.rel_sizes = rels.tolist(), sizes.tolist()
        self.structure._transpose_structure()  # computed once, shared by every attention update
        self.register_buffer("relation", rel_sorted, persistent=False)          # (E,) CSR order
        self.register_buffer("slot_nodes", slot_keys % n_nodes, persistent=False)  # (S,) node of each slot
        self.register_buffer("slot_rel", slot_rel, persistent=False)            # (S,) relation of each slot
        self.register_buffer("h_slot", inv[:self.n_edges].clone(), persistent=False)  # (E,) slot of (r, h)
        self.register_buffer("t_slot", inv[self.n_edges:].clone(), persistent=False)  # (E,) slot of (r, t)

    @property
    def head(self) -> torch.Tensor:
        """(E,) heads in CSR order."""
        return self.structure.row

    @property
    def tail(self) -> torch.Tensor:
        """(E,) tails in CSR order."""
        return self.structure.col

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.structure = self.structure.map_tensors(fn)        # model.to(device) moves the graph too
        return out

    def scores(self, x: torch.Tensor, transr: TransR, edges: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised ``pi(h, r, t)`` per edge, CSR order. x: (n_nodes, entity_dim) -> (E,), or
        (len(edges),) for the CSR positions ``edges`` only (each edge's value is the same either way).

        ``W_r e`` and ``tanh(W_r e_h + e_r)`` are computed once per (relation, node) slot;
        each edge then costs one gathered dot product. Without autograd the dot products
        run in chunks through preallocated buffers (no per-chunk allocation)."""
        proj = torch.cat([x[n] @ transr.W[r] for n, r in
                          zip(torch.split(self.slot_nodes, self.rel_sizes), self.rel_list)])  # (S, d_r): W_r e
        query = torch.tanh(proj + transr.relation_emb.index_select(0, self.slot_rel))   # (S, d_r): tanh(W_r e_h + e_r)
        h_slot, t_slot = (self.h_slot, self.t_slot) if edges is None else (self.h_slot[edges], self.t_slot[edges])
        E, ch = h_slot.shape[0], self.chunk_size
        if torch.is_grad_enabled() and query.requires_grad:
            if not E:
                return x.new_zeros(0)
            return torch.cat([(query.index_select(0, h_slot[s:s + ch])
                               * proj.index_select(0, t_slot[s:s + ch])).sum(-1)
                              for s in range(0, E, ch)])                  # KGAT Eq. 4
        out = query.new_empty(E)
        a, b = query.new_empty(min(ch, E), query.shape[1]), query.new_empty(min(ch, E), query.shape[1])
        for s in range(0, E, ch):
            hs, ts = h_slot[s:s + ch], t_slot[s:s + ch]
            m = hs.shape[0]
            torch.index_select(query, 0, hs, out=a[:m])
            torch.index_select(proj, 0, ts, out=b[:m])
            torch.sum(a[:m].mul_(b[:m]), 1, out=out[s:s + m])           # KGAT Eq. 4
        return out

    def forward(self, x: torch.Tensor, transr: TransR) -> SparseAdjacency:
        """Attention adjacency. x: (n_nodes, entity_dim) -> SparseAdjacency (n_nodes, n_nodes)
        whose rows sum to 1 over each head's triples (KGAT Eq. 5). Differentiable in x
        and the TransR parameters; KGAT calls it under ``torch.no_grad()`` once per epoch."""
        pi = self.scores(x, transr)
        att = segment_softmax(pi, self.head, self.n_nodes)               # KGAT Eq. 5
        return self.structure.with_values(att)
