"""Shared graph layers of the KG models (KGAT, CKE, MKGAT, Multi-KG4Rec).

Every piece exists once here and is used by each model that needs it:

* :class:`TransR` -- relation embeddings ``e_r`` and projections ``W_r``, the
  plausibility score ``g(h, r, t)`` and the pairwise KG loss (SPEC §2).
* :func:`segment_softmax` -- softmax over groups of edges (the edges of one head).
* :class:`SparseAdjacency` -- an (n x n) sparse matrix in CSR with a cached CSR
  transpose, multiplied with a dense matrix by one differentiable SpMM (gradients
  to the dense input and, if they require it, to the edge values).
* :class:`KnowledgeAwareAttention` -- ``pi(h, r, t)`` and its softmax over the
  triples of each head -> the attention adjacency ``A`` with ``e_{N_h} = (A e)_h``
  (SPEC §4, KGAT Eq. 4-5).
* :class:`MessageDropout` -- dropout with a mask drawn 16 bits per element.
* :class:`Aggregator` -- Bi-Interaction / GCN / GraphSAGE (SPEC §4, KGAT Eq. 6-8).
* :class:`KGPropagation` -- L stacked aggregators with message dropout, each
  layer's output L2-normalised and concatenated with the input (SPEC §4-5,
  KGAT Eq. 11).

Node ids are whatever the caller uses (for the CKG: entities then users, as
``Dataset.ckg()``); the layers own no node embeddings, so a model may keep one
entity table per modality and reuse one attention structure for all of them.

Gathers that carry gradients use ``index_select`` (its backward is deterministic on
CPU; the backward of advanced indexing ``x[idx]`` with repeated ids accumulates in a
thread-dependent order), so training is bit-for-bit reproducible with a fixed seed.

Design note (bench/results/propagation.md): on ml-1m's CKG (14.4K nodes, 1.65M
directed edges) a CSR SpMM with 64 columns costs ~12 ms on 2 CPU cores, a COO
``torch.sparse.mm`` ~55 ms and a gather/``index_add`` message passing ~330 ms, so
propagation runs on CSR with the transpose cached for the backward pass.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TransR", "segment_softmax", "SparseAdjacency", "propagate", "KnowledgeAwareAttention",
    "MessageDropout", "Aggregator", "KGPropagation", "AGGREGATORS", "sum_of_squares",
]

AGGREGATORS = ("bi-interaction", "gcn", "graphsage")



def _index32(*index: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """CSR index tensors as int32 where they fit: torch's CPU SpMM (MKL) converts int64
    indices to int32 copies at every call (ml-1m's CKG: 1.65M column ids, twice per
    propagation layer); given int32 it uses them as they are, with the same result.
    One SpMM on ml-1m's CKG: 0.87x (2 threads), 0.83x (1 thread); bench/results/propagation.md."""
    if all(t.numel() == 0 or int(t.max()) < 2 ** 31 - 1 for t in index):
        return tuple(t.to(torch.int32) for t in index)
    return index


