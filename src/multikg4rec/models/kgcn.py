"""KGCN: Knowledge Graph Convolutional Networks.

Wang, Zhao, Xie, Li, Guo, "Knowledge Graph Convolutional Networks for Recommender
Systems", WWW 2019. With u the user, v an entity, r_{v,e} the relation between v
and its neighbour e, S(v) a FIXED-size sample of v's neighbours and sigma/act the
aggregator's non-linearity:

    pi^u_r = g(u, r) = u^T r                                   (user-relation score)
    pi~^u_{r_{v,e}} = exp(pi^u_{r_{v,e}}) / sum_{e' in S(v)} exp(pi^u_{r_{v,e'}})
    v^u_{S(v)} = sum_{e in S(v)} pi~^u_{r_{v,e}} e             (user-specific neighbourhood)
    sum:       agg = act( W (v + v^u_{S(v)}) + b )
    concat:    agg = act( W (v || v^u_{S(v)}) + b )
    neighbor:  agg = act( W v^u_{S(v)} + b )
    H iterations (n_iter): iteration h updates every node of the receptive-field
    tree that is at most H-1-h hops from the item, from its children's vectors of
    iteration h-1; act = ReLU, tanh at the last iteration.
    y(u, v) = f( u^T v^u ),  f = sigmoid

Choices (the paper and the authors' release, hwwang55/KGCN, where they differ):

* Neighbour sampling is vectorised and done ONCE (as the release's
  ``construct_adj``): a ``(n_entities, K)`` table of neighbour entities and
  relations, seeded by ``seed``; an entity with >= K neighbours gets K distinct
  ones, one with fewer gets K draws with replacement. The KG is undirected (each
  triple links both ways with the same relation id, as the release). An entity
  with NO neighbour (an item not linked to the KG) gets K self-loops through an
  extra relation ``self`` (id ``n_relations``); the release has no such entities.
* ``scaling``: ``paper`` takes ``g(u, r)`` as the inner product and
  ``v^u_{S(v)}`` as the softmax-weighted sum (the equations above); ``release``
  follows the authors' code: ``g`` is the MEAN over dimensions (inner product / d,
  a softer softmax) and the weighted neighbours are averaged (sum / K). Compared
  with RecBole's KGCN (which follows the release): bench/results/recbole_ml-100k.md.
* Loss ``loss_type``: ``bce`` (default, the paper: cross-entropy on the observed
  pair and one sampled negative, i.e. the trainer's BPR batch read as two labelled
  pairs) or ``bpr`` (the trainer's pairwise -ln sigma(y_ui - y_uj)).
* L2 (``reg_weight``): on the batch's user and item (ego) embeddings, averaged as
  the other models (the release regularises every parameter table in full;
  with the paper's lambda = 1e-7 the difference is immaterial).
* No dropout (the release's default keep-probability is 1).
* Defaults (``configs/model/kgcn.yaml``): the paper's MovieLens-20M setting
  (K = 4, H = 2, d = 32, lambda = 1e-7, aggregator sum), except the learning rate
  and batch: the paper's lr 2e-2 at batch 65,536 would be a few Adam steps per
  epoch on our data, so the batch is the protocol's 2048 and lr 5e-3 comes from
  the Multi-KG4Rec search grid (docs/model.md §6).

Full ranking (``full_sort_predict``) is user-dependent at every node of every
item's tree, so it is computed per batch of users over the DEDUPLICATED node
set of each tree level: the vector of node e at iteration h depends only on
(user, e), so it is computed once per user for all items sharing e. At the first
iteration the input vectors do not depend on the user, so by linearity
``W (v + sum_e a_e e) = W v + sum_e a_e (W e)`` the products ``W e`` are computed
once per entity; only the last iteration(s) pay a d x d product per (user, node).
``score_pairs`` (training) walks the sampled trees per (user, item) pair, as the
release; the two agree exactly (tests/test_baselines.py).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from .base import Recommender

AGGREGATORS = ("sum", "concat", "neighbor")


def sample_neighbors(kg: np.ndarray, n_entities: int, n_relations: int, k: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The fixed (n_entities, k) neighbour table of KGCN, vectorised (no loop over entities).

    ``kg``: (n, 3) (head, relation, tail); the graph is taken as undirected. Returns
    ``adj_entity``, ``adj_relation`` (int64, (n_entities, k)). Entities with >= k
    neighbours: k distinct neighbours; with 1..k-1: k uniform draws with replacement;
    with none: k self-loops under relation ``n_relations``.
    """
    h, r, t = kg[:, 0], kg[:, 1], kg[:, 2]
    src = np.concatenate([h, t])
    dst = np.concatenate([t, h])
    rel = np.concatenate([r, r])
    # edges grouped by source, in random order within each group
    order = np.lexsort((rng.random(len(src)), src))
    dst, rel = dst[order], rel[order]
    deg = np.bincount(src, minlength=n_entities)
    start = np.concatenate([[0], np.cumsum(deg)[:-1]])
    slot = np.arange(k)[None, :]
    # >= k neighbours: the first k of the shuffled group (without replacement)
    # 1..k-1 neighbours: uniform offsets (with replacement)
    offset = np.where(deg[:, None] >= k, slot,
                      np.floor(rng.random((n_entities, k)) * np.maximum(deg, 1)[:, None]).astype(np.int64))
    idx = np.minimum(start[:, None] + offset, max(len(dst) - 1, 0))
    isolated = deg == 0
    adj_entity = np.where(isolated[:, None], np.arange(n_entities)[:, None], dst[idx] if len(dst) else 0)
    adj_relation = np.where(isolated[:, None], n_relations, rel[idx] if len(rel) else 0)
    return adj_entity.astype(np.int64), adj_relation.astype(np.int64)


