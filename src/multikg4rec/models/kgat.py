"""KGAT: Knowledge Graph Attention Network.

Wang, He, Cao, Liu, Chua, "KGAT: Knowledge Graph Attention Network for
Recommendation", KDD 2019. Equations as numbered in the paper (and docs/model.md §2, §4-6):

    g(h, r, t) = || W_r e_h + e_r - W_r e_t ||^2                       (Eq. 1, TransR)
    L_KG = sum -ln sigma( g(h, r, t') - g(h, r, t) )                   (Eq. 2)
    e_{N_h} = sum_{(h,r,t)} pi(h, r, t) e_t                            (Eq. 3)
    pi(h, r, t) = (W_r e_t)^T tanh( W_r e_h + e_r ), softmax over h    (Eq. 4-5)
    e_h^(l) = LeakyReLU(W1 (e_h + e_Nh)) + LeakyReLU(W2 (e_h * e_Nh))  (Eq. 8, Bi-Interaction)
    e* = e^(0) || e^(1) || ... || e^(L)                                (Eq. 11)
    y(u, i) = e_u*^T e_i*                                              (Eq. 12)
    L_CF = sum -ln sigma( y(u, i) - y(u, j) )                           (Eq. 13)
    L = L_KG + L_CF + lambda ||Theta||^2                               (Eq. 15)

Training as the KGAT release: per epoch one CF pass (BPR over the propagated
embeddings), one KG pass (``kg_loss_triples``: ``ckg``, TransR on the whole CKG
with inverses, as the release | ``kg``, the KG's triples and inverses only, as
RecBole's KGAT), then the attention is recomputed with the current embeddings and
TransR parameters (``on_epoch_end``) and held fixed for the next epoch; the CF
loss does not differentiate through the attention (as the release, which feeds it
as a constant). Before the first update the attention is uniform over each head's
triples (the release's random-walk-normalised adjacency).

Nodes: one embedding table over the CKG (``Dataset.ckg()`` ids: entities then
users); item ``i`` is entity ``i``.

Choices (configs/model/kgat.yaml): the paper's 64-d embeddings, layers 64/32/16,
message dropout 0.1, lambda 1e-5 (CF and KG), CF batch 1024, KG batch 2048;
``aggregator`` bi-interaction (Eq. 8) | gcn (Eq. 6) | graphsage (Eq. 7);
``attention: false`` keeps uniform 1/|N_h| weights (the paper's "w/o Att").
``learning_rate`` 1e-3 (the paper: 1e-4 at batch 1024), the lowest value of the
Multi-KG4Rec paper's grid (docs/model.md §6), since the ml-1m batch is 8x larger
(8x fewer Adam steps per epoch). Every CF step propagates over the whole CKG
whatever the batch size, so the ml-1m config takes CF batch 8192 and KG batch 16384
(why: bench/results/propagation.md).
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn import KGPropagation, TransR
from .base import KnowledgeRecommender


class KGAT(KnowledgeRecommender):
    name = "kgat"

    def __init__(self, dataset, config):
        super().__init__(dataset, config)
        d = int(config["embedding_size"])
        self.reg_weight = float(config["reg_weight"])
        self.kg_reg_weight = float(config["kg_reg_weight"])
        ckg = dataset.ckg()
        self.n_nodes = ckg.n_nodes
        # one table over CKG nodes: entities 0..n_entities-1 (items first), then users
        self.node_emb = nn.Embedding(ckg.n_nodes, d)
        nn.init.xavier_uniform_(self.node_emb.weight)
        self.transr = TransR(ckg.n_relations, d, int(config["kg_embedding_size"]))
        self.propagation = KGPropagation(d, config["layers"], config["aggregator"], config["mess_dropout"])
        self.init_attention(["id"])                     # one table, its attention values in buffer att_id

    # ---- attention (Eq. 4-5), recomputed after each epoch (KnowledgeRecommender.on_epoch_end)
    def attention_inputs(self):
        return {"id": (self.node_emb.weight, self.transr)}

    # ---- propagation and losses
    def _final(self) -> torch.Tensor:
        """e* (Eq. 11) of every item, then every user: (n_items + n_users, embedding_size + sum(layers))."""
        return self.propagation(self.node_emb.weight, self.adjacency("id"), rows=self.ui_rows)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final embeddings (Eq. 11): users (n_users, d_out), items (n_items, d_out)."""
        out = self._final()
        return out[self.n_items:], out[: self.n_items]

    def calculate_loss(self, batch):
        out = self._final()
        bpr, reg = self.propagated_bpr(out, batch, [self.node_emb.weight])                 # Eq. 12-13
        return bpr + self.reg_weight * reg                                               # Eq. 15, lambda

    def calculate_kg_loss(self, batch):
        rows = self.node_emb(torch.stack([batch["heads"], batch["pos_tails"], batch["neg_tails"]], 1))  # one lookup
        return self.transr.triple_loss(rows, batch["relations"], self.kg_reg_weight)            # Eq. 1-2

    # ---- evaluation
    def final_embeddings(self):
        return self.propagate()                                             # Eq. 12: y = e_u*^T e_i*
