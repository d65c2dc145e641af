"""Graph matrices built once from the training pairs (the products run through
``layers.SparseAdjacency``, CSR with a cached transpose)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def normalized_bipartite_adjacency(train: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 of the (n_users + n_items) square user-item graph (LightGCN, Eq. 7)."""
    u, i = train[:, 0], train[:, 1] + n_users
    n = n_users + n_items
    a = sp.csr_matrix((np.ones(2 * len(u), dtype=np.float32), (np.concatenate([u, i]), np.concatenate([i, u]))),
                      shape=(n, n))
    a.sum_duplicates()
    a.data[:] = 1.0
    deg = np.asarray(a.sum(1)).ravel()
    d = np.zeros_like(deg, dtype=np.float32)
    np.power(deg, -0.5, out=d, where=deg > 0)
    return sp.diags(d) @ a @ sp.diags(d)
