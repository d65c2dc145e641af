"""MKGAT: Multi-modal Knowledge Graph Attention Network.

Sun, Cao, Zhao, Wan, Zhou, Zhang, Wang, Zheng, "Multi-modal Knowledge Graphs for
Recommender Systems", CIKM 2020. No official code exists; this follows the paper
and states every choice it leaves open.

Multi-modal KG (MKG): an entity's image and text become NEW entities of the graph,
linked to it by the relations ``has_image`` / ``has_text``. Entity encoder: a
structured entity (and a user) has an ID embedding; a multi-modal entity is its
pre-extracted feature passed through a dense layer, e_m = W_m x_m + b_m.

Multi-modal graph attention layer, over the triples (h, r, t) with head h:

    e(h, r, t) = W_1 (e_h || e_r || e_t)                             (triple embedding)
    pi(h, r, t) = LeakyReLU( w_2^T e(h, r, t) ),  softmax over the triples of h
    e_agg(h) = sum_{(h,r,t)} pi(h, r, t) e(h, r, t)                  (propagation)
    add:    e_h' = W_3 e_h + e_agg(h)                                (aggregation)
    concat: e_h' = W_4 (e_h || e_agg(h))

Knowledge-graph embedding module: the entity encoder, one attention layer over the
MKG, then TransE on its outputs:

    score(h, r, t) = || e_h + e_r - e_t ||_2^2
    L_KG = sum -ln sigma( score(h, r, t') - score(h, r, t) )

Recommendation module: L stacked attention layers over the collaborative KG
(users -interact- items + the MKG); e* = e^(0) || e^(1) || ... || e^(L),
y(u, i) = e_u*^T e_i*, L_CF = BPR. The two losses are optimised alternately (the
trainer's CF pass, then its KG pass, every epoch).

Choices (the paper is silent or loose on these):

* Node layout: entities ``0..n_entities-1`` (item i is entity i), then the
  multi-modal entities (one per entity and modality with a feature, modalities in
  ``modalities`` order), then users. Relations: the CKG ids of ``Dataset.ckg()``
  (interact, KG relations, their inverses), then ``has_<m>`` and its inverse per
  modality. Every relation has an inverse (as the CKG), so items receive their
  images/texts and the multi-modal entities receive their item.
* Which entities get multi-modal nodes: every row whose feature mask is True, as
  given by the feature loader (items and KG entities alike); the YAML sets
  ``feature_fill: zeros`` so a node is only made from real content, never from the
  other modality's embedding. ``modalities: []`` gives the paper's "w/o t&v"
  variant, ``[text]`` / ``[image]`` its "w/o v" / "w/o t".
* Dense layer: ``nn.Linear`` (no activation) from the feature size to d.
* e_agg is computed without forming e(h, r, t) per edge: with W_1 = [W_h W_r W_t],
  e(h, r, t) = W_h e_h + W_r e_r + W_t e_t, so the logit is a sum of three
  gathered scalars and e_agg(h) = W_h e_h + (P C)_h + (P_rel B)_h, P the attention
  adjacency (head x tail, sparse), P_rel its per-relation sums (head x relation,
  dense: few relations), B = R W_r^T, C = E W_t^T. A head with no triple gets
  e_agg = 0. Exact (tests).
* Each layer's output passes a LeakyReLU (slope 0.2) and message dropout, and is
  L2-normalised before the concatenation, as KGAT (which MKGAT builds on); the next
  layer takes the un-normalised output. The attention is trained end to end with
  the CF loss (it is recomputed in every forward pass; W_2 has no other gradient).
* Layer sizes [64, 32, 16] and message dropout 0.1 (KGAT's, as the Multi-KG4Rec
  protocol); aggregator ``concat`` (the better of the paper's two).
* KG module: its own attention layer (64 -> 64), sharing the entity encoder and
  relation embeddings with the recommendation module; ``kge_attention: false``
  scores TransE on the encoder's embeddings instead. Its triples are the MKG's (KG
  triples, has_image / has_text links, all with inverses; no users); corrupted
  tails are drawn among MKG nodes.
* L2: ``reg_weight`` on the batch's layer-0 user/item embeddings, ``kg_reg_weight``
  on the TransE batch embeddings (KGAT's lambda = 1e-5 for both).
* Batches: CF 1024, KG 2048 (KGAT's); on ml-1m 8192 / 16384, as KGAT's ml-1m
  config, since every CF step propagates over the whole CKG whatever its size.

Features: ``MKGAT(dataset, config, features)`` with ``features[m] = (x, mask)``,
x (n_entities, d_m) float and mask (n_entities,) bool (the feature store's
aligned rows); ``config["features"] == "random"`` draws fixed-size random
features (tests).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from ..nn import MessageDropout, SparseAdjacency, segment_softmax
from .base import Recommender

AGGREGATORS = ("add", "concat")
RANDOM_FEATURE_DIM = 32


def random_features(dataset, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fixed random features for tests: an image for every item, a text for every entity."""
    g = torch.Generator().manual_seed(seed)
    n_ent = dataset.n_entities
    img_mask = torch.zeros(n_ent, dtype=torch.bool)
    img_mask[: dataset.n_items] = True
    return {"image": (torch.randn(n_ent, RANDOM_FEATURE_DIM, generator=g) * img_mask[:, None], img_mask),
            "text": (torch.randn(n_ent, RANDOM_FEATURE_DIM, generator=g), torch.ones(n_ent, dtype=torch.bool))}


