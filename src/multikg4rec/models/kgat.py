"""KGAT: Knowledge Graph Attention Network.

Wang, He, Cao, Liu, Chua, "KGAT: Knowledge Graph Attention Network for
Recommendation", KDD 2019. Equations as numbered in the paper (and SPEC §2, §4-6):

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
embeddings), one KG pass (TransR on the whole CKG with inverses, the default
``kg_train_triples``), then the attention is recomputed with the current
embeddings and TransR parameters (``on_epoch_end``) and held fixed for the next
epoch; the CF loss does not differentiate through the attention (as the release,
which feeds it as a constant). Before the first update the attention is uniform
over each head's triples (the release's random-walk-normalised adjacency).

Nodes: one embedding table over the CKG (``Dataset.ckg()`` ids: entities then
users); item ``i`` is entity ``i``.

Cost (bench/results/propagation.md): every CF step propagates over the whole CKG
(ml-1m: 1.65M edges, ~0.47 s forward+backward on one busy core with the CSR SpMM of
``layers.SparseAdjacency``), independent of the batch size; hence the ml-1m config's
CF batch of 8192 (99 steps, ~78 s per epoch including the KG pass).
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers import KGPropagation, KnowledgeAwareAttention, TransR
from .base import Recommender


class KGAT(Recommender):
    name = "kgat"
    requires_kg = True
    uses_kg_loss = True

    def __init__(self, dataset, config):
        super().__init__(dataset, config)
        d = int(config["embedding_size"])
        self.reg_weight = float(config["reg_weight"])
        self.kg_reg_weight = float(config["kg_reg_weight"])
        self.use_attention = bool(config["attention"])
        ckg = dataset.ckg()
        self.n_nodes = ckg.n_nodes
        # one table over CKG nodes: entities 0..n_entities-1 (items first), then users
        self.node_emb = nn.Embedding(ckg.n_nodes, d)
        nn.init.xavier_uniform_(self.node_emb.weight)
        self.transr = TransR(ckg.n_relations, d, int(config["kg_embedding_size"]))
        self.attention = KnowledgeAwareAttention(ckg.head, ckg.relation, ckg.tail, ckg.n_nodes)
        self.propagation = KGPropagation(d, config["layers"], config["aggregator"], config["mess_dropout"])
        # attention values in CSR order; a buffer so checkpoints resume with the same adjacency
        self.register_buffer("att_values", self._uniform_attention())
        self.register_buffer("ui_rows", self.ckg_ui_rows(), persistent=False)

    # ---- attention
    def _uniform_attention(self) -> torch.Tensor:
        """1 / |N_h| for every triple of head h (before the first update; also the 'w/o att' ablation)."""
        head = self.attention.head
        deg = torch.bincount(head, minlength=self.n_nodes).float()
        return 1.0 / deg[head]

    @property
    def adjacency(self):
        """The attention adjacency over ``att_values`` (``with_values`` returns the same
        object while they are unchanged, so its cached transpose serves a whole epoch)."""
        return self.attention.structure.with_values(self.att_values)

    @torch.no_grad()
    def update_attention(self) -> None:
        """Recompute pi(h, r, t) and its per-head softmax with the current parameters (Eq. 4-5)."""
        if self.use_attention:
            self.att_values.copy_(self.attention(self.node_emb.weight, self.transr).values)

    def on_epoch_end(self, epoch: int) -> None:
        self.update_attention()

    # ---- propagation and losses
    def _final(self) -> torch.Tensor:
        """e* (Eq. 11) of every item, then every user: (n_items + n_users, embedding_size + sum(layers))."""
        return self.propagation(self.node_emb.weight, self.adjacency, rows=self.ui_rows)

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
