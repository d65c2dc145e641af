"""Full-ranking evaluation (docs/model.md §7): Recall / MRR / NDCG / Hit / Precision @K.

Every item is a candidate except the user's excluded ones (train items; for the
test split, train + valid items). Relevance is binary. For each evaluated user
(a user with at least one target item):

* Recall@K    = hits in top-K / |Rel_u|
* Precision@K = hits in top-K / K
* Hit@K       = 1 if any hit in top-K else 0
* MRR@K       = 1 / rank of the first hit in top-K (0 if none)
* NDCG@K      = DCG@K / IDCG@K, DCG = sum_j rel_j / log2(j + 1) over 1-based ranks j,
  IDCG over the min(|Rel_u|, K) ideal positions

and the reported value is the mean over evaluated users.

Ranking is deterministic: equal scores rank the LOWER item id first. Excluded
items rank after every candidate (even one scored -inf) and never count as a
hit. Per batch, excluded scores are set to -inf and one ``torch.topk`` takes the
top ``max(K) + 1``; a row whose top values hold a tie (two equal neighbours) or a
-inf is ranked again exactly with one topk over unique int64 keys
``monotone_int32(score) * 2**32 + (n_items - 1 - item)`` (float64 scores: two
stable sorts). Real-valued model scores rarely tie, so the exact pass is cheap;
a model with massive ties (e.g. popularity) pays for it on every row, still exact.

A NaN among a user's candidate scores raises ``ValueError`` (NaN at an excluded
item is masked away first and ignored). Scores of dtype float16 / bfloat16 are
widened to float32, integer scores to float64.

Memory is bounded by the batch: a few ``(batch_size, n_items)`` tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

METRICS = ("recall", "mrr", "ndcg", "hit", "precision")

_EXCLUDED = torch.iinfo(torch.int64).min  # key of an excluded item: below every real key


@dataclass
class EvalResult:
    """The result of :meth:`Evaluator.evaluate`.

    ``metrics``: ``{"recall@20": mean, ...}`` averaged over the ``n_users`` evaluated users.
    ``per_user``: (with ``return_per_user``) one float64 array per metric key, aligned with
    ``per_user["users"]`` (the evaluated user ids, ascending); for paired tests across models.
    ``topk``: (with ``topk > 0``) ``(n_users, topk)`` item ids in rank order for the users in
    ``topk_users``; ``-1`` pads where a user has fewer than ``topk`` candidates.
    """

    metrics: dict[str, float]
    n_users: int
    per_user: dict[str, np.ndarray] | None = None
    topk: np.ndarray | None = None
    topk_users: np.ndarray | None = None

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]


def format_metrics(metrics: dict, keys: Iterable[str] | None = None, digits: int = 4) -> str:
    """One line, e.g. ``recall@20=0.1234  mrr@20=0.2345``; ``keys`` picks and orders the entries."""
    if isinstance(metrics, EvalResult):
        metrics = metrics.metrics
    keys = list(metrics) if keys is None else list(keys)
    return "  ".join(f"{k}={metrics[k]:.{digits}f}" for k in keys)


# --------------------------------------------------------------------------- helpers

class _Rows:
    """A binary CSR matrix, to give the non-zeros of a batch of rows as flat indices
    ``row_in_batch * n_cols + col`` (ascending)."""

    def __init__(self, m: sp.csr_matrix):
        m = sp.csr_matrix(m, copy=True)
        m.sum_duplicates()  # also sorts the column indices
        m.eliminate_zeros()
        self.m = m
        self.counts = np.diff(m.indptr)

    def flat(self, users: np.ndarray, device: torch.device) -> torch.Tensor:
        # read off indptr / indices directly: scipy's row fancy-indexing costs more than the ranking
        # itself for the one-user batches of the server
        users = np.asarray(users, dtype=np.int64)
        starts, counts = self.m.indptr[users], self.counts[users]
        rows = np.repeat(np.arange(len(users), dtype=np.int64), counts)
        pos = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(starts - np.cumsum(counts) + counts, counts)
        flat = rows * self.m.shape[1] + self.m.indices[pos]
        return torch.from_numpy(flat).to(device)


def _monotone_int64(scores: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 (holding an int32 range) with the same order; -0.0 == +0.0; no NaN.

    A float's bits read as int32 already order the non-negative floats; a negative float is
    ``INT32_MIN + magnitude``, which maps to ``-magnitude``.
    """
    bits = scores.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, -(2 ** 31) - bits, bits)


