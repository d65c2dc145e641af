"""Fold-in without retraining: a trained graph model rebuilt over its dataset grown by new items and users.

A new item is an item node with its content rows and its KG links (``(relation, entity)`` pairs) and no
interaction; a new user is a user node with ``interact`` edges to its items. The grown dataset numbers nodes
as every dataset does (items first, then the other entities, then users: ``Dataset.ckg``), so the model is
built on it as training would build it (content registration, a user's content as the mean of its items',
the adjacency); the trained weights are carried over row by row; the knowledge-aware attention is
recomputed from them as the model does after every epoch; the scoring rows are the evaluator's. What a new
node cannot have is a trained ID row: its ID rows are zero (docs/serving.md). One thing is kept rather than
redrawn: Multi-KG4Rec's trained items keep the BFS sequences they were trained with, and only the new items'
are sampled over the grown CKG (``fold_in_inputs``), so an added item changes other items only through the
propagation over its edges, never by reshuffling their fusion inputs.

``grow(dataset)`` with nothing new rebuilds the trained model's own scoring rows to every digit
(``tests/test_foldin.py``), so the only difference a new node makes is the node itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

#: models whose state is node tables plus shared weights, scored by inner products of their final rows
GROWABLE = ("kgat", "multikg4rec", "mkgat", "cke")


class FoldInError(ValueError):
    """A request names what the dataset does not have (an unknown relation or entity), or the model cannot
    be grown."""


@dataclass
class NewItem:
    token: str
    #: (relation token, entity token[, "out" | "in"]): the triple (item, relation, entity), or with "in"
    #: (entity, relation, item); an entity token may also be an item token
    links: list[tuple] = field(default_factory=list)
    #: modality -> content row (already encoded and normalised as the run's features); absent: no content
    content: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Grown:
    """A grown dataset and where the old ids went."""
    dataset: object
    ent_map: np.ndarray      # (old n_entities,) new entity id of each old entity
    node_map: np.ndarray     # (old n_nodes,) new CKG node id of each old node (entities, then users)
    new_items: np.ndarray    # item ids of the new items
    new_users: np.ndarray    # user ids of the new users


def grow_dataset(ds, items: list[NewItem] = (), users: list[tuple[str, list[int]]] = ()) -> Grown:
    """``ds`` with ``items`` appended after its items (entity ids of the other entities move up by
    ``len(items)``) and ``users`` (token, train item ids) after its users."""
    from .data.dataset import COLD_TEST, Dataset
    a, n_i, n_e, n_u = len(items), ds.n_items, ds.n_entities, ds.n_users
    ent_map = np.concatenate([np.arange(n_i), np.arange(n_i + a, n_e + a)]).astype(np.int64)
    entity_of, relation_of = {}, {}
    if any(it.links for it in items):                  # token lookups only when there are links to resolve
        entity_of = {str(t): k for k, t in enumerate(ds.entity_tokens) if str(t)}
        entity_of |= {str(t): k for k, t in enumerate(ds.item_tokens)}      # an item token names the item
        relation_of = {str(t): k for k, t in enumerate(ds.relation_tokens)}
    new_tokens = [it.token for it in items]
    for k, it in enumerate(items):
        entity_of[it.token] = -(k + 1)                                       # a new item may link a new item
    kg = [np.c_[ent_map[ds.kg[:, 0]], ds.kg[:, 1], ent_map[ds.kg[:, 2]]]] if len(ds.kg) else []
    for k, it in enumerate(items):
        for link in it.links:
            rel, ent, way = (*link, "out")[:3]
            if rel not in relation_of:
                raise FoldInError(f"unknown relation {rel!r}")
            if ent not in entity_of:
                raise FoldInError(f"unknown entity {ent!r}")
            if way not in ("out", "in"):
                raise FoldInError(f"a link's direction is 'out' (item -> entity) or 'in', not {way!r}")
            e = entity_of[ent]
            e = n_i - e - 1 if e < 0 else ent_map[e]
            kg.append(np.array([[n_i + k, relation_of[rel], e] if way == "out" else [e, relation_of[rel], n_i + k]]))
    kg = np.concatenate(kg) if kg else np.zeros((0, 3), dtype=np.int64)
    ent_tokens = np.concatenate([ds.entity_tokens[:n_i], np.array([""] * a, dtype=object), ds.entity_tokens[n_i:]])
    train = [ds.train] + [np.c_[np.full(len(its), n_u + k), np.asarray(its, dtype=np.int64)]
                          for k, (_, its) in enumerate(users) if len(its)]
    part = None if ds.item_partition is None else np.concatenate([ds.item_partition, np.full(a, COLD_TEST)])
    grown = Dataset(ds.name, np.concatenate([ds.user_tokens, np.array([t for t, _ in users], dtype=object)]),
                    np.concatenate([ds.item_tokens, np.array(new_tokens, dtype=object)]), ent_tokens,
                    ds.relation_tokens, np.concatenate(train), ds.valid, ds.test, kg,
                    np.concatenate([ds.item_linked, np.array([bool(it.links) for it in items], dtype=bool)]),
                    meta=dict(ds.meta), item_partition=part)
    node_map = np.concatenate([ent_map, n_e + a + np.arange(n_u)])
    return Grown(grown, ent_map, node_map, n_i + np.arange(a), n_u + np.arange(len(users)))


def ckg_edge_map(old, grown) -> torch.Tensor:
    """The index in ``grown.ckg()`` of each edge of ``old.ckg()``, for ``grown`` made by :func:`grow_dataset`:
    both list interact edges (train order) then KG triples, then the same inverted (``Dataset.ckg``), and
    the grown dataset appends its new users' interactions after the train and its new triples after the KG."""
    n_tr, n_tu = len(old.train), len(grown.train) - len(old.train)
    fwd, fwd2 = n_tr + len(old.kg), len(grown.train) + len(grown.kg)      # the forward halves
    i = torch.arange(2 * fwd)
    half = (i >= fwd).long()
    j = i - half * fwd
    return j + (j >= n_tr).long() * n_tu + half * fwd2


