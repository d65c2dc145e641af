"""LightGCN: simplified graph convolution for collaborative filtering.

He, Deng, Wang, Li, Zhang, Wang, "LightGCN: Simplifying and Powering Graph
Convolution Network for Recommendation", SIGIR 2020.

    E^(k+1) = D^-1/2 A D^-1/2 E^(k)                      (Eq. 7, matrix form)
    e_u = sum_k alpha_k e_u^(k),  alpha_k = 1 / (K + 1)  (Eq. 4)
    y(u, i) = e_u^T e_i                                   (Eq. 5)
    L = BPR + lambda ||E^(0)_batch||^2                    (Eq. 15)

Defaults (``configs/model/lightgcn.yaml``): the paper's 64-d, K = 3 layers, lr 1e-3,
lambda 1e-4; patience 30 and up to 500 epochs, since at lr 1e-3 valid NDCG@20 sits on
a plateau in the first epochs (bench/results/recbole_ml-100k.md, docs/baselines.md).
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn import SparseAdjacency
from ..nn.sparse import normalized_bipartite_adjacency
from .base import Recommender


class LightGCN(Recommender):
    name = "lightgcn"

    def __init__(self, dataset, config):
        super().__init__(dataset, config)
        d = config["embedding_size"]
        self.n_layers = config["n_layers"]
        self.reg_weight = config["reg_weight"]
        self.user_emb = nn.Embedding(self.n_users, d)
        self.item_emb = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        self.adj = SparseAdjacency.from_scipy(
            normalized_bipartite_adjacency(dataset.train, self.n_users, self.n_items))

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns final (n_users, d) and (n_items, d) embeddings (Eq. 4 + 7)."""
        x = torch.cat([self.user_emb.weight, self.item_emb.weight])
        layers = [x]
        for _ in range(self.n_layers):
            x = self.adj @ x                                   # Eq. 7
            layers.append(x)
        out = torch.stack(layers).mean(0)                           # Eq. 4
        return out[: self.n_users], out[self.n_users:]

    def calculate_loss(self, batch):
        users, items = self.propagate()
        bpr = self.bpr(*self.batch_rows(users, items, batch))
        reg = self.l2_reg(self.user_emb(batch["users"]), self.item_emb(batch["pos_items"]),
                          self.item_emb(batch["neg_items"]))
        return bpr + self.reg_weight * reg

    def final_embeddings(self):
        return self.propagate()                                     # Eq. 5 scores by inner product
