"""The contract every model implements, so the trainer and the evaluator never
special-case a model (after RecBole's ``AbstractRecommender`` / ``KnowledgeRecommender``,
kept flat: two classes).

:class:`Recommender` -- every model. Built as ``Model(dataset, config)`` (with
``features=`` when ``uses_features``); it provides

* ``calculate_loss(batch) -> Tensor``: the CF loss of one BPR batch; ``batch`` has
  ``users``, ``pos_items``, ``neg_items`` (int64, (B,)).
* ``full_sort_predict(users) -> Tensor``: scores of ALL items, (len(users), n_items),
  called under ``torch.no_grad()`` in eval mode; or ``final_embeddings()`` (user and
  item rows whose inner products are the scores), and the base class caches them once
  per evaluation (``prepare_eval``) and scores with a matmul.

Declared on the class (the trainer and ``build_model`` read them, never probe):
``name`` (registry name), ``requires_kg``, ``uses_kg_loss`` (the trainer runs a KG pass
after each CF pass), ``uses_features`` (built with entity content features),
``prerequisites(config)`` (runs that must exist first; ``training.run`` trains them).
Optional hooks: ``on_epoch_end(epoch)``, ``diagnostics()``, ``prepare_eval()``.

:class:`KnowledgeRecommender` -- the KG models (CKE, KGCN, KGAT, MKGAT, Multi-KG4Rec):
the CKG rows the CF loss reads, the triples of the KG pass (``kg_train_triples``,
``calculate_kg_loss``), BPR over propagated rows (``propagated_bpr``), and the
knowledge-aware attention state of the attentive ones (``init_attention``,
``update_attention``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data import Dataset
from ..errors import UserError
from ..nn import KnowledgeAwareAttention, segment_softmax, sum_of_squares


class Recommender(nn.Module):
    #: registry name, set by ``@register``
    name: str = ""
    #: the model cannot run without KG triples
    requires_kg: bool = False
    #: the trainer runs a KG pass (calculate_kg_loss) after each CF pass
    uses_kg_loss: bool = False
    #: built as ``Model(dataset, config, features=...)`` with entity content features
    uses_features: bool = False

    @classmethod
    def prerequisites(cls, config: dict) -> list[dict]:
        """Configs of runs that must have finished on this machine before a run of ``config``
        can start (a sweep trains them first); none by default."""
        return []

    def __init__(self, dataset: Dataset, config: dict):
        super().__init__()
        self.n_users = dataset.n_users
        self.n_items = dataset.n_items
        self.n_entities = dataset.n_entities
        self.n_relations = dataset.n_relations
        self.config = config
        self.dataset = dataset
        self._eval_cache = None

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(n_users, d)`` and ``(n_items, d)`` whose inner products are the scores, for
        models that score that way (then ``prepare_eval`` / ``full_sort_predict`` come
        for free); ``None`` for models that implement ``full_sort_predict`` themselves."""
        return None

    def full_sort_predict(self, users: torch.Tensor) -> torch.Tensor:
        if self._eval_cache is None:
            self.prepare_eval()
        if self._eval_cache is None:
            raise NotImplementedError(f"{type(self).__name__} implements neither full_sort_predict "
                                      f"nor final_embeddings")
        u, i = self._eval_cache
        return u.index_select(0, users) @ i.T

    def on_epoch_end(self, epoch: int) -> None:
        pass

    def diagnostics(self) -> dict:
        """Small per-epoch numbers about the model's state, written to the run's log.jsonl
        beside the losses (e.g. attention concentration, embedding norms); {} = none."""
        return {}

    def prepare_eval(self) -> None:
        with torch.no_grad():
            self._eval_cache = self.final_embeddings()

    def scoring_rows(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """After ``prepare_eval``: the ``(n_users, D)`` and ``(n_items, D)`` rows whose inner products are the
        scores (what an export serves), or None for a model that does not score that way (KGCN, ConvNCF)."""
        return self._eval_cache if isinstance(self._eval_cache, tuple) and len(self._eval_cache) == 2 else None

    def train(self, mode: bool = True):
        if mode:
            self._eval_cache = None
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        """``model.to(device)`` (and ``.double()`` ...) also reach the tensors the model holds outside
        parameters and buffers: plain tensor attributes, and objects with a ``map_tensors(fn)`` method
        (graph structures: ``nn.SparseAdjacency``, MKGAT's ``Graph``). Submodules that hold such
        objects do the same in their own ``_apply`` (``nn.KnowledgeAwareAttention``). Cached evaluation
        embeddings are dropped (tests/test_device.py checks that every reachable tensor is moved)."""
        super()._apply(fn, recurse)
        for key, value in list(vars(self).items()):
            if hasattr(value, "map_tensors"):
                object.__setattr__(self, key, value.map_tensors(fn))
            elif isinstance(value, torch.Tensor):
                object.__setattr__(self, key, fn(value))
        self._eval_cache = None
        return self

    @staticmethod
    def batch_rows(u_all: torch.Tensor, i_all: torch.Tensor, batch: dict) -> tuple[torch.Tensor, ...]:
        """Rows of the batch's users, positive and negative items. ``index_select``: its
        backward sums repeated ids in a fixed order (advanced indexing ``x[idx]`` does not
        on several threads), so training is reproducible (see multikg4rec.nn)."""
        return (u_all.index_select(0, batch["users"]), i_all.index_select(0, batch["pos_items"]),
                i_all.index_select(0, batch["neg_items"]))

    @staticmethod
    def bpr(u: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """BPR (docs/model.md §6): mean -ln sigma( y(u, i) - y(u, j) ) with y the inner product,
        computed as u^T (e_i - e_j): one product of (B, D) rows instead of two."""
        return -F.logsigmoid((u * (p - n)).sum(-1)).mean()

    @staticmethod
    def l2_reg(*tensors: torch.Tensor) -> torch.Tensor:
        """Batch L2 term of docs/model.md §6 (lambda * ||Theta||^2 over the batch's embeddings),
        as KGAT/LightGCN: sum of squares / 2, averaged over the batch."""
        n = tensors[0].shape[0]
        return sum(sum_of_squares(t) for t in tensors) / (2 * n)


class KnowledgeRecommender(Recommender):
    """What the KG models share: the CKG (``Dataset.ckg()``: entities, items first, then
    users), the triples of the KG pass, BPR over propagated CKG rows, and the
    knowledge-aware attention of the attentive models (KGAT, Multi-KG4Rec).

    An attentive model calls :meth:`init_attention` with the names of its propagated
    tables (KGAT: one, Multi-KG4Rec: one per modality) and implements
    :meth:`attention_inputs`; the per-table attention values are persistent buffers
    ``att_<table>`` (a resumed run keeps them), uniform until the first update.
    """

    requires_kg = True
    uses_kg_loss = True
    #: the tables whose attention ``init_attention`` set up (none: a KG model without attention)
    attention_tables: tuple[str, ...] = ()

    def ckg_ui_rows(self) -> torch.Tensor:
        """CKG node ids of the items, then the users (``Dataset.ckg()`` numbers entities
        first, items 0..n_items-1 among them, then users): the only rows of a CKG
        propagation that the CF loss and the ranking read."""
        return torch.cat([torch.arange(self.n_items), self.n_entities + torch.arange(self.n_users)])

    def calculate_kg_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no KG loss")

    def kg_train_triples(self) -> tuple[np.ndarray, int]:
        """``kg_loss_triples: ckg`` (also when the key is unset): every CKG triple with its inverse, the
        user-item ``interact`` edges included, as the KGAT release trains TransR; ``kg``: the KG's triples and
        their inverses only (corrupted tails among the entities), as RecBole's KGAT with
        ``kg_reverse_r`` (how ``bench/recbole`` runs it): on ml-1m 41,564 instead of 1,652,450
        triples per KG pass."""
        which = self.config.get("kg_loss_triples", "ckg")
        if which not in ("ckg", "kg"):
            raise UserError(f"kg_loss_triples must be 'ckg' or 'kg', not {which!r}")
        ckg = self.dataset.ckg()
        triples = torch.stack([ckg.head, ckg.relation, ckg.tail], 1).numpy()
        if which == "kg":                               # drop `interact` (0) and its inverse (n_relations/2)
            keep = (ckg.relation != 0) & (ckg.relation != ckg.n_relations // 2)
            return triples[keep.numpy()], self.n_entities
        return triples, ckg.n_nodes

    def propagated_bpr(self, out: torch.Tensor, batch: dict, layer0: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """BPR and the batch L2 term of a KGAT-style model (docs/model.md §5-6) from its final rows.

        out: (n_items + n_users, D), e* of every item, then every user; layer0: the
        (n_nodes, d) layer-0 tables over the CKG's nodes (KGAT: one; Multi-KG4Rec: one per
        modality table). The batch's rows are ONE gather from ``out`` and one per layer-0
        table: each gather's backward fills one zero buffer of its source's size, where
        slicing users and items out of ``out`` first costs two more (bench/results/kg_epoch.md).
        Returns (bpr, l2): docs/model.md §6's mean -ln sigma( y(u, i) - y(u, j) ) and ||Theta||^2 / 2 of the
        batch's layer-0 rows, averaged over the batch."""
        users, pos, neg = batch["users"], batch["pos_items"], batch["neg_items"]
        sizes = [len(users), len(pos), len(neg)]
        rows = out.index_select(0, torch.cat([users + self.n_items, pos, neg]))
        nodes = torch.cat([users + self.n_entities, pos, neg])
        ego = torch.cat([t.index_select(0, nodes) for t in layer0], dim=1) if len(layer0) > 1 \
            else layer0[0].index_select(0, nodes)
        return self.bpr(*rows.split(sizes)), self.l2_reg(*ego.split(sizes))

    # ---- knowledge-aware attention (docs/model.md §4)
    def init_attention(self, tables: list[str]) -> None:
        """One attention structure over the CKG for every table in ``tables`` and an
        ``att_<table>`` buffer of its values in CSR order, uniform to start with."""
        ckg = self.dataset.ckg()
        self.attention_tables = tuple(tables)
        self.use_attention = bool(self.config["attention"])
        self.attention = KnowledgeAwareAttention(ckg.head, ckg.relation, ckg.tail, ckg.n_nodes)
        self.register_buffer("ui_rows", self.ckg_ui_rows(), persistent=False)
        uniform = self.uniform_attention()
        for t in tables:
            self.register_buffer(f"att_{t}", uniform.clone())

    def uniform_attention(self) -> torch.Tensor:
        """1 / |N_h| for every triple of head h, (E,) in CSR order: the attention before its
        first update, and the 'w/o att' ablation (``attention: false``)."""
        head = self.attention.head
        deg = torch.bincount(head, minlength=self.attention.n_nodes).float()
        return 1.0 / deg[head]

    def adjacency(self, table: str):
        """The attention adjacency of ``table`` (``with_values`` returns the same object while
        the values are unchanged, so its cached transpose serves a whole epoch)."""
        return self.attention.structure.with_values(getattr(self, f"att_{table}"))

    def attention_inputs(self) -> dict:
        """``{table: (layer-0 rows (n_nodes, d), its TransR)}`` for :meth:`update_attention`."""
        raise NotImplementedError(f"{type(self).__name__} has no knowledge-aware attention")

    @torch.no_grad()
    def update_attention(self, inputs: dict | None = None) -> None:
        """Recompute pi(h, r, t) and its per-head softmax (docs/model.md §4) for every table,
        from ``inputs`` (default :meth:`attention_inputs`) and the current TransR parameters."""
        if not self.use_attention:
            return
        for t, (x, transr) in (inputs if inputs is not None else self.attention_inputs()).items():
            getattr(self, f"att_{t}").copy_(self.attention(x, transr).values)

    @torch.no_grad()
    def adopt_attention(self, trained, g) -> None:
        """Fold-in (``multikg4rec.foldin``), after the trained weights are loaded: this model's CKG is
        ``trained``'s grown by new nodes and their edges, and the rows its attention reads are unchanged
        for the old nodes. So every head the new edges do not touch keeps ``trained``'s attention, and only
        the heads of new edges are scored and normalised again: what :meth:`update_attention` gives, for a
        fraction of the edges."""
        from ..foldin import ckg_edge_map
        if not self.use_attention:
            return                                          # uniform, as built
        # old CSR position -> old CKG edge -> its index in the grown CKG
        i2 = ckg_edge_map(trained.dataset, self.dataset)[trained.attention.structure.perm]
        st = self.attention.structure
        where = torch.empty_like(st.perm)
        where[st.perm] = torch.arange(st.perm.shape[0])                    # grown input edge -> CSR position
        kept = where[i2]
        fresh = torch.ones(st.perm.shape[0], dtype=torch.bool)
        fresh[kept] = False
        touched = torch.zeros(self.attention.n_nodes, dtype=torch.bool)
        touched[st.row[fresh]] = True
        redo = touched[st.row].nonzero().squeeze(1)                        # every edge of a touched head
        for t, (x, transr) in self.attention_inputs().items():
            att = torch.zeros(st.perm.shape[0])
            att[kept] = getattr(trained, f"att_{t}")
            pi = self.attention.scores(x, transr, edges=redo)
            att[redo] = segment_softmax(pi, st.row[redo], self.attention.n_nodes)
            getattr(self, f"att_{t}").copy_(att)

    def on_epoch_end(self, epoch: int) -> None:
        """The attentive models recompute their attention after each epoch's updates (as the
        KGAT release) and hold it fixed through the next epoch."""
        if self.attention_tables:
            self.update_attention()