def _csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    """A torch CSR tensor without torch's "beta" warning: the subset used here
    (construction + SpMM with a dense matrix) is tested against dense products."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def sum_of_squares(t: torch.Tensor) -> torch.Tensor:
    """``||t||^2`` over all elements, for the L2 terms. ``vector_norm(t)^2`` is one pass over
    ``t`` forward and one backward (``t.pow(2).sum()``: four); the gradient at t = 0 is 0."""
    return torch.linalg.vector_norm(t).square()


# --------------------------------------------------------------------------- TransR

class TransR(nn.Module):
    """TransR (Lin et al., AAAI 2015) as used by KGAT and SPEC §2.

    Holds the relation embeddings ``e_r`` (``relation_emb``, (R, relation_dim)) and the
    projection matrices ``W_r`` (``W``, (R, entity_dim, relation_dim)); the entity
    embeddings are passed in, the caller owns them. Projection uses row vectors:
    ``W_r e`` of SPEC §2 is ``e @ W[r]`` here.

    ``g(h, r, t) = || W_r e_h + e_r - W_r e_t ||_2^2`` (SPEC §2; KGAT Eq. 1);
    lower is more plausible.
    """

    def __init__(self, n_relations: int, entity_dim: int, relation_dim: int):
        super().__init__()
        self.n_relations, self.entity_dim, self.relation_dim = n_relations, entity_dim, relation_dim
        self.relation_emb = nn.Parameter(torch.empty(n_relations, relation_dim))
        self.W = nn.Parameter(torch.empty(n_relations, entity_dim, relation_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.relation_emb)
        for w in self.W:  # xavier per relation matrix (fan_in = entity_dim, fan_out = relation_dim)
            nn.init.xavier_uniform_(w)

    def project_rows(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """``W_r e`` for k rows per relation: x (B, k, entity_dim), r (B,) int64 -> (B, k, relation_dim).

        Rows are grouped by relation and each group is one (k B_r, d_e) @ (d_e, d_r) matmul:
        no (B, d_e, d_r) gather of ``W`` (268 MB at B = 16384), and a deterministic
        backward (``bmm`` over gathered matrices accumulates its gradient in a
        thread-dependent order on CPU). When ``r`` is already sorted (``KGSampler``'s
        batches are) the groups are slices of ``x``; otherwise ``x`` is permuted into
        relation order and back."""
        b, k = x.shape[0], x.shape[1]
        order = None
        if b > 1 and not bool((r[1:] >= r[:-1]).all()):
            order = torch.argsort(r, stable=True)
            x, r = x.index_select(0, order), r.index_select(0, order)
        rels, counts = torch.unique_consecutive(r, return_counts=True)
        # unbind: ONE (R, d_e, d_r) gradient buffer in the backward; indexing W[k] per group would zero-fill
        # a full (R, d_e, d_r) tensor per group (~140 per KGAT KG step on ml-100k; bench/results/kgat_step.md)
        w = self.W.unbind(0)
        parts = [chunk @ w[rel] for chunk, rel in zip(x.reshape(b * k, -1).split((counts * k).tolist()),
                                                        rels.tolist())]
        out = (torch.cat(parts) if parts else x.new_zeros(0, self.relation_dim)).view(b, k, self.relation_dim)
        if order is not None:
            inv = torch.empty_like(order)
            inv[order] = torch.arange(b, device=order.device)
            out = out.index_select(0, inv)
        return out

    def project(self, emb: torch.Tensor, r: torch.Tensor, *more: torch.Tensor):
        """``W_r e`` with one relation per row. emb (and each of ``more``): (B, entity_dim),
        r: (B,) int64 -> (B, relation_dim) (a tuple when ``more`` is given)."""
        out = self.project_rows(torch.stack((emb, *more), 1), r).unbind(1)
        return out[0] if not more else out

    def score(self, h_emb: torch.Tensor, r: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """``g(h, r, t)``. h_emb, t_emb: (B, entity_dim); r: (B,) int64 -> (B,)."""
        ph, pt = self.project(h_emb, r, t_emb)
        return (ph + self.relation_emb.index_select(0, r) - pt).pow(2).sum(-1)          # SPEC §2, g(h, r, t)

    def loss(self, h_emb: torch.Tensor, r: torch.Tensor, pos_t_emb: torch.Tensor, neg_t_emb: torch.Tensor,
             reg_weight: float = 0.0) -> torch.Tensor:
        """Pairwise TransR loss (SPEC §2; KGAT Eq. 2), averaged over the batch:

        ``mean -ln sigma( g(h, r, t') - g(h, r, t) )
        + reg_weight * (||W_r e_h||^2 + ||e_r||^2 + ||W_r e_t||^2 + ||W_r e_t'||^2) / (2 B)``

        (SPEC writes a sum; the mean only rescales the learning rate and keeps the
        loss independent of the batch size.)
        h_emb, pos_t_emb, neg_t_emb: (B, entity_dim); r: (B,) -> scalar.
        """
        return self.triple_loss(torch.stack((h_emb, pos_t_emb, neg_t_emb), 1), r, reg_weight)

    def triple_loss(self, rows: torch.Tensor, r: torch.Tensor, reg_weight: float = 0.0) -> torch.Tensor:
        """:meth:`loss` on stacked rows: rows (B, 3, entity_dim) = [e_h, e_t, e_t'] per triple
        (one gather of the three, e.g. ``table[torch.stack([h, t, t'], 1)]``), r: (B,) -> scalar.
        The two scores share ``W_r e_h + e_r`` and run as one (B, 2, d_r) tensor."""
        er = self.relation_emb.index_select(0, r)
        p = self.project_rows(rows, r)                                  # [W_r e_h, W_r e_t, W_r e_t']
        ph, pt = p.split([1, 2], 1)             # split, not slices: its backward is one cat, no zero-filled buffers
        g = ((ph + er.unsqueeze(1)) - pt).pow(2).sum(-1)                # SPEC §2: g(h, r, t), g(h, r, t')
        loss = -F.logsigmoid(g[:, 1] - g[:, 0]).mean()                  # SPEC §2, L_KG
        if reg_weight:
            loss = loss + reg_weight * (sum_of_squares(p) + sum_of_squares(er)) / (2 * rows.shape[0])
        return loss


# --------------------------------------------------------------------------- sparse pieces

def segment_softmax(src: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax of ``src`` within each group of equal ``index`` (plain torch scatter).

    src: (E,) float; index: (E,) int64 in [0, num_segments) -> (E,), summing to 1 per
    non-empty group. Same result as ``torch_geometric.utils.softmax(src, index)``.
    """
    mx = torch.full((num_segments,), float("-inf"), dtype=src.dtype, device=src.device)
    mx = mx.scatter_reduce(0, index, src, reduce="amax", include_self=True)
    ex = (src - mx.index_select(0, index)).exp()
    den = torch.zeros(num_segments, dtype=src.dtype, device=src.device).index_add(0, index, ex)
    return ex / den.index_select(0, index)


def _crow(row_sorted: torch.Tensor, n_rows: int) -> torch.Tensor:
    counts = torch.bincount(row_sorted, minlength=n_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class SparseAdjacency:
    """An (n_rows x n_cols) sparse matrix kept in CSR with a lazily cached CSR transpose.

    ``adj.matmul(x)`` (or :func:`propagate`) is one SpMM, differentiable w.r.t. ``x``
    (backward = cached ``A^T`` SpMM, no per-step transpose/conversion) and, when
    ``values.requires_grad``, w.r.t. the edge values.

    Build with :meth:`from_edges`; ``row``, ``col``, ``values`` are then in CSR order
    (sorted by row, then column) and ``perm`` maps that order to the input edge order
    (``values_csr = values_in[perm]``). Duplicate (row, col) edges are kept and summed
    by the SpMM (two triples linking the same pair count twice, as the softmax did).
    """

    def __init__(self, row: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int],
                 crow: torch.Tensor | None = None, perm: torch.Tensor | None = None):
        self.row, self.col, self.values = row, col, values
        self.shape = (int(shape[0]), int(shape[1]))
        self.crow = crow if crow is not None else _crow(row, self.shape[0])
        self.perm = perm
        self._t_cache = None  # (crow_t, col_t, perm_t)
        self._vt_cache = None  # ((values ptr, version), A^T CSR tensor)
        self._with_cache: list = []  # [(values, version, SparseAdjacency)], see with_values
        self._slice_struct: list = []  # [(rows, edge ids, structure)], shared by with_values copies
        self._slice_cache = None  # (rows key, SparseAdjacency), see row_slice
        self._i32 = None  # (crow, col) as handed to torch's SpMM, see _index32
        self._t32 = None  # the same for the transpose

    @classmethod
    def from_edges(cls, row: torch.Tensor, col: torch.Tensor, values: torch.Tensor | None,
                   shape: tuple[int, int], is_sorted: bool = False) -> "SparseAdjacency":
        """row, col: (E,) int64; values: (E,) float or None (ones) -> CSR-ordered adjacency."""
        if values is None:
            values = torch.ones(row.shape[0], device=row.device)
        perm = None
        if not is_sorted:
            perm = torch.argsort(row * shape[1] + col, stable=True)
            row, col, values = row[perm], col[perm], values[perm]
        return cls(row, col, values, shape, perm=perm)

    @classmethod
    def from_scipy(cls, matrix) -> "SparseAdjacency":
        """A fixed scipy sparse matrix (e.g. a normalised graph Laplacian) as an adjacency."""
        import numpy as np
        import scipy.sparse as sp
        m = sp.csr_matrix(matrix, dtype=np.float32)
        m.sort_indices()
        rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        return cls(torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int64)),
                   torch.from_numpy(m.data), m.shape, crow=torch.from_numpy(m.indptr.astype(np.int64)))

    def with_values(self, values: torch.Tensor) -> "SparseAdjacency":
        """Same structure, new CSR-ordered values (E,). The transpose structure is computed
        once on ``self`` and shared, so repeated attention updates never re-sort.

        Calling it again with the same ``values`` tensor, unchanged since (same version
        counter), returns the same adjacency, so its cached ``A^T`` values are reused by
        every training step (the last few value tensors are remembered, e.g. one
        attention per modality)."""
        for v, version, adj in self._with_cache:
            if v is values and version == values._version:
                return adj
        out = SparseAdjacency(self.row, self.col, values, self.shape, crow=self.crow, perm=self.perm)
        out._t_cache = self._transpose_structure()
        out._slice_struct = self._slice_struct
        out._i32, out._t32 = self._spmm_index(), self._spmm_index(transpose=True)
        self._with_cache = [(values, values._version, out)] + self._with_cache[:3]
        return out

    def row_slice(self, rows: torch.Tensor) -> "SparseAdjacency":
        """``A[rows]``, an (R, n_cols) adjacency over the same columns, for computing a
        layer only where its output is needed. rows: (R,) distinct int64.

        The structure (edge ids, CSR pointers, transpose) is computed once per ``rows``
        and shared with every ``with_values`` copy; the sliced values are a gather of
        this adjacency's values (differentiable), cached while they are unchanged."""
        v = self.values
        key = (v.data_ptr(), v._version)
        if self._slice_cache is not None and not v.requires_grad:
            c_rows, c_key, c_out = self._slice_cache
            if c_key == key and (c_rows is rows or torch.equal(c_rows, rows)):
                return c_out
        for s_rows, edges, struct in self._slice_struct:
            if s_rows.shape == rows.shape and torch.equal(s_rows, rows):
                break
        else:
            start, counts = self.crow[rows], self.crow[rows + 1] - self.crow[rows]
            crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
            edges = torch.arange(int(crow[-1]), device=rows.device) - torch.repeat_interleave(crow[:-1] - start, counts)
            struct = SparseAdjacency(torch.repeat_interleave(torch.arange(rows.shape[0], device=rows.device), counts),
                                     self.col[edges], v[:0], (rows.shape[0], self.shape[1]), crow=crow)
            self._slice_struct.append((rows.clone(), edges, struct))
        out = struct.with_values(v.index_select(0, edges))
        self._slice_cache = (rows, key, out)
        return out

    @property
    def nnz(self) -> int:
        return int(self.col.shape[0])

    def csr(self, values: torch.Tensor | None = None) -> torch.Tensor:
        v = self.values if values is None else values
        return _csr_tensor(*self._spmm_index(), v.detach(), self.shape)

    def _spmm_index(self, transpose: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(crow, col) of A (or A^T) as handed to torch's SpMM: int32 when they fit (computed once)."""
        if transpose:
            if self._t32 is None:
                self._t32 = _index32(*self._transpose_structure()[:2])
            return self._t32
        if self._i32 is None:
            self._i32 = _index32(self.crow, self.col)
        return self._i32

    def _transpose_structure(self):
        if self._t_cache is None:
            perm_t = torch.argsort(self.col * self.shape[0] + self.row, stable=True)
            self._t_cache = (_crow(self.col[perm_t], self.shape[1]), self.row[perm_t], perm_t)
        return self._t_cache

    def csr_t(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """``A^T`` as a CSR tensor. The structure is computed once per adjacency; the
        permuted values are cached for ``self.values`` until they change in place
        (keyed on the tensor's version counter)."""
        crow_t, col_t, perm_t = self._transpose_structure()
        v = (self.values if values is None else values).detach()
        own = values is None or values is self.values
        key = (v.data_ptr(), v._version)
        if own and self._vt_cache is not None and self._vt_cache[0] == key:
            return self._vt_cache[1]
        out = _csr_tensor(*self._spmm_index(transpose=True), v[perm_t], (self.shape[1], self.shape[0]))
        if own:
            self._vt_cache = (key, out)
        return out

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``. x: (n_cols, d) -> (n_rows, d)."""
        return _SpMM.apply(self.values, x, self)

    __matmul__ = matmul

    def to_dense(self) -> torch.Tensor:
        return torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device).index_put(
            (self.row, self.col), self.values, accumulate=True)

    def row_sums(self) -> torch.Tensor:
        """(n_rows,) sum of each row's values."""
        return torch.zeros(self.shape[0], dtype=self.values.dtype, device=self.values.device).index_add(
            0, self.row, self.values)

    def map_tensors(self, fn) -> "SparseAdjacency":
        """A copy with ``fn`` applied to every tensor it holds (what ``nn.Module._apply`` does to a module's
        tensors: ``model.to(device)`` moves a model's adjacencies through it); the value caches start empty."""
        out = SparseAdjacency(fn(self.row), fn(self.col), fn(self.values), self.shape, crow=fn(self.crow),
                              perm=None if self.perm is None else fn(self.perm))
        if self._t_cache is not None:
            out._t_cache = tuple(fn(t) for t in self._t_cache)
        return out

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the structure holds (not the value caches), e.g. to check where it lives."""
        return [self.row, self.col, self.values, self.crow] + ([self.perm] if self.perm is not None else []) \
            + list(self._t_cache or ())


class _SpMM(torch.autograd.Function):
    """out = A x with A in CSR; backward: dx = A^T dout (cached CSR transpose),
    dvalues[e] = <dout[row_e], x[col_e]> (in chunks, only when values need grad)."""

    CHUNK = 1 << 18

    @staticmethod
    def forward(ctx, values, x, adj: SparseAdjacency):
        ctx.adj = adj
        ctx.save_for_backward(values, x)
        return torch.sparse.mm(adj.csr(values), x)

    @staticmethod
    def backward(ctx, grad_out):
        values, x = ctx.saved_tensors
        adj: SparseAdjacency = ctx.adj
        grad_values = grad_x = None
        if ctx.needs_input_grad[1]:
            grad_x = torch.sparse.mm(adj.csr_t(values), grad_out.contiguous())
        if ctx.needs_input_grad[0]:
            grad_values = torch.empty_like(values)
            for s in range(0, adj.nnz, _SpMM.CHUNK):
                r, c = adj.row[s:s + _SpMM.CHUNK], adj.col[s:s + _SpMM.CHUNK]
                grad_values[s:s + _SpMM.CHUNK] = (grad_out[r] * x[c]).sum(-1)
        return grad_values, grad_x, None


def propagate(adj: SparseAdjacency, x: torch.Tensor) -> torch.Tensor:
    """Neighbourhood aggregation ``e_{N_h} = sum_t A[h, t] e_t`` (SPEC §4).
    adj: (N, N); x: (N, d) -> (N, d)."""
    return adj.matmul(x)


# --------------------------------------------------------------------------- attention

class KnowledgeAwareAttention(nn.Module):
    """Knowledge-aware attention over a fixed set of triples (SPEC §4; KGAT Eq. 4-5).

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
        slot_keys, inv = torch.unique(keys, return_inverse=True)
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

    def scores(self, x: torch.Tensor, transr: TransR) -> torch.Tensor:
        """Unnormalised ``pi(h, r, t)`` per edge, CSR order. x: (n_nodes, entity_dim) -> (E,).

        ``W_r e`` and ``tanh(W_r e_h + e_r)`` are computed once per (relation, node) slot;
        each edge then costs one gathered dot product. Without autograd the dot products
        run in chunks through preallocated buffers (no per-chunk allocation)."""
        proj = torch.cat([x[n] @ transr.W[r] for n, r in
                          zip(torch.split(self.slot_nodes, self.rel_sizes), self.rel_list)])  # (S, d_r): W_r e
        query = torch.tanh(proj + transr.relation_emb.index_select(0, self.slot_rel))   # (S, d_r): tanh(W_r e_h + e_r)
        E, ch = self.n_edges, self.chunk_size
        if torch.is_grad_enabled() and query.requires_grad:
            if not E:
                return x.new_zeros(0)
            return torch.cat([(query.index_select(0, self.h_slot[s:s + ch])
                               * proj.index_select(0, self.t_slot[s:s + ch])).sum(-1)
                              for s in range(0, E, ch)])                  # KGAT Eq. 4
        out = query.new_empty(E)
        a, b = query.new_empty(min(ch, E), query.shape[1]), query.new_empty(min(ch, E), query.shape[1])
        for s in range(0, E, ch):
            hs, ts = self.h_slot[s:s + ch], self.t_slot[s:s + ch]
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


# --------------------------------------------------------------------------- aggregation

class MessageDropout(nn.Module):
    """Inverted dropout, as ``nn.Dropout``, with a cheaper mask: each element's keep
    decision is one 16-bit lane of a 64-bit random word (one generator call per 4
    elements instead of one Bernoulli draw per element), and the kept elements are
    scaled by ``1 / (1 - p)`` with ``p`` rounded to a multiple of 1/65536 (0.1 ->
    0.100006), so the expectation is exactly preserved. Seeded by torch's generator,
    so deterministic like ``nn.Dropout``, but a different random stream. KGAT's CF
    step with each: bench/results/kgat_step.md."""

    def __init__(self, p: float = 0.1):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability {p} is not in [0, 1]")
        self.p = float(p)
        self._drop = round(self.p * 65536)                                # dropped lanes out of 65536

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self._drop == 0:
            return x
        if self._drop == 65536:
            return x * 0.0
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2 ** 63, None)
        lanes = words.view(torch.int16)[:n].view(x.shape)                 # uniform over [-32768, 32767]
        scale = 65536.0 / (65536 - self._drop)
        keep = (lanes >= self._drop - 32768).to(x.dtype).mul_(scale)      # P(keep) = 1 - drop / 65536
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Aggregator(nn.Module):
    """One propagation layer (KGAT Eq. 6-8; SPEC §4), the variant chosen by ``kind``:

    * ``"bi-interaction"``: ``LeakyReLU(W1 (e_h + e_Nh)) + LeakyReLU(W2 (e_h * e_Nh))``
    * ``"gcn"``: ``LeakyReLU(W (e_h + e_Nh))``
    * ``"graphsage"``: ``LeakyReLU(W (e_h || e_Nh))``

    followed by message dropout (:class:`MessageDropout`). ``W`` are Linear layers with bias (Xavier weights,
    zero bias); LeakyReLU slope 0.2 (the KGAT release's ``tf.nn.leaky_relu``).
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "bi-interaction", dropout: float = 0.1,
                 negative_slope: float = 0.2):
        super().__init__()
        kind = kind.lower().replace("_", "-")
        if kind in ("bi", "bi-interaction", "biinteraction"):
            kind = "bi-interaction"
        if kind not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {kind!r}; choose one of {AGGREGATORS}")
        self.kind, self.in_dim, self.out_dim = kind, in_dim, out_dim
        self.negative_slope = negative_slope
        self.W1 = nn.Linear(2 * in_dim if kind == "graphsage" else in_dim, out_dim)
        self.W2 = nn.Linear(in_dim, out_dim) if kind == "bi-interaction" else None
        self.dropout = MessageDropout(dropout)
        for lin in (self.W1, self.W2):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, x_neigh: torch.Tensor) -> torch.Tensor:
        """x: (N, in_dim) = e_h; x_neigh: (N, in_dim) = e_{N_h} -> (N, out_dim)."""
        act = lambda z: F.leaky_relu(z, self.negative_slope)  # noqa: E731
        if self.kind == "bi-interaction":
            out = act(self.W1(x + x_neigh)) + act(self.W2(x * x_neigh))   # KGAT Eq. 8
        elif self.kind == "gcn":
            out = act(self.W1(x + x_neigh))                               # KGAT Eq. 6
        else:
            out = act(self.W1(torch.cat([x, x_neigh], dim=1)))            # KGAT Eq. 7
        return self.dropout(out)


class KGPropagation(nn.Module):
    """L propagation layers over an adjacency (SPEC §4-5; KGAT Eq. 9-11):

    ``e^(l+1) = Aggregator_l(e^(l), A e^(l))``, message dropout inside each layer;
    the output is ``e^(0) || norm(e^(1)) || ... || norm(e^(L))`` with ``norm`` the row
    L2 normalisation (the next layer takes the un-normalised ``e^(l+1)``, as KGAT).
    ``out_dim = in_dim + sum(dims)`` (64 + 64 + 32 + 16 = 176 with the defaults).
    """

    def __init__(self, in_dim: int = 64, dims=(64, 32, 16), kind: str = "bi-interaction", dropout: float = 0.1,
                 negative_slope: float = 0.2):
        super().__init__()
        dims = [int(d) for d in dims]
        sizes = [in_dim] + dims
        drops = list(dropout) if isinstance(dropout, (list, tuple)) else [float(dropout)] * len(dims)
        if len(drops) != len(dims):
            raise ValueError(f"{len(drops)} dropout values for {len(dims)} layers")
        self.layers = nn.ModuleList(Aggregator(sizes[k], sizes[k + 1], kind, drops[k], negative_slope)
                                    for k in range(len(dims)))
        self.in_dim, self.dims = in_dim, dims
        self.out_dim = in_dim + sum(dims)

    def forward(self, x: torch.Tensor, adj: SparseAdjacency, return_layers: bool = False,
                rows: torch.Tensor | None = None):
        """x: (N, in_dim) layer-0 embeddings; adj: (N, N) -> (N, out_dim)
        (or the list [e^(0), norm(e^(1)), ...] with ``return_layers``).

        ``rows`` (R,) distinct: return only those rows, (R, out_dim). Every layer but the
        last runs over all N nodes (each needs its neighbours' previous layer, and on
        the CKGs here nearly every node is within 2 hops of a user or an item); the
        last layer runs on the R rows only, with ``adj.row_slice(rows)``.
        Same values as ``forward(x, adj)[rows]`` in evaluation (in training the message
        dropout draws fewer numbers, so its stream differs). Timings of both steps:
        bench/results/kgat_step.md."""
        outs = [x if rows is None else x.index_select(0, rows)]
        h = x
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            if rows is not None and k == last:
                h = layer(h.index_select(0, rows), propagate(adj.row_slice(rows), h))   # KGAT Eq. 3 + 8, R rows
            else:
                h = layer(h, propagate(adj, h))                                         # KGAT Eq. 3 + 8
            outs.append(F.normalize(h if rows is None or k == last else h.index_select(0, rows),
                                    p=2, dim=1))                                        # SPEC §4: L2-normalised
        return outs if return_layers else torch.cat(outs, dim=1)                        # SPEC §5 / KGAT Eq. 11
