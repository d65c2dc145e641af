"""The contract every model implements, so the trainer and the evaluator never
special-case a model (after RecBole's ``AbstractRecommender``, kept flat).

A model is built as ``Model(dataset, config)`` and must provide:

* ``calculate_loss(batch) -> Tensor``: the CF loss of one BPR batch. ``batch`` has
  ``users``, ``pos_items``, ``neg_items`` (int64, shape (B,)).
* ``full_sort_predict(users) -> Tensor``: scores of ALL items, shape
  (len(users), n_items). Called under ``torch.no_grad()`` in eval mode.

Optional hooks (no-ops here):

* ``calculate_kg_loss(batch)``: for models trained with a KG pass
  (``uses_kg_loss = True``); ``batch`` has ``heads``, ``relations``,
  ``pos_tails``, ``neg_tails`` over the ids of ``kg_train_triples()``.
* ``kg_train_triples() -> (np.ndarray (n, 3), n_nodes)``: the triples the KG pass
  samples (``kg_loss_triples: ckg``, KGAT's: the whole CKG with inverses, as KGAT trains
  TransR on it; ``kg``, Multi-KG4Rec's: the KG's own triples); node ids as in ``Dataset.ckg()``.
* ``on_epoch_end(epoch)``: e.g. KGAT recomputes its attention.
* ``final_embeddings()``: for inner-product models, the final user and item
  embeddings; the base class then caches them once per evaluation (``prepare_eval``)
  and scores with a matmul (``full_sort_predict``). The cache is dropped at the next
  ``train()``. Other models override ``prepare_eval`` / ``full_sort_predict``.
* ``attention_report(user)``: per-modality attention for the case study.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data import Dataset
from ..errors import UserError
from ..layers import sum_of_squares


class Recommender(nn.Module):
    #: registry name, set by ``@register``
    name: str = ""
    #: the model cannot run without KG triples
    requires_kg: bool = False
    #: the trainer runs a KG pass (calculate_kg_loss) after each CF pass
    uses_kg_loss: bool = False

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

    def ckg_ui_rows(self) -> torch.Tensor:
        """CKG node ids of the items, then the users (``Dataset.ckg()`` numbers entities
        first, items 0..n_items-1 among them, then users): the only rows of a CKG
        propagation that the CF loss and the ranking read."""
        return torch.cat([torch.arange(self.n_items), self.n_entities + torch.arange(self.n_users)])

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

    def calculate_kg_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no KG loss")

    def kg_train_triples(self) -> tuple[np.ndarray, int]:
        """``kg_loss_triples: ckg`` (default): every CKG triple with its inverse, the user-item
        ``interact`` edges included, as the KGAT release trains TransR; ``kg``: the KG's triples and
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

    def on_epoch_end(self, epoch: int) -> None:
        pass

    def diagnostics(self) -> dict:
        """Small per-epoch numbers about the model's state, written to the run's log.jsonl
        beside the losses (e.g. attention concentration, embedding norms); {} = none."""
        return {}

    def prepare_eval(self) -> None:
        with torch.no_grad():
            self._eval_cache = self.final_embeddings()

    def train(self, mode: bool = True):
        if mode:
            self._eval_cache = None
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        """``model.to(device)`` (and ``.double()`` ...) also reach the tensors the model holds outside
        parameters and buffers: plain tensor attributes, and objects with a ``map_tensors(fn)`` method
        (graph structures: ``layers.SparseAdjacency``, MKGAT's ``Graph``). Submodules that hold such
        objects do the same in their own ``_apply`` (``layers.KnowledgeAwareAttention``). Cached evaluation
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
        on several threads), so training is reproducible (see multikg4rec.layers)."""
        return (u_all.index_select(0, batch["users"]), i_all.index_select(0, batch["pos_items"]),
                i_all.index_select(0, batch["neg_items"]))

    def propagated_bpr(self, out: torch.Tensor, batch: dict, layer0: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """BPR and the batch L2 term of a KGAT-style model (SPEC §5-6) from its final rows.

        out: (n_items + n_users, D), e* of every item, then every user; layer0: the
        (n_nodes, d) layer-0 tables over the CKG's nodes (KGAT: one; Multi-KG4Rec: one per
        modality table). The batch's rows are ONE gather from ``out`` and one per layer-0
        table: each gather's backward fills one zero buffer of its source's size, where
        slicing users and items out of ``out`` first costs two more (bench/results/kg_epoch.md).
        Returns (bpr, l2): SPEC §6's mean -ln sigma( y(u, i) - y(u, j) ) and ||Theta||^2 / 2 of the
        batch's layer-0 rows, averaged over the batch."""
        users, pos, neg = batch["users"], batch["pos_items"], batch["neg_items"]
        sizes = [len(users), len(pos), len(neg)]
        rows = out.index_select(0, torch.cat([users + self.n_items, pos, neg]))
        nodes = torch.cat([users + self.n_entities, pos, neg])
        ego = torch.cat([t.index_select(0, nodes) for t in layer0], dim=1) if len(layer0) > 1 \
            else layer0[0].index_select(0, nodes)
        return self.bpr(*rows.split(sizes)), self.l2_reg(*ego.split(sizes))

    @staticmethod
    def bpr(u: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """BPR (SPEC §6): mean -ln sigma( y(u, i) - y(u, j) ) with y the inner product,
        computed as u^T (e_i - e_j): one product of (B, D) rows instead of two."""
        return -F.logsigmoid((u * (p - n)).sum(-1)).mean()

    @staticmethod
    def l2_reg(*tensors: torch.Tensor) -> torch.Tensor:
        """Batch L2 term of SPEC §6 (lambda * ||Theta||^2 over the batch's embeddings),
        as KGAT/LightGCN: sum of squares / 2, averaged over the batch."""
        n = tensors[0].shape[0]
        return sum(sum_of_squares(t) for t in tensors) / (2 * n)