class Graph:
    """Fixed triples (head, relation, tail) as a CSR head x tail structure (the attention
    values go there), with each triple's relation in the same order. Rows = heads: a head
    aggregates over its triples."""

    def __init__(self, head: torch.Tensor, relation: torch.Tensor, tail: torch.Tensor, n_nodes: int,
                 n_relations: int):
        self.adj = SparseAdjacency.from_edges(head, tail, None, (n_nodes, n_nodes))
        self.head, self.tail = self.adj.row, self.adj.col                # CSR order
        self.relation = relation[self.adj.perm] if self.adj.perm is not None else relation
        self.has_edge = torch.bincount(self.head, minlength=n_nodes) > 0
        self.n_nodes = n_nodes

    def map_tensors(self, fn) -> "Graph":
        """A copy with ``fn`` applied to its tensors (``model.to(device)`` moves the graph through it)."""
        g = object.__new__(Graph)
        g.adj = self.adj.map_tensors(fn)
        g.head, g.tail = g.adj.row, g.adj.col
        g.relation, g.has_edge, g.n_nodes = fn(self.relation), fn(self.has_edge), self.n_nodes
        return g


class _AttentionSpMM(torch.autograd.Function):
    """``P C`` with P = ``adj`` carrying the attention values (E,), differentiable in both.

    Forward and the C-gradient are the CSR SpMMs of :class:`~multikg4rec.nn.SparseAdjacency`;
    the value gradient ``dP_e = <dOut[h_e], C[t_e]>`` is one sampled dense-dense product
    (``torch.sparse.sampled_addmm``, an SDDMM over P's pattern) instead of a gather of the
    two (E, d) row sets (why: bench/results/propagation.md)."""

    @staticmethod
    def forward(ctx, values, C, adj: SparseAdjacency):
        ctx.adj = adj
        ctx.save_for_backward(values, C)
        return torch.sparse.mm(adj.csr(values), C)

    @staticmethod
    def backward(ctx, grad_out):
        values, C = ctx.saved_tensors
        adj = ctx.adj
        grad_out = grad_out.contiguous()
        grad_values = grad_C = None
        if ctx.needs_input_grad[1]:
            grad_C = torch.sparse.mm(adj.csr_t(values), grad_out)
        if ctx.needs_input_grad[0]:
            grad_values = torch.sparse.sampled_addmm(adj.csr(values), grad_out, C.T.contiguous(),
                                                     beta=0.0).values()
        return grad_values, grad_C, None


