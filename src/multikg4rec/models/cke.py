"""CKE: Collaborative Knowledge base Embedding.

Zhang, Yuan, Lian, Xie, Ma, "Collaborative Knowledge Base Embedding for
Recommender Systems", KDD 2016.

Implemented: the collaborative part (matrix factorisation with a pairwise BPR loss)
and the structural knowledge part (Bayesian TransR over the KG):

    item latent        e_i = eta_i + v_i                 (Sec. 4.4: offset eta + structural v)
    score              y(u, i) = e_u^T e_i
    L_CF  = sum -ln sigma( y(u, i) - y(u, j) ) + lambda (||e_u||^2 + ||eta_i||^2 + ||eta_j||^2 + ||v||^2)
    g(h, r, t) = || W_r v_h + e_r - W_r v_t ||^2        (Sec. 4.1, TransR; docs/model.md §2)
    L_KG  = sum -ln sigma( g(h, r, t') - g(h, r, t) ) + lambda_kg ||.||^2

``v`` is the structural embedding of KG entities; entity ``i < n_items`` is item ``i``
(``Dataset`` id layout), so an item's structural vector is its entity's row. An item
not linked to the KG has an entity row that no triple touches: it behaves as a
second free item vector.

NOT implemented: the paper's textual (stacked denoising auto-encoder) and visual
(stacked convolutional auto-encoder) knowledge; the structural part is what the KG
baselines of the Multi-KG4Rec paper compare with.

Defaults (``configs/model/cke.yaml``) follow the other KG baselines here (KGAT's
setup): 64-d, lr 1e-3, lambda 1e-5 for CF and KG, KG batch 2048.

Training: alternating, as the trainer runs every model with a KG loss (one CF
pass, then one KG pass over ``kg_train_triples()`` per epoch). The paper optimises
the joint objective with SGD over sampled (u, i, j) and (h, r, t, t') tuples; the
alternation optimises the same sum of the two losses. The KG pass samples the KG
triples only (no user-item edges, no inverses: CKE embeds the knowledge base, not
the collaborative graph).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..nn import TransR
from .base import Recommender


class CKE(Recommender):
    name = "cke"
    requires_kg = True
    uses_kg_loss = True

    def __init__(self, dataset, config):
        super().__init__(dataset, config)
        d = int(config["embedding_size"])
        self.reg_weight = float(config["reg_weight"])
        self.kg_reg_weight = float(config["kg_reg_weight"])
        self.user_emb = nn.Embedding(self.n_users, d)
        self.item_emb = nn.Embedding(self.n_items, d)          # eta_i, the collaborative offset
        self.entity_emb = nn.Embedding(self.n_entities, d)     # v, structural embeddings
        for e in (self.user_emb, self.item_emb, self.entity_emb):
            nn.init.xavier_uniform_(e.weight)
        self.transr = TransR(max(self.n_relations, 1), d, int(config["kg_embedding_size"]))

    def kg_train_triples(self) -> tuple[np.ndarray, int]:
        """The KG's own triples over entity ids (no interactions, no inverses)."""
        return self.dataset.kg, self.n_entities

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """e_i = eta_i + v_i. items: (B,) or None (all) -> (B or n_items, d)."""
        if items is None:
            return self.item_emb.weight + self.entity_emb.weight[: self.n_items]
        return self.item_emb(items) + self.entity_emb(items)

    def calculate_loss(self, batch):
        users, pos, neg = batch["users"], batch["pos_items"], batch["neg_items"]
        u = self.user_emb(users)
        p, n = self.item_vectors(pos), self.item_vectors(neg)
        bpr = self.bpr(u, p, n)
        reg = self.l2_reg(u, self.item_emb(pos), self.item_emb(neg), self.entity_emb(pos), self.entity_emb(neg))
        return bpr + self.reg_weight * reg

    def calculate_kg_loss(self, batch):
        rows = self.entity_emb(torch.stack([batch["heads"], batch["pos_tails"], batch["neg_tails"]], 1))
        return self.transr.triple_loss(rows, batch["relations"], self.kg_reg_weight)

    def final_embeddings(self):
        """Scores are y(u, i) = u^T e_i: users (n_users, d), items e_i = eta_i + v_i (n_items, d)."""
        return self.user_emb.weight.detach(), self.item_vectors().detach()
