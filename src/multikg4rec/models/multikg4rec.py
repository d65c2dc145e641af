"""Multi-KG4Rec: multimodal fusion framework based on a knowledge graph.

Wang, Xie, Zhang, Qin, Tao, Wang, Xu, "Multimodal fusion framework based on knowledge graph for
personalized recommendation", ESWA 268 (2025) 126308. The full statement, with the equation numbers used
here, is docs/model.md. d = ``embedding_size``, N = ``seq_len``, L = len(``layers``), m a modality.

    §2 e^m_n = LeakyReLU(W_m x^m_n + b_m), x^m_n: (d_m,) -> (d,); a user u: x^m_u = the mean of its
       TRAIN items' x^m, plus ID^m[u]; a node without content: ID^m[n]; table E^m: (n_nodes, d)       (2)-(3)
       g(h, r, t) = || W_r e_h + e_r - W_r e_t ||^2 on E^m; L_KG = -ln σ(g(h, r, t') - g(h, r, t))    (4)-(5)
    §3 V, T = E^v[S_i], E^t[S_i]: (N, d), S_i a BFS walk over the CKG from item i                     (6)
       head_v^j = softmax(Q_v^j [K_v^j ; K_t^j]^T / sqrt(d_k)) [V_v^j ; V_t^j], same for t            (7)-(9)
       3 blocks LN(x + MHA), LN(x + FFN); z_i^m = output row 0 replaces row i of E^m: H^m_0           (10)-(11)
    §4 π(h, r, t) = (W_r e_t)^T tanh(W_r e_h + e_r), softmax over N_h; Bi-Interaction layers          (12)-(14)
    §5 e^{m*} = e^(0) || ê^(1) || ... || ê^(L): (d + sum(layers),); y(u, i) = Σ_m e_u^{m*T} e_i^{m*}  (16)-(17)
    §6 L_CF = -ln σ(y(u, i) - y(u, j)) + λ ||H_0[u, i, j]||^2 / 2, alternating with L_KG              (18)-(19)

Choices (config key: values, default first; docs/model.md, Options):

* ``modalities``: [image, text] | [text] (w/o v) | [image] (w/o t) | [] (w/o t&v: one ID table, KGAT-like).
* ``fusion``: bi | t2v | v2t (Table 4) | self (no cross-modal attention) | none (items keep E^m rows in (11)).
* ``item_id_embedding``: false (ID rows only without content, and users: (3)) | true (every item's projected
  row + ID^m[i], before the fusion) | fused (H^m_0[i] = z_i^m + ID^m[i]) | channel (a third, ID-only table
  with its own TransR, attention and propagation, joined in (17)).
* ``kg_loss_triples``: kg (the KG's triples + inverses, t' among entities) | ckg (every CKG triple, t'
  among all nodes, as KGAT's release).
* ``fusion_output_gain``: null (1/sqrt(d)) | a float: initial gain of the last LayerNorm, so fused rows
  start at the scale of the ID / projected rows beside them (why: bench/results/attention.md).
* ``fusion_items``: 256 | k | null: per CF step at most k of the batch's items are fused with gradients, the
  others' z come from a cache refreshed for the fused items each step and for all at each epoch end; null
  fuses all with gradients (why: bench/results/kg_epoch.md). Evaluation, the attention update and
  ``explain`` always fuse every item exactly.

Features: the model reads no files. The trainer builds ``{m: (x (n_entities, d_m) float, mask
(n_entities,) bool)}`` with ``multikg4rec.features.align_features`` (which applies docs/model.md §2.2's
other-modality fill) and calls ``MultiKG4Rec(dataset, config, features=...)``; ``features=None`` needs
``config["features"] == "random"`` (random L2-normalised rows of ``random_feature_dim``, 10% missing).
"""
from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from ..nn.fusion import MODES, BiTransformer, bfs_sequences
from ..nn import KGPropagation, SparseAdjacency, TransR
from .base import KnowledgeRecommender

log = logging.getLogger(__name__)

#: LeakyReLU slope of the modal projection (docs/model.md (2); same slope as the aggregators)
NEGATIVE_SLOPE = 0.2
#: items per chunk when fusing without gradients (bounds memory)
FUSE_CHUNK = 1024


