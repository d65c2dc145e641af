"""Vectorised samplers for BPR (docs/model.md §6) and the TransR KG loss (docs/model.md §2).

Negatives are drawn uniformly and rejected against the positive set in one
vectorised membership test (sorted int64 keys + ``np.searchsorted``); the few
rejected rows are redrawn until none is left. No Python loop over users,
items or triples.
"""
from __future__ import annotations

import numpy as np
import torch


def _keys(a: np.ndarray, b: np.ndarray, width: int) -> np.ndarray:
    return a.astype(np.int64) * np.int64(width) + b.astype(np.int64)


def _isin_sorted(q: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(sorted_keys, q)
    pos[pos == len(sorted_keys)] = 0
    return sorted_keys[pos] == q


class BPRSampler:
    """One epoch = every TRAIN interaction once as (user, pos), in a seeded random
    order, each with one uniform negative item the user has not interacted with in
    train. ``neg_pool``: the items negatives are drawn from (default all; the cold-item protocol draws
    from the warm items only: a new item does not exist while the model trains).

    >>> for batch in BPRSampler(ds.train, ds.n_items, 1024, rng): batch["users"]
    """

    def __init__(self, train: np.ndarray, n_items: int, batch_size: int, rng: np.random.Generator,
                 max_tries: int = 100, neg_pool: np.ndarray | None = None):
        self.train = np.asarray(train, dtype=np.int64)
        self.n_items = int(n_items)
        self.batch_size = int(batch_size)
        self.rng = rng
        self.max_tries = max_tries
        self.pos_keys = np.unique(_keys(self.train[:, 0], self.train[:, 1], self.n_items))
        self.neg_pool = None if neg_pool is None else np.asarray(neg_pool, dtype=np.int64)

    def _draw(self, n: int) -> np.ndarray:
        if self.neg_pool is None:
            return self.rng.integers(0, self.n_items, size=n)
        return self.neg_pool[self.rng.integers(0, len(self.neg_pool), size=n)]

    def __len__(self) -> int:
        return (len(self.train) + self.batch_size - 1) // self.batch_size

    def sample_negatives(self, users: np.ndarray) -> np.ndarray:
        neg = self._draw(len(users))
        bad = _isin_sorted(_keys(users, neg, self.n_items), self.pos_keys)
        for _ in range(self.max_tries):
            if not bad.any():
                break
            idx = np.flatnonzero(bad)
            neg[idx] = self._draw(len(idx))
            bad[idx] = _isin_sorted(_keys(users[idx], neg[idx], self.n_items), self.pos_keys)
        return neg  # a user who interacted with every item keeps a positive: harmless, vanishingly rare

    def __iter__(self):
        perm = self.rng.permutation(len(self.train))
        for s in range(0, len(perm), self.batch_size):
            rows = self.train[perm[s:s + self.batch_size]]
            users, pos = rows[:, 0], rows[:, 1]
            neg = self.sample_negatives(users)
            yield {"users": torch.from_numpy(users), "pos_items": torch.from_numpy(pos),
                   "neg_items": torch.from_numpy(neg)}


class KGSampler:
    """One epoch = every triple (h, r, t) once, in seeded random order, each with a
    corrupted tail t' such that (h, r, t') is not in the graph (docs/model.md §2).

    Within a batch the triples are sorted by relation (stable), so that TransR's
    per-relation projection works on slices (:meth:`multikg4rec.nn.TransR.project_rows`);
    which triples form a batch, and their corrupted tails, do not depend on it.

    ``triples`` is any (n, 3) array of (head, relation, tail) node ids; tails are
    drawn from ``[0, n_nodes)``.
    """

    def __init__(self, triples: np.ndarray, n_nodes: int, batch_size: int, rng: np.random.Generator,
                 max_tries: int = 100):
        self.triples = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
        self.n_nodes = int(n_nodes)
        self.batch_size = int(batch_size)
        self.rng = rng
        self.max_tries = max_tries
        self.n_rel = int(self.triples[:, 1].max()) + 1 if len(self.triples) else 1
        self.true_keys = np.unique(self._hrt(self.triples[:, 0], self.triples[:, 1], self.triples[:, 2]))

    def _hrt(self, h, r, t):
        return (h.astype(np.int64) * self.n_rel + r) * self.n_nodes + t

    def __len__(self) -> int:
        return (len(self.triples) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        perm = self.rng.permutation(len(self.triples))
        for s in range(0, len(perm), self.batch_size):
            h, r, t = self.triples[perm[s:s + self.batch_size]].T
            neg = self.rng.integers(0, self.n_nodes, size=len(h))
            bad = _isin_sorted(self._hrt(h, r, neg), self.true_keys)
            for _ in range(self.max_tries):
                if not bad.any():
                    break
                idx = np.flatnonzero(bad)
                neg[idx] = self.rng.integers(0, self.n_nodes, size=len(idx))
                bad[idx] = _isin_sorted(self._hrt(h[idx], r[idx], neg[idx]), self.true_keys)
            order = np.argsort(r, kind="stable")
            yield {"heads": torch.from_numpy(h[order]), "relations": torch.from_numpy(r[order]),
                   "pos_tails": torch.from_numpy(t[order]), "neg_tails": torch.from_numpy(neg[order])}