def grow_features(features: dict | None, n_items: int, items: list[NewItem]) -> dict | None:
    """The aligned features with the new items' rows inserted after the items (mask False: no content)."""
    if features is None:
        return None
    out = {}
    for m, (x, mask) in features.items():
        x, mask = np.asarray(x, dtype=np.float32), np.asarray(mask, dtype=bool)
        new = np.zeros((len(items), x.shape[1]), dtype=np.float32)
        has = np.zeros(len(items), dtype=bool)
        for k, it in enumerate(items):
            if it.content.get(m) is not None:
                new[k], has[k] = np.asarray(it.content[m], dtype=np.float32), True
        out[m] = (np.concatenate([x[:n_items], new, x[n_items:]]), np.concatenate([mask[:n_items], has, mask[n_items:]]))
    return out


def _row_map(old_n: int, new_n: int, old, g: Grown) -> np.ndarray | None:
    """Where row r of a table of ``old_n`` rows goes in the grown table of ``new_n`` rows: the table is
    indexed by CKG nodes, entities, items or users (told apart by the two sizes); None if by none."""
    n_i, n_e, n_u = old.n_items, old.n_entities, old.n_users
    d = g.dataset
    kinds = {(n_e + n_u, d.n_entities + d.n_users): g.node_map, (n_e, d.n_entities): g.ent_map,
             (n_i, d.n_items): np.arange(n_i), (n_u, d.n_users): np.arange(n_u)}
    return kinds.get((old_n, new_n))


def carry_state(old_state: dict, new_model, old_dataset, g: Grown) -> dict:
    """The trained state on the grown model's tables: shared weights as they are, node / entity / item / user
    rows moved to their new ids, new rows zero; attention values are the new model's (recomputed after)."""
    out = {}
    for k, new in new_model.state_dict().items():
        old = old_state[k]
        if k.startswith("att_"):
            out[k] = new
        elif old.shape == new.shape:
            out[k] = old
        else:
            where = _row_map(old.shape[0], new.shape[0], old_dataset, g) if old.shape[1:] == new.shape[1:] else None
            if where is None:
                raise FoldInError(f"{type(new_model).__name__}: cannot carry {k} {tuple(old.shape)} -> "
                                  f"{tuple(new.shape)} onto the grown graph")
            t = torch.zeros_like(new)
            t[torch.from_numpy(where)] = old
            out[k] = t
    return out


def ready(model) -> None:
    """Compute now what :func:`grow` reads from the trained ``model`` (``fold_in_ready``: Multi-KG4Rec's fused
    rows), so that the first new item or session does not wait for it."""
    if hasattr(model, "fold_in_ready"):
        model.fold_in_ready()


def grow(model, dataset, features: dict | None, items: list[NewItem] = (),
         users: list[tuple[str, list[int]]] = (), reuse: bool = True):
    """The model rebuilt over ``dataset`` grown by ``items`` and ``users``, its trained weights carried over
    and its attention recomputed, in eval mode with its scoring rows ready. Returns (model, Grown).
    ``reuse``: take what the new nodes cannot change from ``model`` (``adopt``: Multi-KG4Rec's fused rows of
    the trained items; ``adopt_attention``: the attention of every head no new edge touches) rather than
    recompute it; the result is the same either way (``tests/test_foldin.py``)."""
    from .models import build_model
    name = model.config["model"]
    if name not in GROWABLE:
        raise FoldInError(f"{name} cannot be grown by new nodes (fold-in supports {', '.join(GROWABLE)})")
    g = grow_dataset(dataset, list(items), list(users))
    inputs = model.fold_in_inputs(g) if hasattr(model, "fold_in_inputs") else {}
    new = build_model(dict(model.config), g.dataset, grow_features(features, dataset.n_items, list(items)), **inputs)
    new.load_state_dict(carry_state(model.state_dict(), new, dataset, g))
    new.eval()
    with torch.no_grad():
        if reuse and hasattr(new, "adopt"):
            new.adopt(model, g)
        if getattr(new, "attention_tables", ()):
            if reuse:
                new.adopt_attention(model, g)                # only the heads the new edges touch
            else:
                new.update_attention()
        new.prepare_eval()
    return new, g