class MKGATLayer(nn.Module):
    """One multi-modal graph attention layer: propagation (attention over the triples
    of each head) + aggregation (``add`` or ``concat``), LeakyReLU, message dropout."""

    def __init__(self, in_dim: int, out_dim: int, rel_dim: int, aggregator: str = "concat",
                 dropout: float = 0.1, negative_slope: float = 0.2):
        super().__init__()
        if aggregator not in AGGREGATORS:
            raise UserError(f"mkgat: unknown aggregator {aggregator!r}; choose one of {', '.join(AGGREGATORS)}")
        self.in_dim, self.out_dim, self.rel_dim = in_dim, out_dim, rel_dim
        self.aggregator, self.negative_slope = aggregator, negative_slope
        self.W1 = nn.Parameter(torch.empty(out_dim, 2 * in_dim + rel_dim))    # e(h,r,t) = W_1 (e_h||e_r||e_t)
        self.w2 = nn.Parameter(torch.empty(out_dim, 1))                         # pi = LeakyReLU(w_2^T e(h,r,t))
        self.W_agg = nn.Linear(in_dim if aggregator == "add" else in_dim + out_dim, out_dim, bias=False)  # W_3 / W_4
        self.dropout = MessageDropout(dropout)
        for w in (self.W1, self.w2, self.W_agg.weight):
            nn.init.xavier_uniform_(w)

    def propagate(self, x: torch.Tensor, rel: torch.Tensor, graph: Graph) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, in_dim) node embeddings, rel: (R, rel_dim) -> e_agg (N, out_dim) and the
        normalised attention pi per triple (E,), CSR order of ``graph``."""
        d, o = self.in_dim, self.out_dim
        W_h, W_r, W_t = self.W1[:, :d], self.W1[:, d:d + self.rel_dim], self.W1[:, d + self.rel_dim:]
        AC = x @ torch.cat([W_h, W_t]).T                                   # (N, 2 out): W_h e_h | W_t e_t
        A, C = AC[:, :o], AC[:, o:]
        B = rel @ W_r.T                                                    # (R, out): W_r e_r
        a, b, c = (A @ self.w2).squeeze(-1), (B @ self.w2).squeeze(-1), (C @ self.w2).squeeze(-1)
        logit = F.leaky_relu(a[graph.head] + b[graph.relation] + c[graph.tail], self.negative_slope)
        att = segment_softmax(logit, graph.head, graph.n_nodes)          # softmax over the triples of h
        # per-relation attention sums (N, R), dense: R is small
        att_rel = att.new_zeros(graph.n_nodes, B.shape[0]).index_put((graph.head, graph.relation), att,
                                                                      accumulate=True)
        e_agg = (A * graph.has_edge[:, None].to(A.dtype)                  # sum_t pi W_h e_h (sum pi = 1, or 0)
                 + _AttentionSpMM.apply(att, C, graph.adj)                # sum_t pi W_t e_t
                 + att_rel @ B)                                           # sum_t pi W_r e_r
        return e_agg, att

    def forward(self, x: torch.Tensor, rel: torch.Tensor, graph: Graph) -> torch.Tensor:
        e_agg, _ = self.propagate(x, rel, graph)
        if self.aggregator == "add":
            out = self.W_agg(x) + e_agg                                   # W_3 e_h + e_agg
        else:
            out = self.W_agg(torch.cat([x, e_agg], 1))                    # W_4 (e_h || e_agg)
        return self.dropout(F.leaky_relu(out, self.negative_slope))


def transe_score(h: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """score(h, r, t) = || e_h + e_r - e_t ||_2^2 (lower = more plausible). (B, d) -> (B,)."""
    return (h + r - t).pow(2).sum(-1)


class MKGAT(Recommender):
    name = "mkgat"
    requires_kg = True
    uses_kg_loss = True
    uses_features = True

    def __init__(self, dataset, config, features=None):
        super().__init__(dataset, config)
        d = int(config["embedding_size"])
        self.reg_weight = float(config["reg_weight"])
        self.kg_reg_weight = float(config["kg_reg_weight"])
        self.kge_attention = bool(config["kge_attention"])
        modalities = [str(m) for m in (config["modalities"] or [])]
        if features is None and config.get("features") == "random":
            features = random_features(dataset, int(config.get("seed", 0)))
        if modalities and features is None:
            raise UserError("mkgat needs entity features (modalities " + ", ".join(modalities) + "); build a "
                            "feature store or set modalities: []")
        missing = [m for m in modalities if m not in (features or {})]
        if missing:
            raise UserError(f"mkgat: modalities {missing} not in the features (have {sorted(features)})")
        self.modalities = modalities
        n_ent, n_users = self.n_entities, self.n_users

        # ---- multi-modal entities: one per (entity, modality) with a feature
        owners, kinds = [], []
        self.encoders = nn.ModuleDict()
        for k, m in enumerate(modalities):
            x, mask = features[m]
            x, mask = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(mask, dtype=torch.bool)
            if x.shape[0] != n_ent or mask.shape[0] != n_ent:
                raise UserError(f"mkgat: {m} features have {x.shape[0]} rows, the dataset {n_ent} entities")
            own = torch.nonzero(mask).squeeze(1)
            self.register_buffer(f"feat_{m}", x[own].contiguous(), persistent=False)
            self.encoders[m] = nn.Linear(x.shape[1], d)                  # e_m = W_m x_m + b_m
            nn.init.xavier_uniform_(self.encoders[m].weight)
            nn.init.zeros_(self.encoders[m].bias)
            owners.append(own)
            kinds.append(torch.full_like(own, k))
        owner = torch.cat(owners) if owners else torch.zeros(0, dtype=torch.long)
        kind = torch.cat(kinds) if kinds else torch.zeros(0, dtype=torch.long)
        self.n_modal = int(owner.shape[0])
        self.n_mkg = n_ent + self.n_modal                                # MKG nodes: entities + modal
        self.n_nodes = self.n_mkg + n_users                              # + users
        modal_ids = torch.arange(n_ent, self.n_mkg)

        # ---- relations: CKG ids (with inverses), then has_<m> and its inverse
        ckg = dataset.ckg()
        R2 = ckg.n_relations                                             # 2 (n_relations + 1)
        self.n_rel = R2 + 2 * len(modalities)
        has_m = R2 + 2 * kind
        modal_edges = (torch.cat([owner, modal_ids]), torch.cat([has_m, has_m + 1]),
                       torch.cat([modal_ids, owner]))
        # CKG node ids: users n_ent + u -> n_mkg + u
        shift = lambda v: torch.where(v >= n_ent, v + self.n_modal, v)   # noqa: E731
        head = torch.cat([shift(ckg.head), modal_edges[0]])
        rel = torch.cat([ckg.relation, modal_edges[1]])
        tail = torch.cat([shift(ckg.tail), modal_edges[2]])
        self.graph = Graph(head, rel, tail, self.n_nodes, self.n_rel)
        # MKG triples (no users): KG triples + inverses, modal links + inverses
        R1 = R2 // 2
        kg = torch.from_numpy(dataset.kg)
        self.mkg_triples = torch.stack([
            torch.cat([kg[:, 0], kg[:, 2], modal_edges[0]]),
            torch.cat([kg[:, 1] + 1, kg[:, 1] + 1 + R1, modal_edges[1]]),
            torch.cat([kg[:, 2], kg[:, 0], modal_edges[2]])], 1)
        self.mkg_graph = Graph(self.mkg_triples[:, 0], self.mkg_triples[:, 1], self.mkg_triples[:, 2],
                               self.n_mkg, self.n_rel)

        # ---- parameters
        self.id_emb = nn.Embedding(n_ent + n_users, d)                   # structured entities, then users
        self.relation_emb = nn.Parameter(torch.empty(self.n_rel, d))
        nn.init.xavier_uniform_(self.id_emb.weight)
        nn.init.xavier_uniform_(self.relation_emb)
        agg, slope = str(config["aggregator"]).lower(), float(config["negative_slope"])
        dims = [d] + [int(x) for x in config["layers"]]
        drops = config["mess_dropout"]
        drops = list(drops) if isinstance(drops, (list, tuple)) else [float(drops)] * (len(dims) - 1)
        self.layers = nn.ModuleList(MKGATLayer(dims[k], dims[k + 1], d, agg, drops[k], slope)
                                    for k in range(len(dims) - 1))
        self.kg_layer = MKGATLayer(d, d, d, agg, 0.0, slope) if self.kge_attention else None

    # ---- entity encoder
    def ego(self) -> torch.Tensor:
        """(n_nodes, d) layer-0 embeddings: ID embeddings of entities, encoded features of the
        multi-modal entities, ID embeddings of users (node layout of the module docstring)."""
        w = self.id_emb.weight
        modal = [self.encoders[m](getattr(self, f"feat_{m}")) for m in self.modalities]
        return torch.cat([w[: self.n_entities], *modal, w[self.n_entities:]])

    # ---- recommendation module
    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final users (n_users, d_out) and items (n_items, d_out), d_out = d + sum(layers)."""
        x = self.ego()
        outs = [x]
        for layer in self.layers:
            x = layer(x, self.relation_emb, self.graph)
            outs.append(F.normalize(x, p=2, dim=1))
        out = torch.cat(outs, 1)                                          # e* = e^(0) || ... || e^(L)
        return out[self.n_mkg:], out[: self.n_items]

    def calculate_loss(self, batch):
        users, pos, neg = batch["users"], batch["pos_items"], batch["neg_items"]
        u_all, i_all = self.propagate()
        bpr = self.bpr(*self.batch_rows(u_all, i_all, batch))            # y(u, i) = e_u*^T e_i*
        w = self.id_emb.weight
        reg = self.l2_reg(w[users + self.n_entities], w[pos], w[neg])
        return bpr + self.reg_weight * reg

    # ---- knowledge-graph embedding module
    def kg_train_triples(self):
        return self.mkg_triples.cpu().numpy(), self.n_mkg

    def calculate_kg_loss(self, batch):
        x = self.ego()[: self.n_mkg]
        if self.kg_layer is not None:
            x = self.kg_layer(x, self.relation_emb, self.mkg_graph)
        h, t, t_neg = x[batch["heads"]], x[batch["pos_tails"]], x[batch["neg_tails"]]
        r = self.relation_emb[batch["relations"]]
        loss = -F.logsigmoid(transe_score(h, r, t_neg) - transe_score(h, r, t)).mean()  # L_KG
        return loss + self.kg_reg_weight * self.l2_reg(h, r, t, t_neg)

    # ---- evaluation
    def final_embeddings(self):
        return self.propagate()
