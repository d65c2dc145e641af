"""Sparse graph matrices: :class:`SparseAdjacency` (CSR with a cached CSR transpose, one
differentiable SpMM), :func:`propagate`, and the normalised user-item adjacency of the
collaborative models.

Propagation runs on CSR with the transpose cached for the backward pass; why (COO and
gather/index_add message passing measured against it): bench/results/propagation.md.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["SparseAdjacency", "propagate", "bipartite_adjacency", "normalized_bipartite_adjacency"]


def _index32(*index: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """CSR index tensors as int32 where they fit: torch's CPU SpMM (MKL) converts int64
    indices to int32 copies at every call (ml-1m's CKG: 1.65M column ids, twice per
    propagation layer); given int32 it uses them as they are, with the same result
    (why: bench/results/propagation.md)."""
    if all(t.numel() == 0 or int(t.max()) < 2 ** 31 - 1 for t in index):
        return tuple(t.to(torch.int32) for t in index)
    return index


def _csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    """A torch CSR tensor without torch's "beta" warning: the subset used here
    (construction + SpMM with a dense matrix) is tested against dense products."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


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
    """Neighbourhood aggregation ``e_{N_h} = sum_t A[h, t] e_t`` (docs/model.md (13)).
    adj: (N, N); x: (N, d) -> (N, d)."""
    return adj.matmul(x)



def bipartite_adjacency(train: np.ndarray, n_users: int, n_items: int, dtype=np.float32) -> sp.csr_matrix:
    """The binary symmetric (n_users + n_items) square adjacency of the user-item graph, users first."""
    u, i = train[:, 0], train[:, 1] + n_users
    n = n_users + n_items
    a = sp.csr_matrix((np.ones(2 * len(u), dtype=dtype), (np.concatenate([u, i]), np.concatenate([i, u]))),
                      shape=(n, n))
    a.sum_duplicates()
    a.data[:] = 1.0
    return a


def normalized_bipartite_adjacency(train: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 of the (n_users + n_items) square user-item graph (LightGCN, Eq. 7)."""
    a = bipartite_adjacency(train, n_users, n_items)
    deg = np.asarray(a.sum(1)).ravel()
    d = np.zeros_like(deg, dtype=np.float32)
    np.power(deg, -0.5, out=d, where=deg > 0)
    return sp.diags(d) @ a @ sp.diags(d)