class _Aggregator(nn.Module):
    """One KGCN aggregator (sum / concat / neighbor), ``act`` = ReLU or tanh."""

    def __init__(self, dim: int, kind: str, act):
        super().__init__()
        self.kind, self.dim, self.act = kind, dim, act
        self.linear = nn.Linear(2 * dim if kind == "concat" else dim, dim)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, v: torch.Tensor, v_neigh: torch.Tensor) -> torch.Tensor:
        """v, v_neigh: (..., d) = v and v^u_{S(v)} -> (..., d)."""
        if self.kind == "sum":
            return self.act(self.linear(v + v_neigh))
        if self.kind == "concat":
            return self.act(self.linear(torch.cat([v, v_neigh], -1)))
        return self.act(self.linear(v_neigh))

    def split_weights(self):
        """(W_self or None, W_neigh, b) with ``pre-activation = W_self v + W_neigh v_neigh + b``."""
        w, d = self.linear.weight, self.dim
        if self.kind == "sum":
            return w, w, self.linear.bias
        if self.kind == "concat":
            return w[:, :d], w[:, d:], self.linear.bias
        return None, w, self.linear.bias


class KGCN(Recommender):
    name = "kgcn"
    requires_kg = True

    #: budget (floats) of one (nodes x users x d) block in full_sort_predict
    EVAL_BLOCK = 1 << 21

    def __init__(self, dataset, config):
        super().__init__(dataset, config)
        d = int(config["embedding_size"])
        self.dim = d
        self.n_neighbors = int(config["neighbor_sample_size"])
        self.n_iter = int(config["n_iter"])
        self.reg_weight = float(config["reg_weight"])
        self.loss_type = str(config["loss_type"]).lower()
        scaling = str(config.get("scaling", "paper")).lower()
        if scaling not in ("paper", "release"):
            raise UserError(f"kgcn: scaling must be paper or release, got {scaling!r}")
        # softmax temperature of g(u, r) and weight of the neighbourhood sum (see the module docstring)
        self.pi_scale, self.neigh_scale = (1.0, 1.0) if scaling == "paper" else (1.0 / d, 1.0 / self.n_neighbors)
        kind = str(config["aggregator"]).lower()
        if kind not in AGGREGATORS:
            raise UserError(f"kgcn: unknown aggregator {kind!r}; choose one of {', '.join(AGGREGATORS)}")
        if self.loss_type not in ("bce", "bpr"):
            raise UserError(f"kgcn: loss_type must be bce or bpr, not {self.loss_type!r}")
        if self.n_iter < 1 or self.n_neighbors < 1:
            raise UserError("kgcn: n_iter and neighbor_sample_size must be >= 1")
        self.user_emb = nn.Embedding(self.n_users, d)
        self.entity_emb = nn.Embedding(self.n_entities, d)
        self.relation_emb = nn.Embedding(self.n_relations + 1, d)   # + "self" for isolated entities
        for emb in (self.user_emb, self.entity_emb, self.relation_emb):
            nn.init.xavier_uniform_(emb.weight)
        self.aggregators = nn.ModuleList(
            _Aggregator(d, kind, torch.tanh if i == self.n_iter - 1 else F.relu) for i in range(self.n_iter))
        adj_e, adj_r = sample_neighbors(dataset.kg, self.n_entities, self.n_relations, self.n_neighbors,
                                        np.random.default_rng(int(config.get("seed", 2024))))
        self.register_buffer("adj_entity", torch.from_numpy(adj_e))
        self.register_buffer("adj_relation", torch.from_numpy(adj_r))

    # ---------------------------------------------------------------- per pair (training)
    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """y(u, v) before the sigmoid for each (users[b], items[b]) -> (B,), walking
        each item's sampled tree (entities (B, K^h) at hop h)."""
        B, K, d = users.shape[0], self.n_neighbors, self.dim
        u = self.user_emb(users)                                        # (B, d)
        rel_score = u @ self.relation_emb.weight.T                      # (B, R+1): pi^u_r = u^T r
        entities, relations = [items[:, None]], []
        for _ in range(self.n_iter):
            relations.append(self.adj_relation[entities[-1]].reshape(B, -1))
            entities.append(self.adj_entity[entities[-1]].reshape(B, -1))
        vectors = [self.entity_emb(e) for e in entities]                # (B, K^h, d)
        for i, agg in enumerate(self.aggregators):
            nxt = []
            for hop in range(self.n_iter - i):
                pi = rel_score.gather(1, relations[hop]).view(B, -1, K)  # (B, K^hop, K)
                w = torch.softmax(pi * self.pi_scale, dim=-1) * self.neigh_scale  # pi~^u_{r_{v,e}}
                neigh = (w.unsqueeze(-1) * vectors[hop + 1].view(B, -1, K, d)).sum(2)  # v^u_{S(v)}
                nxt.append(agg(vectors[hop], neigh))
            vectors = nxt
        return (u * vectors[0].squeeze(1)).sum(-1)                      # u^T v^u

    def calculate_loss(self, batch):
        users, pos, neg = batch["users"], batch["pos_items"], batch["neg_items"]
        y_pos, y_neg = self.score_pairs(users, pos), self.score_pairs(users, neg)
        if self.loss_type == "bce":   # the paper: cross-entropy, label 1 for (u, i), 0 for (u, j)
            loss = 0.5 * (F.softplus(-y_pos).mean() + F.softplus(y_neg).mean())
        else:
            loss = -F.logsigmoid(y_pos - y_neg).mean()
        reg = self.l2_reg(self.user_emb(users), self.entity_emb(pos), self.entity_emb(neg))
        return loss + self.reg_weight * reg

    # ---------------------------------------------------------------- full ranking
    def _tree_levels(self):
        """Node sets N_j (sorted unique entities within j hops of an item in the sampled
        trees, N_0 = items) and, for each j < H, the positions in N_{j+1} of N_j's own
        rows and of their K neighbours, plus the neighbours' relations."""
        adj = self.adj_entity
        sets = [torch.arange(self.n_items, device=adj.device)]
        for _ in range(self.n_iter - 1):
            sets.append(torch.unique(torch.cat([sets[-1], adj[sets[-1]].reshape(-1)])))
        levels = []
        for j in range(self.n_iter - 1):
            nodes, parent = sets[j], sets[j + 1]
            levels.append((nodes, torch.searchsorted(parent, nodes),
                           torch.searchsorted(parent, adj[nodes]), self.adj_relation[nodes]))
        top = sets[-1]
        levels.append((top, None, None, self.adj_relation[top]))
        return levels

    def prepare_eval(self):
        self._eval_cache = self._tree_levels()

    def scoring_rows(self):
        return None                                        # user-specific aggregation: no inner-product rows

    def _first_iteration_terms(self, levels):
        """The user-independent parts of iteration 0 on N_{H-1}: ``W_self v + b``
        (n, 1, d) and the neighbours' ``W e`` (n, K, d), computed once per evaluation."""
        E = self.entity_emb.weight
        nodes = levels[-1][0]
        w_self, w_neigh, bias = self.aggregators[0].split_weights()
        self_term = bias.expand(len(nodes), -1) if w_self is None else torch.addmm(bias, E[nodes], w_self.T)
        return self_term.unsqueeze(1), (E @ w_neigh.T)[self.adj_entity[nodes]]

    def _score_all_items(self, users: torch.Tensor, levels, first) -> torch.Tensor:
        """(len(users), n_items) scores. Blocks are node-major, (n_nodes, n_users, d), and
        the attention (n_nodes, K, n_users), so every gather moves contiguous rows and the
        softmax over K runs vectorised over users. ``first``: :meth:`_first_iteration_terms`."""
        u = self.user_emb(users)                                        # (b, d)
        rel_score_t = (u @ self.relation_emb.weight.T).T.contiguous()   # (R+1, b): pi^u_r = u^T r
        K = self.n_neighbors
        # iteration 0 on N_{H-1}: inputs are user-independent -> W e once per entity
        rels = levels[-1][3]
        self_term, w_e = first                                          # W_self v + b: (n, 1, d); W e: (n, K, d)
        w = torch.softmax(rel_score_t[rels] * self.pi_scale, dim=1) * self.neigh_scale  # (n, K, b): pi~^u_{r_{v,e}}
        pre = self_term.expand(-1, len(users), -1).clone()
        for k in range(K):                                              # + sum_e a_e W e (an (n, b, K) x (n, K, d)
            pre.addcmul_(w[:, k, :, None], w_e[:, k, None, :])          # bmm is slow: n tiny matrices)
        vec = self.aggregators[0].act(pre)                              # (n, b, d)
        # iterations 1..H-1 on N_{H-1-i}: user-dependent inputs
        for i in range(1, self.n_iter):
            agg = self.aggregators[i]
            nodes, self_pos, neigh_pos, rels = levels[self.n_iter - 1 - i]
            w = torch.softmax(rel_score_t[rels] * self.pi_scale, dim=1) * self.neigh_scale  # (n, K, b)
            neigh = w[:, 0, :, None] * vec[neigh_pos[:, 0]]
            for k in range(1, K):                                       # v^u_{S(v)} = sum_e a_e e
                neigh.addcmul_(w[:, k, :, None], vec[neigh_pos[:, k]])
            vec = agg(vec[self_pos], neigh)
        return torch.einsum("nbd,bd->bn", vec, u)                      # u^T v^u

    def full_sort_predict(self, users):
        if self._eval_cache is None:
            self.prepare_eval()
        levels = self._eval_cache
        per_user = max(int(lv[0].shape[0]) for lv in levels) * self.dim * self.n_neighbors
        step = max(1, self.EVAL_BLOCK // per_user)
        first = self._first_iteration_terms(levels)
        # written block by block into one preallocated matrix: keeping each block's small result alive
        # between the blocks' large temporaries fragments the heap so glibc cannot reuse it
        # (why: bench/results/kgcn_eval.md)
        out = torch.empty(len(users), self.n_items, dtype=first[1].dtype, device=first[1].device)
        for s in range(0, len(users), step):
            out[s:s + step] = self._score_all_items(users[s:s + step], levels, first)
        return out
