"""BPR-MF: matrix factorisation trained with Bayesian Personalized Ranking.

Rendle, Freudenthaler, Gantner, Schmidt-Thieme, "BPR: Bayesian Personalized
Ranking from Implicit Feedback", UAI 2009.

    y(u, i) = e_u^T e_i
    L = sum_(u,i,j) -ln sigma(y(u, i) - y(u, j)) + lambda ||Theta||^2
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import Recommender


class BPRMF(Recommender):
    name = "bprmf"

    def __init__(self, dataset, config):
        super().__init__(dataset, config)
        d = config["embedding_size"]
        self.user_emb = nn.Embedding(self.n_users, d)
        self.item_emb = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        self.reg_weight = config["reg_weight"]

    def calculate_loss(self, batch):
        u = self.user_emb(batch["users"])
        p = self.item_emb(batch["pos_items"])
        n = self.item_emb(batch["neg_items"])
        pos, neg = (u * p).sum(-1), (u * n).sum(-1)
        bpr = -F.logsigmoid(pos - neg).mean()
        return bpr + self.reg_weight * self.l2_reg(u, p, n)

    def final_embeddings(self):
        """Scores are inner products of the ID rows: users (n_users, d), items (n_items, d)."""
        return self.user_emb.weight.detach(), self.item_emb.weight.detach()