def _rank_exact(scores: torch.Tensor, ex_flat: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k item ids, exactly: ties to the lower id, excluded items after every candidate.

    Returns ``(ids, valid)``, ``valid`` False where the slot holds an excluded item.
    """
    n_rows, n_items = scores.shape
    if scores.dtype == torch.float32:
        # one topk over int64 keys monotone(score) * 2**32 + (n_items - 1 - item): unique keys
        key = _monotone_int64(scores)
        key.mul_(1 << 32)
        key.add_(torch.arange(n_items - 1, -1, -1, device=scores.device, dtype=torch.int64))
        if ex_flat is not None and len(ex_flat):
            key.view(-1).index_fill_(0, ex_flat, _EXCLUDED)
        top_key, top_idx = torch.topk(key, k, dim=1, largest=True, sorted=True)
        return top_idx, top_key != _EXCLUDED
    # float64: no room for the id in the key; two stable sorts (score desc, then excluded last)
    excluded = torch.zeros(n_rows * n_items, dtype=torch.bool, device=scores.device)
    if ex_flat is not None and len(ex_flat):
        excluded[ex_flat] = True
    excluded = excluded.view(n_rows, n_items)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ex_sorted = excluded.gather(1, order)
    order = order.gather(1, torch.sort(ex_sorted.to(torch.uint8), dim=1, stable=True).indices)
    top_idx = order[:, :k]
    return top_idx, ~excluded.gather(1, top_idx)


def _rank(scores: torch.Tensor, ex_flat: torch.Tensor | None, k: int, users: np.ndarray
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of a batch (float32 or float64 scores, owned: masked in place).

    Fast path: excluded items set to -inf, one topk over the scores with one slot to spare.
    A row whose top-(k+1) values hold two equal neighbours (a tie that decides order or
    membership) or a -inf (a candidate that may tie with an excluded item) is ranked again
    by :func:`_rank_exact`; with real-valued model scores that is rare.
    """
    n_rows, n_items = scores.shape
    if ex_flat is not None and len(ex_flat):
        scores.view(-1).index_fill_(0, ex_flat, float("-inf"))
    vals, top_idx = torch.topk(scores, min(k + 1, n_items), dim=1, largest=True, sorted=True)
    # topk ranks NaN above every number, so a row with a NaN candidate shows one here
    nan_rows = torch.isnan(vals).any(1)
    if bool(nan_rows.any()):
        bad = users[nan_rows.cpu().numpy()]
        raise ValueError(f"score_fn returned NaN scores for {len(bad)} of {n_rows} users in a batch "
                         f"(e.g. user ids {bad[:5].tolist()})")
    top_idx = top_idx[:, :k]
    valid = torch.ones(top_idx.shape, dtype=torch.bool, device=scores.device)
    redo = (vals[:, :-1] == vals[:, 1:])[:, :k].any(1) | torch.isneginf(vals[:, :k]).any(1)
    if bool(redo.any()):
        rows = torch.nonzero(redo).view(-1)
        sub_ex = None
        if ex_flat is not None and len(ex_flat):
            local = torch.full((n_rows,), -1, dtype=torch.int64, device=scores.device)
            local[rows] = torch.arange(len(rows), device=scores.device)
            loc = local[ex_flat // n_items]
            keep = loc >= 0
            sub_ex = loc[keep] * n_items + ex_flat[keep] % n_items
        idx_r, valid_r = _rank_exact(scores[rows], sub_ex, k)
        top_idx[rows] = idx_r
        valid[rows] = valid_r
    return top_idx, valid


# --------------------------------------------------------------------------- by item popularity

#: train-interaction counts of an item: the buckets of the sparse-item breakdown (an upper bound None: open)
POPULARITY_BUCKETS = ((1, 5), (6, 20), (21, 100), (101, None))


def _bucket_name(lo: int, hi: int | None) -> str:
    return f"{lo}-{hi}" if hi is not None else f">{lo - 1}"


def metrics_by_popularity(topk: np.ndarray, users: np.ndarray, target: sp.csr_matrix, train_counts: np.ndarray,
                          k: int = 20) -> dict[str, dict]:
    """NDCG@k and Recall@k by the popularity of the relevant items: for each bucket of train-interaction counts
    (:data:`POPULARITY_BUCKETS`), a user's relevant items are its target items in that bucket, and the ranking is
    the user's full ranking (``topk``: (U, >= k) item ids in rank order, -1 for none; ``users``: (U,) its users).
    Averaged over the users with at least one relevant item in the bucket; IDCG from min(|Rel_u|, k).
    Returns ``{bucket: {"ndcg@k", "recall@k", "users", "items"}}``."""
    target = sp.csr_matrix(target)
    top = np.asarray(topk)[:, :k]
    counts = np.asarray(train_counts)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    idcg = np.cumsum(disc)
    rows = target[users]
    keys_t = np.sort(np.repeat(np.arange(len(users)), np.diff(rows.indptr)).astype(np.int64) * target.shape[1]
                     + rows.indices)
    q = np.arange(len(users))[:, None].astype(np.int64) * target.shape[1] + np.maximum(top, 0)
    pos = np.clip(np.searchsorted(keys_t, q), 0, max(len(keys_t) - 1, 0))
    is_rel = (keys_t[pos] == q) & (top >= 0) if len(keys_t) else np.zeros(top.shape, dtype=bool)
    top_count = counts[np.maximum(top, 0)]
    out = {}
    for lo, hi in POPULARITY_BUCKETS:
        in_b = (counts >= lo) & (counts <= hi if hi is not None else True)
        n_rel = np.asarray(rows[:, in_b].sum(axis=1)).ravel()
        hits = is_rel & (top_count >= lo) & ((top_count <= hi) if hi is not None else True) & (top >= 0)
        ev = n_rel > 0
        if not ev.any():
            continue
        dcg = (hits * disc).sum(1)
        nd = dcg[ev] / idcg[np.minimum(n_rel[ev], k).astype(int) - 1]
        rec = hits.sum(1)[ev] / n_rel[ev]
        out[_bucket_name(lo, hi)] = {f"ndcg@{k}": float(nd.mean()), f"recall@{k}": float(rec.mean()),
                                    "users": int(ev.sum()), "items": int(in_b.sum())}
    return out


# --------------------------------------------------------------------------- evaluator

class Evaluator:
    """Full-ranking evaluator over ``n_items`` items.

    ``ks``: cut-offs; ``metrics``: a subset of :data:`METRICS`; ``batch_size``: users scored
    at once (memory ~ a few ``batch_size x n_items`` tensors); ``device``: where the user-id
    tensors handed to ``score_fn`` live (the metric maths follows the scores' device).
    """

    def __init__(self, n_items: int, ks: Sequence[int] = (10, 20, 50), metrics: Sequence[str] = METRICS,
                 batch_size: int = 1024, device: str | torch.device | None = None):
        if n_items <= 0 or n_items >= 2 ** 32:
            raise ValueError(f"n_items must be in [1, 2**32), got {n_items}")
        if isinstance(ks, int):
            ks = (ks,)
        ks = sorted({int(k) for k in ks})
        if not ks or ks[0] < 1:
            raise ValueError(f"ks must be positive integers, got {ks}")
        if isinstance(metrics, str):
            metrics = (metrics,)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {METRICS}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n_items = int(n_items)
        self.ks = tuple(ks)
        self.metrics = tuple(m for m in METRICS if m in metrics)
        self.batch_size = int(batch_size)
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    @property
    def keys(self) -> list[str]:
        return [f"{m}@{k}" for m in self.metrics for k in self.ks]

    # ---- input checks
    def _check(self, m, what: str, n_users: int | None) -> sp.csr_matrix:
        if not sp.issparse(m):
            raise TypeError(f"{what} must be a scipy sparse matrix, got {type(m).__name__}")
        m = sp.csr_matrix(m)
        if m.shape[1] != self.n_items:
            raise ValueError(f"{what} has {m.shape[1]} item columns, the evaluator {self.n_items}")
        if n_users is not None and m.shape[0] != n_users:
            raise ValueError(f"{what} has {m.shape[0]} user rows, target {n_users}")
        return m

    def exclusion(self, exclude, n_users: int) -> "_Rows | None":
        """The items left out of each user's ranking: the union of ``exclude`` (a binary CSR or a list of
        them, checked against ``n_users`` x ``n_items``) as the ``_Rows`` that :meth:`ranked` takes."""
        if exclude is None:
            return None
        if sp.issparse(exclude):
            exclude = [exclude]
        mats = [self._check(m, f"exclude[{i}]", n_users) for i, m in enumerate(exclude)]
        if not mats:
            return None
        total = mats[0].copy()
        for m in mats[1:]:
            total = total + m
        total.sum_duplicates()
        total.eliminate_zeros()
        total.data[:] = 1
        return _Rows(total)

    # ---- main entry
    @torch.no_grad()
    def evaluate(self, score_fn: Callable[[torch.Tensor], torch.Tensor], target: sp.csr_matrix,
                 exclude: list[sp.csr_matrix] | sp.csr_matrix | None = None, users=None,
                 return_per_user: bool = False, topk: int = 0, candidates: np.ndarray | None = None) -> EvalResult:
        """Score every evaluated user against all items and average the metrics.

        ``score_fn(users: LongTensor) -> FloatTensor (len(users), n_items)``; ``target`` and
        ``exclude`` are ``(n_users, n_items)`` binary CSR (``exclude`` a list is their union).
        Evaluated users: rows of ``target`` with >= 1 item, intersected with ``users`` if given.
        ``candidates``: (n_items,) bool, the items that may be ranked (all by default; the cold-item
        protocol ranks the new items only): the ranking is the full ranking over those items alone, and
        target items outside them are dropped; ``topk`` returns item ids of the whole catalogue.
        """
        if candidates is not None:
            return self._on_candidates(score_fn, target, exclude, users, return_per_user, topk, candidates)
        target = self._check(target, "target", None)
        n_users = target.shape[0]
        tgt = _Rows(target)
        exc = self.exclusion(exclude, n_users)

        eval_users = np.flatnonzero(tgt.counts > 0)
        if users is not None:
            users = np.asarray(users, dtype=np.int64).reshape(-1)
            bad = users[(users < 0) | (users >= n_users)]
            if len(bad):
                raise ValueError(f"users out of range [0, {n_users}): {bad[:5].tolist()}")
            eval_users = np.intersect1d(eval_users, users)
        topk = int(topk)
        if topk < 0:
            raise ValueError(f"topk must be >= 0, got {topk}")

        max_k = self.ks[-1]
        k_rank = min(max(max_k, topk), self.n_items)
        disc = 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float64))
        idcg = torch.cumsum(disc, 0)
        kidx = torch.tensor([k - 1 for k in self.ks])
        kval = torch.tensor(self.ks, dtype=torch.float64)

        per: dict[str, list[torch.Tensor]] = {key: [] for key in self.keys}
        top_out: list[torch.Tensor] = []
        for batch, top_idx, valid, _ in self.ranked(score_fn, eval_users, k_rank, exc):
            dev = top_idx.device
            # hits: look the top-max_k (row, item) pairs up in the batch's sorted target pairs
            t_flat = tgt.flat(batch, dev)
            q = top_idx[:, :max_k] + torch.arange(len(batch), device=dev)[:, None] * self.n_items
            pos = torch.searchsorted(t_flat, q).clamp_(max=len(t_flat) - 1)
            hits = ((t_flat[pos] == q) & valid[:, :max_k]).cpu().to(torch.float64)
            if hits.shape[1] < max_k:  # fewer items than the largest K
                hits = torch.nn.functional.pad(hits, (0, max_k - hits.shape[1]))
            n_rel = torch.from_numpy(tgt.counts[batch]).to(torch.float64)

            for key, val in self._per_user(hits, n_rel, disc, idcg, kidx, kval).items():
                per[key].append(val)
            if topk:
                t = top_idx[:, :topk]
                top_out.append(torch.where(valid[:, :topk], t, torch.full_like(t, -1)).cpu())

        n = len(eval_users)
        per_np = {k: (torch.cat(v).numpy() if v else np.zeros(0)) for k, v in per.items()}
        metrics = {k: (float(v.mean()) if n else float("nan")) for k, v in per_np.items()}
        result = EvalResult(metrics=metrics, n_users=n)
        if return_per_user:
            result.per_user = {"users": eval_users.copy(), **per_np}
        if topk:
            width = min(topk, self.n_items)
            result.topk = (torch.cat(top_out).numpy() if top_out else np.zeros((0, width), dtype=np.int64))
            result.topk_users = eval_users.copy()
        return result

    def _on_candidates(self, score_fn, target, exclude, users, return_per_user, topk, candidates) -> EvalResult:
        """:meth:`evaluate` over the ``candidates`` columns alone: an evaluator of that many items, the scores,
        target and exclusions restricted to them, the top-K mapped back to catalogue ids."""
        cand = np.asarray(candidates, dtype=bool).reshape(-1)
        if cand.shape[0] != self.n_items:
            raise ValueError(f"candidates has {cand.shape[0]} entries, the evaluator {self.n_items} items")
        cols = np.flatnonzero(cand)
        if not len(cols):
            raise ValueError("no candidate item")
        sub = Evaluator(len(cols), self.ks, self.metrics, self.batch_size, self.device)
        idx = torch.from_numpy(cols)

        def sub_scores(u):
            s = score_fn(u)
            s = s if torch.is_tensor(s) else torch.as_tensor(s)
            return s.index_select(1, idx.to(s.device))

        target = self._check(target, "target", None)[:, cols]
        if exclude is not None:
            exclude = [self._check(m, f"exclude[{i}]", target.shape[0])[:, cols]
                       for i, m in enumerate([exclude] if sp.issparse(exclude) else exclude)]
        res = sub.evaluate(sub_scores, target, exclude, users, return_per_user, topk)
        if topk:
            res.topk = np.where(res.topk >= 0, cols[np.maximum(res.topk, 0)], -1)
        return res

    def ranked(self, score_fn: Callable[[torch.Tensor], torch.Tensor], users: np.ndarray, k: int,
               exclude: "_Rows | None" = None):
        """Top-k of ``users`` (internal ids), ``batch_size`` users at a time: yields ``(batch, top_idx,
        valid, top_scores)``, ``valid`` False where a slot holds an excluded item (fewer candidates than k),
        ``top_scores`` the scores of ``top_idx``. ``exclude``: the items left out (:meth:`exclusion`)."""
        for lo in range(0, len(users), self.batch_size):
            batch = users[lo:lo + self.batch_size]
            raw = score_fn(torch.from_numpy(batch).to(self.device))
            scores = raw if torch.is_tensor(raw) else torch.as_tensor(raw)
            if scores.shape != (len(batch), self.n_items):
                raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, "
                                 f"expected ({len(batch)}, {self.n_items})")
            scores, owned = scores.detach(), False
            if scores.dtype not in (torch.float32, torch.float64):
                # half / bfloat16 widen exactly; integers go to float64 (exact below 2**53)
                scores = scores.to(torch.float64 if not scores.is_floating_point() else torch.float32)
                owned = True
            if not scores.is_contiguous():
                scores, owned = scores.contiguous(), True
            if not owned:
                scores = scores.clone()  # excluded items are masked in place: never in the caller's tensor
            ex_flat = exclude.flat(batch, scores.device) if exclude is not None else None
            top_idx, valid = _rank(scores, ex_flat, k, batch)
            top_scores = scores.gather(1, top_idx)        # valid slots were not masked
            del scores, raw
            yield batch, top_idx, valid, top_scores

    def _per_user(self, hits, n_rel, disc, idcg, kidx, kval) -> dict[str, torch.Tensor]:
        """Per-user metrics at every K from a (B, max_k) 0/1 hit matrix (float64)."""
        out: dict[str, torch.Tensor] = {}
        ms = self.metrics
        n_hit = torch.cumsum(hits, 1)[:, kidx]  # (B, nK)
        if "recall" in ms:
            r = n_hit / n_rel[:, None]
            for j, k in enumerate(self.ks):
                out[f"recall@{k}"] = r[:, j]
        if "mrr" in ms:
            any_hit = hits.any(1)
            first = torch.argmax(hits, 1)  # first max = first hit when there is one
            rr = torch.where(any_hit, 1.0 / (first + 1).to(torch.float64), torch.zeros_like(n_rel))
            for k in self.ks:
                out[f"mrr@{k}"] = torch.where(first < k, rr, torch.zeros_like(rr))
        if "ndcg" in ms:
            dcg = torch.cumsum(hits * disc, 1)[:, kidx]
            n_ideal = torch.minimum(n_rel[:, None], kval[None, :]).to(torch.int64)  # >= 1
            nd = dcg / idcg[n_ideal - 1]
            for j, k in enumerate(self.ks):
                out[f"ndcg@{k}"] = nd[:, j]
        if "hit" in ms:
            h = (n_hit > 0).to(torch.float64)
            for j, k in enumerate(self.ks):
                out[f"hit@{k}"] = h[:, j]
        if "precision" in ms:
            p = n_hit / kval[None, :]
            for j, k in enumerate(self.ks):
                out[f"precision@{k}"] = p[:, j]
        return {key: out[key] for key in self.keys}
