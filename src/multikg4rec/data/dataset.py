"""The processed dataset (docs/model.md §1): implicit feedback, optional k-core, a
seeded random 8:1:1 split per user, contiguous ids, the knowledge graph and the
collaborative knowledge graph (CKG).

Id layout (every model relies on it):

* users ``0..n_users-1``; items ``0..n_items-1``;
* entities ``0..n_entities-1`` where entity ``i < n_items`` IS item ``i`` (its
  linked KG entity, if any) and the other KG entities follow;
* KG relations ``0..n_relations-1`` (original relations only, no inverses);
* CKG (``Dataset.ckg()``): nodes are entities ``0..n_entities-1`` then users
  ``n_entities + u``; relation 0 = ``interact`` (user -> item, TRAIN only),
  ``1..R`` = KG relations, ``R+1..2R+1`` = their inverses in the same order
  (``R+1`` = interact^-1).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..errors import UserError
from ..fingerprint import file_digest
from .sources import RawDataset, read_raw

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 1

#: preprocessing keys of the config (the rest of the config does not touch the data)
DATA_KEYS = ("rating_threshold", "min_user_inter", "min_item_inter", "kg_items_only", "kg_hops",
             "split", "split_ratio", "split_seed")
#: ``split`` values: every item in every split (``warm``), or new items held out whole (``cold_item``)
SPLITS = ("warm", "cold_item")
#: ``Dataset.item_partition`` values under ``split: cold_item``
WARM, COLD_VALID, COLD_TEST = 0, 1, 2


@dataclass(frozen=True)
class CKG:
    """Collaborative knowledge graph as edge lists (one row per directed edge)."""

    head: torch.Tensor       # (E,) int64 node ids
    relation: torch.Tensor   # (E,) int64 relation ids, 0 = interact
    tail: torch.Tensor       # (E,) int64 node ids
    n_nodes: int
    n_relations: int         # including interact and all inverses


def _sorted_tokens(tokens: np.ndarray) -> np.ndarray:
    """Unique tokens, numeric order when every token is an integer, else lexicographic."""
    uniq = pd.unique(tokens)
    s = pd.Series(uniq)
    num = pd.to_numeric(s, errors="coerce")
    if num.notna().all():
        return s.iloc[np.argsort(num.to_numpy(), kind="stable")].to_numpy(dtype=object)
    return np.sort(uniq.astype(str)).astype(object)


def split_per_user(users: np.ndarray, ratios=(0.8, 0.1, 0.1), seed: int = 2024) -> np.ndarray:
    """Random split per user: returns 0/1/2 (train/valid/test) for each row.

    Users with >= 3 rows get at least one valid and one test row (valid and
    test take ``max(1, floor(ratio * n))`` each, as RecBole's ratio split);
    users with fewer rows stay in train only. Vectorised: no loop over users.
    """
    n = len(users)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(n), users))
    u_sorted = users[order]
    counts = np.bincount(users)
    cnt = counts[u_sorted]
    start = (np.cumsum(counts) - counts)[u_sorted]
    rank = np.arange(n) - start
    enough = cnt >= 3
    n_valid = np.where(enough, np.maximum(1, np.floor(cnt * ratios[1]).astype(np.int64)), 0)
    n_test = np.where(enough, np.maximum(1, np.floor(cnt * ratios[2]).astype(np.int64)), 0)
    part_sorted = np.where(rank < n_test, 2, np.where(rank < n_test + n_valid, 1, 0))
    part = np.empty(n, dtype=np.int8)
    part[order] = part_sorted
    return part


def split_items(n_items: int, has_inter: np.ndarray, ratios=(0.8, 0.1, 0.1), seed: int = 2024) -> np.ndarray:
    """The cold-item protocol's item partition: the items with at least one interaction, in a seeded random
    order, split ``ratios`` into warm, cold-valid and cold-test items (ColdRec's 8:1:1 division); an item with
    no interaction stays warm. Returns (n_items,) int8 of ``WARM`` / ``COLD_VALID`` / ``COLD_TEST``."""
    items = np.flatnonzero(has_inter)
    order = np.random.default_rng([seed, 1]).permutation(items)      # its own stream: the user split's is apart
    n_valid, n_test = int(round(len(items) * ratios[1])), int(round(len(items) * ratios[2]))
    part = np.zeros(n_items, dtype=np.int8)
    part[order[len(order) - n_valid - n_test:len(order) - n_test]] = COLD_VALID
    part[order[len(order) - n_test:]] = COLD_TEST
    return part


def k_core(users: np.ndarray, items: np.ndarray, min_user: int, min_item: int) -> np.ndarray:
    """Boolean mask of rows kept by an iterative (min_user, min_item)-core filter."""
    keep = np.ones(len(users), dtype=bool)
    if min_user <= 1 and min_item <= 1:
        return keep
    while True:
        uc = np.bincount(users[keep], minlength=users.max() + 1)
        ic = np.bincount(items[keep], minlength=items.max() + 1)
        new = keep & (uc[users] >= min_user) & (ic[items] >= min_item)
        if new.sum() == keep.sum():
            return new
        keep = new


class Dataset:
    """A processed dataset. Build with :func:`load_dataset`."""

    ARRAYS = ("user_tokens", "item_tokens", "entity_tokens", "relation_tokens",
              "train", "valid", "test", "kg", "item_linked")
    #: arrays only some datasets have (a cold-item split's partition)
    OPTIONAL = ("item_partition",)

    def __init__(self, name: str, user_tokens, item_tokens, entity_tokens, relation_tokens,
                 train, valid, test, kg, item_linked, meta: dict | None = None, item_partition=None):
        self.name = name
        self.user_tokens = np.asarray(user_tokens, dtype=object)
        self.item_tokens = np.asarray(item_tokens, dtype=object)
        self.entity_tokens = np.asarray(entity_tokens, dtype=object)
        self.relation_tokens = np.asarray(relation_tokens, dtype=object)
        self.train = np.asarray(train, dtype=np.int64).reshape(-1, 2)
        self.valid = np.asarray(valid, dtype=np.int64).reshape(-1, 2)
        self.test = np.asarray(test, dtype=np.int64).reshape(-1, 2)
        self.kg = np.asarray(kg, dtype=np.int64).reshape(-1, 3)
        self.item_linked = np.asarray(item_linked, dtype=bool)
        self.meta = meta or {}
        #: (n_items,) int8 under ``split: cold_item``: WARM, COLD_VALID or COLD_TEST; None for a warm split
        self.item_partition = None if item_partition is None else np.asarray(item_partition, dtype=np.int8)

    @property
    def is_cold(self) -> bool:
        """Whether new items are held out whole (``split: cold_item``)."""
        return self.item_partition is not None

    def items_in(self, *parts: int) -> np.ndarray:
        """(n_items,) bool: the items of the given partitions (every item of a warm split is WARM)."""
        part = self.item_partition if self.is_cold else np.zeros(self.n_items, dtype=np.int8)
        return np.isin(part, parts)

    # ---- sizes
    n_users = property(lambda self: len(self.user_tokens))
    n_items = property(lambda self: len(self.item_tokens))
    n_entities = property(lambda self: len(self.entity_tokens))
    n_relations = property(lambda self: len(self.relation_tokens))
    has_kg = property(lambda self: len(self.kg) > 0)

    def split(self, name: str) -> np.ndarray:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)

    def csr(self, name: str) -> sp.csr_matrix:
        """(n_users, n_items) binary interaction matrix of one split."""
        pairs = self.split(name)
        m = sp.csr_matrix((np.ones(len(pairs), dtype=np.float32), (pairs[:, 0], pairs[:, 1])),
                          shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    @cached_property
    def train_csr(self) -> sp.csr_matrix:
        return self.csr("train")

    def ckg(self, inverse: bool = True) -> CKG:
        """The collaborative KG (docs/model.md §1): interact from TRAIN only, plus KG triples; with inverses."""
        R = self.n_relations + 1  # interact + KG relations
        u, i = self.train[:, 0], self.train[:, 1]
        head = np.concatenate([u + self.n_entities, self.kg[:, 0]])
        rel = np.concatenate([np.zeros(len(u), dtype=np.int64), self.kg[:, 1] + 1])
        tail = np.concatenate([i, self.kg[:, 2]])
        if inverse:
            head, tail = np.concatenate([head, tail]), np.concatenate([tail, head])
            rel = np.concatenate([rel, rel + R])
        return CKG(torch.from_numpy(head), torch.from_numpy(rel), torch.from_numpy(tail),
                   n_nodes=self.n_entities + self.n_users, n_relations=2 * R if inverse else R)

    def stats(self) -> dict:
        n_inter = len(self.train) + len(self.valid) + len(self.test)
        return {
            "dataset": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": n_inter,
            "train/valid/test": f"{len(self.train)}/{len(self.valid)}/{len(self.test)}",
            "density": round(n_inter / max(1, self.n_users * self.n_items), 5),
            "entities": self.n_entities if self.has_kg else 0,
            "relations": self.n_relations,
            "triples": len(self.kg),
            "items linked to KG": int(self.item_linked.sum()),
            "items in a KG triple": int(np.isin(np.arange(self.n_items), self.kg[:, [0, 2]]).sum()) if self.has_kg else 0,
        }

    def fingerprint(self) -> str:
        """A digest of exactly what a model sees: the name, the ordered user, item, entity and relation
        tokens (they fix every internal id), the three splits and the KG. Two datasets with the same
        fingerprint give a model the same rows; one renamed, added or removed item changes it."""
        h = hashlib.sha1(self.name.encode())
        for k in ("user_tokens", "item_tokens", "entity_tokens", "relation_tokens"):
            h.update(b"\x1e" + "\x1f".join(map(str, getattr(self, k))).encode())
        for k in ("train", "valid", "test", "kg", "item_linked") + (("item_partition",) if self.is_cold else ()):
            a = np.ascontiguousarray(getattr(self, k))
            h.update(f"\x1e{k}{a.shape}".encode() + a.tobytes())
        return h.hexdigest()[:16]

    def describe_change(self, other: "Dataset") -> str:
        """What differs between this dataset and ``other`` (the one a run was trained on), in a few words."""
        parts = []
        for what, k in (("users", "user_tokens"), ("items", "item_tokens"), ("entities", "entity_tokens"),
                        ("relations", "relation_tokens")):
            a, b = getattr(other, k).astype(str), getattr(self, k).astype(str)
            if len(a) == len(b) and (a == b).all():
                continue
            gone, new = np.setdiff1d(a, b), np.setdiff1d(b, a)
            bits = [f"{len(a)} -> {len(b)}"] + ([f"{len(gone)} gone (e.g. {gone[0]!r})"] if len(gone) else []) \
                + ([f"{len(new)} new (e.g. {new[0]!r})"] if len(new) else []) \
                + (["same ids in another order"] if not len(gone) and not len(new) else [])
            parts.append(f"{what}: " + ", ".join(bits))
        for k in ("train", "valid", "test", "kg"):
            if not np.array_equal(getattr(other, k), getattr(self, k)):
                parts.append(f"{k}: {len(getattr(other, k))} -> {len(getattr(self, k))} rows")
        return "; ".join(parts) or "the same rows"

    # ---- persistence
    def save(self, path: Path, compressed: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
        os.close(fd)
        arrays = {k: getattr(self, k) for k in self.ARRAYS}
        arrays |= {k: getattr(self, k) for k in self.OPTIONAL if getattr(self, k) is not None}
        for k in ("user_tokens", "item_tokens", "entity_tokens", "relation_tokens"):
            arrays[k] = arrays[k].astype(str)
        (np.savez_compressed if compressed else np.savez)(
            tmp, meta=np.array(json.dumps({"name": self.name, **self.meta})), **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "Dataset":
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        name = meta.pop("name")
        return cls(name, **{k: z[k] for k in cls.ARRAYS}, meta=meta,
                   **{k: z[k] for k in cls.OPTIONAL if k in z.files})


# --------------------------------------------------------------------------- building

def _warn(msg: str) -> None:
    log.warning(msg)


def build_dataset(raw: RawDataset, cfg: dict) -> Dataset:
    """Apply docs/model.md §1 preprocessing to a raw dataset."""
    inter = raw.inter
    thr = cfg.get("rating_threshold")
    if thr is not None:
        if "rating" not in inter:
            _warn(f"{raw.name}: rating_threshold={thr} ignored: the data has no rating column")
        else:
            inter = inter[inter["rating"] >= float(thr)]
    inter = inter.drop_duplicates(["user", "item"])

    user_tok = _sorted_tokens(inter["user"].to_numpy())
    item_tok = _sorted_tokens(inter["item"].to_numpy())
    u = pd.Index(user_tok).get_indexer(inter["user"].to_numpy())
    i = pd.Index(item_tok).get_indexer(inter["item"].to_numpy())

    # ---- KG: link items to entities
    kg_tok, link = raw.kg, raw.link
    item_entity = np.full(len(item_tok), None, dtype=object)
    if kg_tok is not None:
        if link is None:  # items are KG entities under the same token
            link = pd.DataFrame({"item": item_tok, "entity": item_tok})
        known = pd.Index(item_tok).get_indexer(link["item"].to_numpy())
        n_unknown = int((known < 0).sum())
        if n_unknown:
            _warn(f"{raw.name}: {n_unknown} of {len(link)} item->entity links name items absent from "
                  f"the interactions; they are treated as plain KG entities")
        link = link[known >= 0].assign(idx=known[known >= 0])
        dup = link.duplicated("entity", keep="first") | link.duplicated("idx", keep="first")
        if dup.any():
            _warn(f"{raw.name}: {int(dup.sum())} links share an item or entity with an earlier link; kept the first")
            link = link[~dup]
        item_entity[link["idx"].to_numpy()] = link["entity"].to_numpy()

    if cfg.get("kg_items_only") and kg_tok is not None:
        keep_items = np.array([e is not None for e in item_entity])
        keep = keep_items[i]
        inter, u, i = inter[keep], u[keep], i[keep]
        # re-index after the filter
        return build_dataset(RawDataset(raw.name, inter, raw.kg, raw.link, raw.items, raw.files),
                             {**cfg, "kg_items_only": False})

    # ---- k-core
    kc = k_core(u, i, int(cfg.get("min_user_inter") or 0), int(cfg.get("min_item_inter") or 0))
    if not kc.all():
        inter = inter[kc]
        return build_dataset(RawDataset(raw.name, inter, raw.kg, raw.link, raw.items, raw.files),
                             {**cfg, "min_user_inter": 0, "min_item_inter": 0})

    counts = np.bincount(u, minlength=len(user_tok))
    few = int((counts < 3).sum())
    if few:
        _warn(f"{raw.name}: {few} users have fewer than 3 interactions; they cannot appear in valid and "
              f"test and are kept in train only (set min_user_inter: 3 to drop them)")

    # ---- split (sorted rows so the split does not depend on file order)
    order = np.lexsort((i, u))
    u, i = u[order], i[order]
    seed = int(cfg.get("split_seed") if cfg.get("split_seed") is not None else cfg.get("seed", 2024))
    ratios = tuple(cfg.get("split_ratio") or (0.8, 0.1, 0.1))
    split = cfg.get("split") or "warm"
    if split not in SPLITS:
        raise UserError(f"split: must be one of {', '.join(SPLITS)}, got {split!r}")
    item_part = None
    if split == "cold_item":
        # new items held out whole: every interaction of a cold-valid / cold-test item is a valid / test row;
        # the warm items' interactions are split per user as in the warm protocol
        item_part = split_items(len(item_tok), np.bincount(i, minlength=len(item_tok)) > 0, ratios, seed)
        cold = item_part[i]
        part = np.empty(len(u), dtype=np.int8)
        warm = cold == WARM
        part[warm] = split_per_user(u[warm], ratios, seed)
        part[cold == COLD_VALID], part[cold == COLD_TEST] = 1, 2
    else:
        part = split_per_user(u, ratios, seed)
    if not ((part == 1).any() and (part == 2).any()):
        raise UserError(f"{raw.name}: nothing to validate or test on: no user has the 3 interactions a train, a "
                        f"valid and a test item need ({len(user_tok)} users, {len(u)} interactions)")
    pairs = np.stack([u, i], 1).astype(np.int64)

    # ---- entities and triples
    if kg_tok is not None and len(kg_tok):
        linked_tokens = {e: k for k, e in enumerate(item_entity) if e is not None}
        all_ent = pd.unique(np.concatenate([kg_tok["head"].to_numpy(), kg_tok["tail"].to_numpy()]))
        others = _sorted_tokens(np.array([e for e in all_ent if e not in linked_tokens], dtype=object)) \
            if len(all_ent) else np.array([], dtype=object)
        entity_tok = np.concatenate([np.array([e if e is not None else "" for e in item_entity], dtype=object),
                                     others])
        ent_index = pd.Index(np.concatenate([np.array([f"\x00item{k}" if e is None else e
                                                       for k, e in enumerate(item_entity)], dtype=object),
                                             others]))
        h = ent_index.get_indexer(kg_tok["head"].to_numpy())
        t = ent_index.get_indexer(kg_tok["tail"].to_numpy())
        rel_tok = _sorted_tokens(kg_tok["relation"].to_numpy())
        r = pd.Index(rel_tok).get_indexer(kg_tok["relation"].to_numpy())
        kg = np.unique(np.stack([h, r, t], 1).astype(np.int64), axis=0)
        hops = cfg.get("kg_hops")
        if hops:
            kg, entity_tok = _prune_kg(kg, entity_tok, len(item_tok), int(hops))
        n_linked = sum(e is not None for e in item_entity)
        in_triple = np.unique(np.concatenate([kg[:, 0], kg[:, 2]]))
        n_touched = int((in_triple < len(item_tok)).sum())
        if len(kg) and n_touched == 0:
            _warn(f"{raw.name}: none of the KG's {len(kg)} triples touches an item ({n_linked} of {len(item_tok)} "
                  f"items are linked to an entity, none of those entities is in a triple): the KG cannot inform any "
                  f"item; check that the .link file's entity ids are the .kg file's")
        elif len(kg) and n_touched < n_linked:
            _warn(f"{raw.name}: {n_linked - n_touched} of {n_linked} linked items appear in no KG triple")
    else:
        entity_tok = np.array([""] * len(item_tok), dtype=object)
        rel_tok = np.array([], dtype=object)
        kg = np.zeros((0, 3), dtype=np.int64)

    return Dataset(
        raw.name, user_tok, item_tok, entity_tok, rel_tok,
        train=pairs[part == 0], valid=pairs[part == 1], test=pairs[part == 2], kg=kg,
        item_linked=np.array([e is not None for e in item_entity]),
        meta={"config": {k: cfg.get(k) for k in DATA_KEYS} | {"seed": seed}, "notes": raw.notes,
              "users_with_fewer_than_3": few},
        item_partition=item_part,
    )


def _prune_kg(kg: np.ndarray, entity_tok: np.ndarray, n_items: int, hops: int):
    """Keep triples whose head or tail is within ``hops`` hops of an item; re-index entities."""
    reach = np.zeros(len(entity_tok), dtype=bool)
    reach[:n_items] = True
    for _ in range(hops):
        touch = reach[kg[:, 0]] | reach[kg[:, 2]]
        new = reach.copy()
        new[kg[touch, 0]] = True
        new[kg[touch, 2]] = True
        if new.sum() == reach.sum():
            break
        reach = new
    kg = kg[reach[kg[:, 0]] & reach[kg[:, 2]]]
    reach[:n_items] = True
    new_id = np.cumsum(reach) - 1
    return np.stack([new_id[kg[:, 0]], kg[:, 1], new_id[kg[:, 2]]], 1), entity_tok[reach]


def default_cache_dir() -> Path:
    return Path(os.environ.get("MULTIKG4REC_CACHE", Path.home() / ".cache" / "multikg4rec"))


def _cache_key(raw_files: list[Path], cfg: dict) -> str:
    h = hashlib.sha1()
    h.update(json.dumps({k: cfg.get(k) for k in DATA_KEYS} | {"seed": cfg.get("seed"), "v": PREPROCESS_VERSION},
                        sort_keys=True, default=str).encode())
    for f in raw_files:
        h.update(f"{Path(f).name}:{file_digest(f)}".encode())
    return h.hexdigest()[:16]


def load_dataset(name: str, cfg: dict | None = None, data_dir=None, cache_dir=None,
                 use_cache: bool = True) -> Dataset:
    """Read, preprocess and cache dataset ``name``; a second call with the same
    config and unchanged files loads the cached arrays in well under a second."""
    cfg = dict(cfg or {})
    if cfg.get("split_seed") is None:
        cfg["split_seed"] = cfg.get("seed", 2024)
    from .sources import BUILTIN_READERS, dataset_dir
    d = dataset_dir(name, data_dir)
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix in (".inter", ".kg", ".link", ".txt", ".dat"))
    if not files:
        raise UserError(f"{d} holds no data files")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / "datasets" / f"{name}-{_cache_key(files, cfg)}.npz"
    if use_cache and path.is_file():
        try:
            return Dataset.load(path)
        except Exception as e:  # a corrupt cache is rebuilt, never fatal
            _warn(f"cache {path} unreadable ({e}); rebuilding")
    ds = build_dataset(read_raw(name, data_dir), cfg)
    if len(ds.train) == 0:
        raise UserError(f"dataset {name!r}: no training interactions left after preprocessing {cfg}")
    if use_cache:
        try:
            ds.save(path)
        except OSError as e:
            _warn(f"could not write dataset cache {path}: {e}")
    return ds