def random_features(dataset, modalities, dim: int, seed: int, missing: float = 0.1):
    """Random stand-in features ``{m: (x (n_entities, dim), mask)}``: L2-normalised
    Gaussian rows (as CLIP's), a seeded ``missing`` fraction of rows without content."""
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for m in modalities:
        x = F.normalize(torch.randn(dataset.n_entities, dim, generator=g), dim=1)
        mask = torch.rand(dataset.n_entities, generator=g) >= missing
        out[m] = (x * mask[:, None], mask)
    return out


class MultiKG4Rec(KnowledgeRecommender):
    """Multi-KG4Rec (docs/model.md §2-§6). ``MultiKG4Rec(dataset, config, features=None)``.

    Args:
        dataset: a :class:`~multikg4rec.data.Dataset` with a KG.
        config: the merged run config (keys of configs/model/multikg4rec.yaml).
        features: ``{modality: (x, mask)}``, ``x`` (n_entities, d_m) float, ``mask``
            (n_entities,) bool (True = the row holds content), for every name in
            ``config["modalities"]``; rows aligned to dataset entity ids. None is
            accepted only with ``config["features"] == "random"`` or no modalities.
    """

    name = "multikg4rec"
    uses_features = True

    def __init__(self, dataset, config, features=None, sequences=None):
        super().__init__(dataset, config)
        d = self.d = int(config["embedding_size"])
        self.reg_weight = float(config["reg_weight"])
        self.kg_reg_weight = float(config["kg_reg_weight"])
        item_id = config.get("item_id_embedding", False)
        if item_id not in (False, True, None, "fused", "channel"):
            raise UserError(f"item_id_embedding: {item_id!r} is not one of false, true, fused, channel")
        self.item_id_embedding = item_id is True                              # ID row in the pre-fusion tables
        self.item_id_fused = item_id == "fused"                               # ID row added to the fused row
        self.modalities = [str(m) for m in (config["modalities"] or [])]
        if "id" in self.modalities:
            raise UserError("modalities: 'id' is the name of the ID-only table; rename that modality")
        #: one propagated table per modality; "id": ID rows only (w/o t&v, or beside them: item_id_embedding channel)
        self.tables = list(self.modalities) + (["id"] if item_id == "channel" or not self.modalities else [])
        fusion = str(config["fusion"]).lower()
        if fusion not in MODES:
            raise UserError(f"fusion: {fusion!r} is not one of {', '.join(MODES)}")
        self.fusion_mode = fusion
        self.fusion_items = None if config["fusion_items"] in (None, 0) else int(config["fusion_items"])
        ckg = dataset.ckg()
        self.n_nodes = ckg.n_nodes

        # ---- §2 Embedding module
        features = self._resolve_features(features, dataset, config)
        self.proj = nn.ModuleDict()
        for m in self.modalities:
            x, mask = features[m]
            self._register_content(m, x, mask, dataset)
            self.proj[m] = nn.Linear(x.shape[1], d)                          # W_m, b_m of Equation (2)
            nn.init.xavier_uniform_(self.proj[m].weight)
            nn.init.zeros_(self.proj[m].bias)
        self.id_emb = nn.ModuleDict({t: nn.Embedding(self.n_nodes, d) for t in self.tables})
        for emb in self.id_emb.values():
            nn.init.xavier_uniform_(emb.weight)
        self.transr = nn.ModuleDict({t: TransR(ckg.n_relations, d, int(config["kg_embedding_size"]))
                                     for t in self.tables})

        # ---- §3 Multimodal fusion module
        self.use_fusion = bool(self.modalities) and fusion != "none"
        if self.use_fusion:
            gain = config.get("fusion_output_gain")
            gain = d ** -0.5 if gain is None else float(gain)                # docs/model.md §3.3
            self.fusion = BiTransformer(self.modalities, d, int(config["fusion_heads"]), int(config["fusion_blocks"]),
                                        fusion, int(config["fusion_ffn_dim"]), float(config["fusion_dropout"]), gain)
            if sequences is None:
                seq, seq_mask = bfs_sequences(ckg, np.arange(self.n_items), int(config["seq_len"]),
                                              seed=int(config.get("seed") or 0))
            else:                                                            # given (fold-in: fold_in_inputs)
                seq, seq_mask = sequences
            self.register_buffer("seq", seq, persistent=False)               # (n_items, N) CKG node ids
            self.register_buffer("seq_mask", seq_mask, persistent=False)     # (n_items, N) True = real node
            self.register_buffer("fused_cache", torch.zeros(len(self.modalities), self.n_items, d), persistent=False)
            self._cache_ok = False
            self._exact = None                       # (parameter key, {m: (n_items, d)}): see exact_fused

        # ---- §4 Information propagation module (one per modality; shared graph structure)
        self.propagation = nn.ModuleDict({t: KGPropagation(d, config["layers"], config["aggregator"],
                                                           config["mess_dropout"]) for t in self.tables})
        self.init_attention(self.tables)                                  # buffers att_<table>, uniform

    # ------------------------------------------------------------------ §2 embedding module
    def _resolve_features(self, features, dataset, config) -> dict:
        if not self.modalities:
            return {}
        if features is None:
            if config.get("features") != "random":
                raise UserError("multikg4rec needs modal features: build them with `multikg4rec features build` "
                                "(the trainer passes them as MultiKG4Rec(dataset, config, features=...)), or set "
                                "features: random for a smoke run, or modalities: [] for the ID-only ablation")
            features = random_features(dataset, self.modalities, int(config["random_feature_dim"]),
                                       int(config.get("seed") or 0))
        missing = [m for m in self.modalities if m not in features]
        if missing:
            raise UserError(f"modalities {missing} have no features (available: {sorted(features)}); "
                            f"set modalities: to a subset of those")
        out = {}
        for m in self.modalities:
            x, mask = features[m]
            x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32)
            mask = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).bool().reshape(-1)
            if x.dim() != 2 or x.shape[0] != dataset.n_entities or mask.shape[0] != dataset.n_entities:
                raise UserError(f"features[{m!r}]: expected ({dataset.n_entities}, d) features and a "
                                f"({dataset.n_entities},) mask aligned to the dataset's entities, got "
                                f"{tuple(x.shape)} and {tuple(mask.shape)}")
            out[m] = (x, mask)
        return out

    def _register_content(self, m: str, x: torch.Tensor, mask: torch.Tensor, dataset) -> None:
        """Raw content of every CKG node for modality m (entities, then users = mean of
        their train items' features, docs/model.md §2), kept compact: only rows with content."""
        from ..features.align import user_mean_features
        xu, mu = user_mean_features(dataset, x, mask)
        has = torch.cat([mask, mu])                                          # (n_nodes,)
        content_idx = has.nonzero().squeeze(1)
        row_of = torch.full((self.n_nodes,), -1, dtype=torch.long)
        row_of[content_idx] = torch.arange(content_idx.shape[0])
        raw = torch.cat([x, xu])[content_idx]
        # ID embedding where an entity has no content; every user also gets its ID embedding;
        # with item_id_embedding every item too (content + ID, like users)
        use_id = torch.cat([~mask, torch.ones(self.n_users, dtype=torch.bool)])
        if self.item_id_embedding:
            use_id[: self.n_items] = True
        self.register_buffer(f"raw_{m}", raw.contiguous(), persistent=False)       # (n_content, d_m)
        # A user's row projects the mean of its items' features; the projection is affine, so over the whole
        # table that is the mean of the items' projected rows (pre-activation): W (sum_i a_ui x_i) + b =
        # sum_i a_ui (W x_i + b) with sum_i a_ui = 1. One (users x content entities) SpMM on 64-d rows
        # replaces projecting every user's d_m-d mean (ml-1m: 6,040 x 1,280 image and 384 text features).
        # Raw rows: entities with content in node order (so items with content first), then users.
        items_c = np.flatnonzero(mask[: self.n_items].numpy())                   # = their raw rows 0..k-1
        A = dataset.train_csr.astype(np.float32)[mu.numpy()][:, items_c]         # users with content x items
        A = sp.diags(1.0 / np.asarray(A.sum(axis=1)).ravel()) @ A                # row means
        A.resize(A.shape[0], int(mask.sum()))                                    # columns: all entity raw rows
        setattr(self, f"user_mean_{m}", SparseAdjacency.from_scipy(A))
        self.register_buffer(f"cidx_{m}", content_idx, persistent=False)            # node of each raw row
        self.register_buffer(f"crow_{m}", row_of, persistent=False)                 # raw row of each node / -1
        self.register_buffer(f"idw_{m}", use_id.float()[:, None], persistent=False)  # (n_nodes, 1)
        log.info("multikg4rec %s: %d of %d entities and %d of %d users have content", m, int(mask.sum()),
                 mask.shape[0], int(mu.sum()), self.n_users)

    def _embed(self, m: str, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.proj[m](x), NEGATIVE_SLOPE)                  # Equation (2)

    def pre_tables(self, tables: list[str] | None = None) -> dict[str, torch.Tensor]:
        """The 64-d table of every modality before fusion: dict t -> (n_nodes, d)."""
        out = {}
        for t in tables or self.tables:
            if t not in self.modalities:                                       # w/o t&v: ID embeddings only
                out[t] = self.id_emb[t].weight
                continue
            tab = self.id_emb[t].weight * getattr(self, f"idw_{t}")            # ID rows (no content / users)
            mean = getattr(self, f"user_mean_{t}")
            pre_e = self.proj[t](getattr(self, f"raw_{t}")[: mean.shape[1]])   # W_m x + b_m, entities
            pre = torch.cat([pre_e, mean.matmul(pre_e)])                       # users: Equation (3)
            out[t] = tab.index_add(0, getattr(self, f"cidx_{t}"), F.leaky_relu(pre, NEGATIVE_SLOPE))
        return out

    def node_rows(self, t: str, nodes: torch.Tensor) -> torch.Tensor:
        """Rows ``nodes`` of the pre-fusion table t, computed for those nodes only: (B, d)."""
        e = self.id_emb[t](nodes)
        if t in self.modalities:
            e = e * getattr(self, f"idw_{t}")[nodes]
            row = getattr(self, f"crow_{t}")[nodes]
            has = row >= 0
            if has.any():
                e = e.index_add(0, has.nonzero().squeeze(1), self._embed(t, getattr(self, f"raw_{t}")[row[has]]))
        return e

    def table_rows(self, t: str, nodes: torch.Tensor) -> torch.Tensor:
        """Rows ``nodes`` of the pre-fusion table t, in one gather (one (n_nodes, d) gradient
        buffer in the backward). The modal projection runs once per node with content: over
        the whole table when the batch touches more rows than there are content rows, else
        over the batch only."""
        if t not in self.modalities or nodes.shape[0] >= getattr(self, f"raw_{t}").shape[0]:
            return self.pre_tables([t])[t].index_select(0, nodes)
        return self.node_rows(t, nodes)

    def calculate_kg_loss(self, batch):
        """TransR on each modality's 64-d table (docs/model.md (4)-(5)), summed over modalities:
        g(h, r, t) = || W_r e_h + e_r - W_r e_t ||^2, L_KG = -ln sigma( g(h, r, t') - g(h, r, t) )."""
        self._forget_fused()                                                  # the step will change parameters
        hrt = torch.stack([batch["heads"], batch["pos_tails"], batch["neg_tails"]], 1)       # (B, 3)
        loss = 0.0
        for t in self.tables:
            rows = self.table_rows(t, hrt.view(-1)).view(*hrt.shape, -1)         # [e_h, e_t, e_t'] (B, 3, d)
            loss = loss + self.transr[t].triple_loss(rows, batch["relations"], self.kg_reg_weight)  # Equation (5)
        return loss

    # ------------------------------------------------------------------ §3 fusion module
    def fuse(self, pre: dict[str, torch.Tensor], items: torch.Tensor | None = None,
             need_weights: bool = False):
        """Fused item features z_i^m over the BFS sequences S_i (docs/model.md (6)-(11)).
        pre: pre-fusion tables; items: (k,) item ids (all by default) -> dict m -> (k, d)."""
        seq = self.seq if items is None else self.seq[items]
        mask = self.seq_mask if items is None else self.seq_mask[items]
        x = {m: pre[m][seq] for m in self.modalities}                         # Equation (6): V, T (k, N, d)
        return self.fusion(x, mask, need_weights=need_weights)

    @torch.no_grad()
    def _fuse_all_nograd(self, pre, start: int = 0, prior: dict | None = None) -> dict[str, torch.Tensor]:
        """Every item fused without dropout, in chunks of FUSE_CHUNK items; with ``prior``, rows below
        ``start`` (a multiple of FUSE_CHUNK) are taken from it and only the chunks from ``start`` on run."""
        was = self.fusion.training
        self.fusion.eval()
        parts = [self.fuse(pre, torch.arange(s, min(s + FUSE_CHUNK, self.n_items), device=self.seq.device))
                 for s in range(start, self.n_items, FUSE_CHUNK)]
        self.fusion.train(was)
        z = {m: torch.cat(([prior[m][:start]] if start else []) + [p[m] for p in parts]) for m in self.modalities}
        for k, m in enumerate(self.modalities):
            self.fused_cache[k].copy_(z[m])
        self._cache_ok = True
        return z

    def _param_key(self) -> tuple:
        """What the fused rows depend on, as (storage, version) pairs. Fused Adam updates parameters without
        bumping their version, so every training loss also drops the cache (``_forget_fused``)."""
        return tuple((p.data_ptr(), p._version) for p in [*self.parameters(), self.seq, self.seq_mask])

    def _forget_fused(self) -> None:
        if self.use_fusion:
            self._exact = None

    @torch.no_grad()
    def exact_fused(self, pre: dict | None = None) -> dict[str, torch.Tensor]:
        """Every item fused exactly (``_fuse_all_nograd``), computed once while the parameters are unchanged:
        the attention update and the evaluation after it share one pass. ``pre``: ``pre_tables()`` of the
        same parameters (computed when needed and not given)."""
        key = self._param_key()
        if self._exact is None or self._exact[0] != key:
            self._exact = (key, self._fuse_all_nograd(self.pre_tables() if pre is None else pre))
        return self._exact[1]

    # ------------------------------------------------------------------ fold-in (multikg4rec.foldin)
    def fold_in_inputs(self, g) -> dict:
        """Constructor inputs of this model grown by ``g`` (a ``foldin.Grown``): the trained items keep the
        BFS sequences they were trained with (node ids moved to the grown graph), so an added item never
        changes another item's fused row; the new items' sequences are sampled over the grown CKG."""
        if not self.use_fusion:
            return {}
        node_map = torch.from_numpy(g.node_map)
        seq, mask = node_map[self.seq], self.seq_mask
        if len(g.new_items):
            s, m = bfs_sequences(g.dataset.ckg(), g.new_items, self.seq.shape[1], seed=int(self.config.get("seed") or 0))
            seq, mask = torch.cat([seq, s]), torch.cat([mask, m])
        return {"sequences": (seq, mask)}

    def fold_in_ready(self) -> None:
        """What ``adopt`` reads from this trained model, computed now (the server does it at start)."""
        if self.use_fusion:
            self.exact_fused()

    @torch.no_grad()
    def adopt(self, trained, g) -> None:
        """Fold-in, after the trained weights are loaded: the trained items' inputs to the fusion are
        unchanged, so their complete FUSE_CHUNK chunks of fused rows are ``trained``'s and only the chunks
        from the first new item on are fused here; chunk by chunk that is what fusing every item gives."""
        if not self.use_fusion:
            return
        start = (trained.n_items // FUSE_CHUNK) * FUSE_CHUNK
        z = self._fuse_all_nograd(self.pre_tables(), start, trained.exact_fused())
        self._exact = (self._param_key(), z)

    def _fused_items(self, pre, items: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Fused rows of all items for one training step (see ``fusion_items``); without gradients in eval
        mode, the exact rows (``exact_fused``)."""
        if not self.training and not torch.is_grad_enabled():
            return self.exact_fused(pre)
        if self.fusion_items is None or not self.training:
            return self.fuse(pre)
        if not self._cache_ok:
            self._fuse_all_nograd({t: v.detach() for t, v in pre.items()})
        idx = torch.unique(items) if items is not None else torch.arange(self.n_items, device=self.seq.device)
        if idx.shape[0] > self.fusion_items:
            idx = idx[torch.randperm(idx.shape[0], device=idx.device)[: self.fusion_items]]
        fresh = self.fuse(pre, idx)
        out = {}
        for k, m in enumerate(self.modalities):
            out[m] = self.fused_cache[k].index_put((idx,), fresh[m])          # fresh rows carry gradients
            self.fused_cache[k, idx] = fresh[m].detach()
        return out

    def layer0(self, pre, fused) -> dict[str, torch.Tensor]:
        """Propagation input H^m_0 (docs/model.md (11)): item rows replaced by their fused features."""
        if not self.use_fusion:
            return pre
        if self.item_id_fused:                                                # z_i^m + ID_i^m (choice, see above)
            fused = {m: fused[m] + self.id_emb[m].weight[: self.n_items] for m in self.modalities}
        return {t: torch.cat([fused[t], pre[t][self.n_items:]]) if t in fused else pre[t] for t in self.tables}

    # ------------------------------------------------------------------ §4 propagation
    @torch.no_grad()
    def attention_inputs(self) -> dict:
        """Each table's layer-0 rows (fused item rows, exact) and its TransR."""
        l0 = self.exact_layer0()
        return {t: (l0[t], self.transr[t]) for t in self.tables}

    @torch.no_grad()
    def update_attention(self) -> None:
        """Recompute pi(h, r, t) and its per-head softmax per table (docs/model.md (12)-(13)) from the
        current layer-0 tables (fused item rows) and TransR parameters."""
        inputs = self.attention_inputs()
        super().update_attention(inputs)
        self._diag = self._state_summary({t: x for t, (x, _) in inputs.items()})

    @torch.no_grad()
    def exact_layer0(self) -> dict[str, torch.Tensor]:
        """Layer-0 tables with every item fused exactly (``exact_fused``): dict t -> (n_nodes, d)."""
        pre = self.pre_tables()
        return self.layer0(pre, self.exact_fused(pre) if self.use_fusion else None)

    @torch.no_grad()
    def _state_summary(self, l0) -> dict:
        """Per table: users' mean largest attention weight (uniform would be the mean
        1/degree), and the mean norm of the layer-0 rows of items and users."""
        head = self.attention.structure.row
        users = head >= self.n_entities
        out = {}
        for t in self.tables:
            att = getattr(self, f"att_{t}")
            top = att.new_zeros(self.n_nodes).scatter_reduce(0, head[users], att[users], "amax", include_self=False)
            norms = l0[t].norm(dim=1)
            out[t] = {"user_max_att": round(float(top[self.n_entities:].mean()), 4),
                      "item_norm": round(float(norms[: self.n_items].mean()), 4),
                      "user_norm": round(float(norms[self.n_entities:].mean()), 4)}
        return out

    def diagnostics(self) -> dict:
        return getattr(self, "_diag", {})

    def _final(self, items: torch.Tensor | None = None):
        """e* of every item and user (docs/model.md (16)-(17)): (n_items + n_users, D), items first, with
        D = len(tables) * (d + sum(layers)); and the layer-0 tables (for the L2 term)."""
        pre = self.pre_tables()
        fused = self._fused_items(pre, items) if self.use_fusion else None
        l0 = self.layer0(pre, fused)
        outs = [e for t in self.tables                                         # Equations (13)-(16) per table
                for e in self.propagation[t](l0[t], self.adjacency(t), rows=self.ui_rows, return_layers=True)]
        return torch.cat(outs, dim=1), l0                                     # Equation (17): e* = e^{v*} || e^{t*}

    def propagate(self, items: torch.Tensor | None = None):
        """Final embeddings (docs/model.md §5): users (n_users, D), items (n_items, D); and the layer-0 tables."""
        out, l0 = self._final(items)
        return out[self.n_items:], out[: self.n_items], l0

    # ------------------------------------------------------------------ §5-§6 prediction and loss
    def calculate_loss(self, batch):
        self._forget_fused()                                                  # the step will change parameters
        out, l0 = self._final(torch.cat([batch["pos_items"], batch["neg_items"]]))
        bpr, reg = self.propagated_bpr(out, batch, [l0[t] for t in self.tables])  # Equations (17)-(18)
        return bpr + self.reg_weight * reg                                    # Equation (18): + lambda ||H_0||^2

    def prepare_eval(self) -> None:
        with torch.no_grad():
            u, i, _ = self.propagate()
            self._eval_cache = (u, i)

    def full_sort_predict(self, users):
        if self._eval_cache is None:
            self.prepare_eval()
        u, i = self._eval_cache
        return u[users] @ i.T                                                 # Equation (17)
