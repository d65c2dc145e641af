"""SpectralCF: spectral convolution on the user-item bipartite graph.

Zheng, Lu, Jiang, Zhang, Yu, "Spectral Collaborative Filtering", RecSys 2018.

With A the (n_users + n_items) bipartite adjacency, D its degree matrix and the
graph Laplacian L = U Lambda U^-1 (eigenvectors U, eigenvalues Lambda), a spectral
filter g_theta(Lambda) approximated by the first-order polynomial
theta_0 I + theta_1 Lambda with theta_0 = theta_1 = theta' gives the convolution

    x_new = theta' (U U^-1 + U Lambda U^-1) x = theta' (I + L) x
    X_{k+1} = sigma( (U U^T + U Lambda U^T) X_k Theta'_k )     (C -> F filters, sigma = sigmoid)
    e* = X_0 || X_1 || ... || X_K                              (outputs of every layer concatenated)
    y(u, i) = e_u*^T e_i*
    L = sum -ln sigma( y(u, i) - y(u, j) ) + lambda ||e_u*, e_i*, e_j*||^2

Choices:

* The eigendecomposition is never formed: with the full eigenbasis,
  U U^-1 + U Lambda U^-1 is exactly ``I + L``, a sparse matrix, multiplied with the
  CSR SpMM of :mod:`multikg4rec.nn.sparse`. (The release, lzheng21/SpectralCF, builds
  the dense eigenbasis with ``np.linalg.eig`` and writes U^T for U^-1; for the
  non-symmetric random-walk Laplacian the two differ, U^-1 is the spectral
  reading and the only one that scales.)
* ``laplacian``: ``rw`` (default; the paper's L = I - D^-1 A, as the release),
  ``sym`` (L = I - D^-1/2 A D^-1/2, whose eigenbasis is orthonormal, U^-1 = U^T) or
  ``adj``: RecBole 1.2.1's operator, I + D^-1/2 A D^-1/2 (its "laplacian" is the
  normalised adjacency; use with ``self_loops: false``). I + L has eigenvalues in
  [1, 3] and weighs a node against its neighbours' mean (high-pass); RecBole's in
  [0, 2] smooths over neighbours (low-pass, as LightGCN). The default is the
  paper's; the two against RecBole: docs/results.md (Table 2, ml-100k).
* ``self_loops: true`` (the release): A includes the identity, A <- I + A, before
  D and L are formed.
* Defaults from the release's ``params.py`` (ml-1m): K = 3 layers, d = C = F = 16,
  lambda = 1e-3 on the batch's final embeddings (sum of squares / 2, divided by the
  batch size, as the release), batch 1024. The release optimises with RMSProp at
  lr 1e-3; with the trainer's Adam that rate stalls on a plateau (why:
  docs/results.md), so the default is 5e-3 from docs/model.md §6's grid. Xavier
  init (docs/model.md §6; the release draws N(0.01, 0.02)).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ..errors import UserError
from ..nn import SparseAdjacency
from ..nn.sparse import bipartite_adjacency
from .base import Recommender


def spectral_filter(train: np.ndarray, n_users: int, n_items: int, laplacian: str = "rw",
                    self_loops: bool = True) -> sp.csr_matrix:
    """``I + L`` (= U U^-1 + U Lambda U^-1) of the user-item graph, users first."""
    n = n_users + n_items
    a = bipartite_adjacency(train, n_users, n_items, dtype=np.float64)
    if self_loops:
        a = a + sp.identity(n, format="csr")
    deg = np.asarray(a.sum(1)).ravel()
    eye = sp.identity(n, format="csr")
    if laplacian == "rw":
        inv = np.zeros_like(deg)
        np.divide(1.0, deg, out=inv, where=deg > 0)
        lap = eye - sp.diags(inv) @ a                                   # L = I - D^-1 A
    elif laplacian in ("sym", "adj"):
        inv = np.zeros_like(deg)
        np.power(deg, -0.5, out=inv, where=deg > 0)
        norm = sp.diags(inv) @ a @ sp.diags(inv)                        # D^-1/2 A D^-1/2
        if laplacian == "adj":                                          # RecBole 1.2.1: I + D^-1/2 A D^-1/2
            return sp.csr_matrix(eye + norm)
        lap = eye - norm                                                # L = I - D^-1/2 A D^-1/2
    else:
        raise UserError(f"spectralcf: laplacian must be rw, sym or adj, not {laplacian!r}")
    return sp.csr_matrix(eye + lap)                                     # U U^-1 + U Lambda U^-1


class SpectralCF(Recommender):
    name = "spectralcf"

    def __init__(self, dataset, config):
        super().__init__(dataset, config)
        d = int(config["embedding_size"])
        self.n_layers = int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.user_emb = nn.Embedding(self.n_users, d)
        self.item_emb = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        self.filters = nn.ParameterList(nn.Parameter(torch.empty(d, d)) for _ in range(self.n_layers))
        for theta in self.filters:
            nn.init.xavier_uniform_(theta)
        laplacian = str(config["laplacian"]).lower()
        self.adj = SparseAdjacency.from_scipy(spectral_filter(dataset.train, self.n_users, self.n_items, laplacian,
                                                              bool(config["self_loops"])))

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final (n_users, d (K+1)) and (n_items, d (K+1)) embeddings."""
        x = torch.cat([self.user_emb.weight, self.item_emb.weight])
        layers = [x]
        for theta in self.filters:
            x = torch.sigmoid((self.adj @ x) @ theta)               # X_{k+1} = sigma((I + L) X_k Theta'_k)
            layers.append(x)
        out = torch.cat(layers, 1)                                      # e* = X_0 || ... || X_K
        return out[: self.n_users], out[self.n_users:]

    def calculate_loss(self, batch):
        users, items = self.propagate()
        u, p, n = self.batch_rows(users, items, batch)
        return self.bpr(u, p, n) + self.reg_weight * self.l2_reg(u, p, n)

    def final_embeddings(self):
        return self.propagate()                                         # y(u, i) = e_u*^T e_i*
