"""The full-ranking evaluator (docs/model.md §7): hand-ranked lists, exclusion, ties, batching, and a
plain-Python reference on random data."""
from __future__ import annotations

import math
from math import log2

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from multikg4rec.evaluation import METRICS, EvalResult, Evaluator, format_metrics


def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """Binary CSR with one row per user from lists of item ids."""
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c), dtype=np.float32), (r, c)), shape=(len(rows), n_items))


def table(scores, dtype=np.float32) -> callable:
    s = torch.as_tensor(np.asarray(scores, dtype=dtype))
    return lambda users: s[users]


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-12)


# --------------------------------------------------------------------------- hand-ranked lists

def test_single_user_hand_computed():
    # 10 items, scores descend with the item id: ranking is 0, 1, 2, ..., 9.
    # relevant {0, 2, 7, 9}: hits at ranks 1 and 3 within K=5, rank 8 within K=8.
    n = 10
    scores = [[10 - i for i in range(n)]]
    ev = Evaluator(n, ks=(1, 2, 5, 8))
    r = ev.evaluate(table(scores), csr([[0, 2, 7, 9]], n), None)
    m = r.metrics
    assert r.n_users == 1
    assert m["recall@1"] == approx(1 / 4)
    assert m["recall@2"] == approx(1 / 4)
    assert m["recall@5"] == approx(2 / 4)
    assert m["recall@8"] == approx(3 / 4)
    assert m["precision@1"] == approx(1 / 1)
    assert m["precision@2"] == approx(1 / 2)
    assert m["precision@5"] == approx(2 / 5)
    assert m["precision@8"] == approx(3 / 8)
    assert m["hit@1"] == m["hit@5"] == 1.0
    assert m["mrr@1"] == m["mrr@8"] == 1.0
    assert m["ndcg@1"] == approx(1.0)
    assert m["ndcg@2"] == approx(1 / (1 + 1 / log2(3)))
    assert m["ndcg@5"] == approx((1 + 1 / log2(4)) / (1 + 1 / log2(3) + 1 / log2(4) + 1 / log2(5)))
    assert m["ndcg@8"] == approx((1 + 1 / log2(4) + 1 / log2(9))
                                 / (1 + 1 / log2(3) + 1 / log2(4) + 1 / log2(5)))


def test_first_hit_not_at_top_and_no_hit_user():
    n = 8
    # user 0 ranking 7, 6, 5, ... (score = item id); relevant {5, 1}: ranks 3 and 7
    # user 1 ranking 0, 1, 2, ...; relevant {7}: rank 8, outside every K
    scores = [list(range(n)), [n - i for i in range(n)]]
    ev = Evaluator(n, ks=(2, 3, 7))
    r = ev.evaluate(table(scores), csr([[5, 1], [7]], n), None, return_per_user=True)
    pu = r.per_user
    assert pu["users"].tolist() == [0, 1]
    assert pu["mrr@2"].tolist() == [0.0, 0.0]
    assert pu["mrr@3"].tolist() == approx([1 / 3, 0.0])
    assert pu["mrr@7"].tolist() == approx([1 / 3, 0.0])
    assert pu["hit@2"].tolist() == [0.0, 0.0]
    assert pu["hit@3"].tolist() == [1.0, 0.0]
    assert pu["recall@7"].tolist() == approx([2 / 2, 0.0])
    assert pu["precision@7"].tolist() == approx([2 / 7, 0.0])
    assert pu["ndcg@3"].tolist() == approx([(1 / log2(4)) / (1 + 1 / log2(3)), 0.0])
    assert pu["ndcg@7"].tolist() == approx([(1 / log2(4) + 1 / log2(8)) / (1 + 1 / log2(3)), 0.0])
    # the mean is over both users
    assert r.metrics["mrr@3"] == approx((1 / 3 + 0.0) / 2)
    assert r.metrics["ndcg@7"] == approx(((1 / log2(4) + 1 / log2(8)) / (1 + 1 / log2(3))) / 2)


def test_more_relevant_than_k():
    # 6 relevant items, K = 3: recall denominator 6, IDCG over 3 positions.
    n = 12
    scores = [[n - i for i in range(n)]]  # ranking 0, 1, 2, ...
    rel = [[0, 2, 3, 5, 8, 10]]
    ev = Evaluator(n, ks=(3,))
    m = ev.evaluate(table(scores), csr(rel, n), None).metrics
    assert m["recall@3"] == approx(2 / 6)
    assert m["precision@3"] == approx(2 / 3)
    assert m["ndcg@3"] == approx((1 + 1 / log2(4)) / (1 + 1 / log2(3) + 1 / log2(4)))
    # all of the top-3 relevant: NDCG 1 though recall is only 3/6
    m = ev.evaluate(table(scores), csr([[0, 1, 2, 5, 8, 10]], n), None).metrics
    assert m["ndcg@3"] == approx(1.0)
    assert m["recall@3"] == approx(3 / 6)


# --------------------------------------------------------------------------- exclusion

def test_excluded_item_with_highest_score_takes_no_slot():
    n = 8
    # item 4 scores highest but is a train item; ranking of the candidates: 0, 1, 2, 3, 5, ...
    scores = [[7, 6, 5, 4, 100, 3, 2, 1]]
    target = csr([[2, 5]], n)
    train = csr([[4]], n)
    ev = Evaluator(n, ks=(3, 4))
    m = ev.evaluate(table(scores), target, [train], topk=5)
    assert m.topk.tolist() == [[0, 1, 2, 3, 5]]
    assert m.metrics["mrr@3"] == approx(1 / 3)
    assert m.metrics["recall@3"] == approx(1 / 2)
    # with the slot not taken, item 5 is at rank 5: outside K=4
    assert m.metrics["recall@4"] == approx(1 / 2)
    # without exclusion item 4 takes rank 1 and pushes item 2 to rank 4
    m2 = ev.evaluate(table(scores), target, None, topk=5)
    assert m2.topk.tolist() == [[4, 0, 1, 2, 3]]
    assert m2.metrics["mrr@3"] == 0.0
    assert m2.metrics["mrr@4"] == approx(1 / 4)


def test_exclude_union_of_list_and_single_matrix():
    n = 6
    scores = [[10, 9, 8, 7, 6, 5]]
    target = csr([[3]], n)
    train, valid = csr([[0]], n), csr([[1, 2]], n)
    ev = Evaluator(n, ks=(1,))
    assert ev.evaluate(table(scores), target, [train, valid]).metrics["hit@1"] == 1.0
    assert ev.evaluate(table(scores), target, [train]).metrics["hit@1"] == 0.0
    assert ev.evaluate(table(scores), target, train + valid).metrics["hit@1"] == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_excluded_ranks_after_minus_inf_and_never_hits(dtype):
    n = 5
    inf = float("inf")
    # 3 candidates scored -inf, excluded item 0 scored +inf; target item 0 is excluded too
    scores = [[inf, -inf, -inf, 1.0, -inf]]
    ev = Evaluator(n, ks=(5,))
    r = ev.evaluate(table(scores, dtype), csr([[0, 4]], n), csr([[0]], n), topk=5)
    # candidates first (3, then the -inf ties by id), the excluded item never shows (-1)
    assert r.topk.tolist() == [[3, 1, 2, 4, -1]]
    assert r.metrics["hit@5"] == 1.0
    assert r.metrics["mrr@5"] == approx(1 / 4)
    assert r.metrics["recall@5"] == approx(1 / 2)  # |Rel| counts the target row as given


# --------------------------------------------------------------------------- ties

def test_ties_break_to_lower_item_id():
    n = 6
    scores = [[1, 2, 2, 2, 0, 2]]  # items 1, 2, 3, 5 tie at the top
    ev = Evaluator(n, ks=(2,))
    r = ev.evaluate(table(scores), csr([[3]], n), None, topk=6)
    assert r.topk.tolist() == [[1, 2, 3, 5, 0, 4]]
    assert r.metrics["hit@2"] == 0.0
    # the tie straddles the K boundary: items 1, 2 are inside K=2, item 3 and 5 outside
    r = ev.evaluate(table(scores), csr([[2]], n), None)
    assert r.metrics["mrr@2"] == approx(1 / 2)
    assert r.metrics["ndcg@2"] == approx(1 / log2(3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ties_straddling_k_with_exclusion_and_zero_signs(dtype):
    n = 7
    # -0.0 and +0.0 tie; excluded item 1 is removed from the tie block
    scores = [[-0.0, 0.0, 0.0, 5.0, 0.0, -1.0, 0.0]]
    ev = Evaluator(n, ks=(3,))
    r = ev.evaluate(table(scores, dtype), csr([[4]], n), csr([[1]], n), topk=6)
    assert r.topk.tolist() == [[3, 0, 2, 4, 6, 5]]
    assert r.metrics["hit@3"] == 0.0
    r = ev.evaluate(table(scores, dtype), csr([[2]], n), csr([[1]], n))
    assert r.metrics["mrr@3"] == approx(1 / 3)


def test_caller_scores_not_modified():
    n = 6
    s = torch.tensor([[6.0, 5, 4, 3, 2, 1], [1, 1, 1, 1, 1, 1]])
    before = s.clone()
    ev = Evaluator(n, ks=(2,))
    ev.evaluate(lambda u: s, csr([[1], [2]], n), csr([[0, 3], [1]], n))
    ev.evaluate(lambda u: s.numpy(), csr([[1], [2]], n), csr([[0, 3], [1]], n))
    assert torch.equal(s, before)


def test_nan_at_excluded_item_is_ignored():
    n = 4
    s = torch.tensor([[float("nan"), 3.0, 2.0, 1.0]])
    r = Evaluator(n, ks=(1,)).evaluate(lambda u: s[u], csr([[1]], n), csr([[0]], n))
    assert r.metrics["hit@1"] == 1.0


def test_float64_and_float16_scores_rank_the_same():
    rng = np.random.default_rng(0)
    n = 40
    s = rng.integers(0, 5, size=(30, n)).astype(np.float64)  # many ties
    target = sp.random(30, n, density=0.2, format="csr", random_state=1)
    target.data[:] = 1
    train = sp.random(30, n, density=0.2, format="csr", random_state=2)
    train.data[:] = 1
    ev = Evaluator(n, ks=(1, 5, 10))
    s64 = torch.from_numpy(s)
    r32 = ev.evaluate(lambda u: s64[u].float(), target, train, topk=n)
    r64 = ev.evaluate(lambda u: s64[u], target, train, topk=n)
    r16 = ev.evaluate(lambda u: s64[u].half(), target, train, topk=n)
    assert r32.metrics == r64.metrics == r16.metrics
    assert np.array_equal(r32.topk, r64.topk) and np.array_equal(r32.topk, r16.topk)


# --------------------------------------------------------------------------- users, batching, outputs

def test_users_without_target_are_skipped_and_users_filter():
    n = 5
    scores = [[5, 4, 3, 2, 1]] * 4
    target = csr([[0], [], [4], [1]], n)
    ev = Evaluator(n, ks=(1,))
    r = ev.evaluate(table(scores), target, None, return_per_user=True)
    assert r.n_users == 3
    assert r.per_user["users"].tolist() == [0, 2, 3]
    assert r.metrics["hit@1"] == approx(1 / 3)
    r = ev.evaluate(table(scores), target, None, users=[1, 2, 0], return_per_user=True)
    assert r.n_users == 2
    assert r.per_user["users"].tolist() == [0, 2]
    assert r.metrics["hit@1"] == approx(1 / 2)
    with pytest.raises(ValueError, match="out of range"):
        ev.evaluate(table(scores), target, None, users=[7])


def test_score_fn_only_sees_evaluated_users():
    n = 4
    seen = []
    s = torch.arange(n, dtype=torch.float32).repeat(5, 1)

    def fn(users):
        seen.extend(users.tolist())
        return s[users]

    Evaluator(n, ks=(1,), batch_size=2).evaluate(fn, csr([[0], [], [], [1], [2]], n), None)
    assert seen == [0, 3, 4]


def _random_problem(n_users=300, n_items=120, seed=0, tie_levels=None):
    rng = np.random.default_rng(seed)
    if tie_levels:
        scores = rng.integers(0, tie_levels, size=(n_users, n_items)).astype(np.float32)
    else:
        scores = rng.standard_normal((n_users, n_items)).astype(np.float32)
    inter = rng.random((n_users, n_items))
    train = sp.csr_matrix((inter < 0.10).astype(np.float32))
    valid = sp.csr_matrix(((inter >= 0.10) & (inter < 0.13)).astype(np.float32))
    test = sp.csr_matrix(((inter >= 0.13) & (inter < 0.13 + rng.uniform(0, 0.15))).astype(np.float32))
    return scores, train, valid, test


def test_batching_invariance():
    scores, train, valid, test = _random_problem(n_users=97, tie_levels=4)
    fn = table(scores)
    ev1 = Evaluator(scores.shape[1], ks=(5, 10, 20), batch_size=1)
    evn = Evaluator(scores.shape[1], ks=(5, 10, 20), batch_size=10_000)
    ev7 = Evaluator(scores.shape[1], ks=(5, 10, 20), batch_size=7)
    r1 = ev1.evaluate(fn, test, [train, valid], return_per_user=True, topk=15)
    rn = evn.evaluate(fn, test, [train, valid], return_per_user=True, topk=15)
    r7 = ev7.evaluate(fn, test, [train, valid], return_per_user=True, topk=15)
    assert r1.metrics == rn.metrics == r7.metrics
    for k in r1.per_user:
        assert np.array_equal(r1.per_user[k], rn.per_user[k])
        assert np.array_equal(r1.per_user[k], r7.per_user[k])
    assert np.array_equal(r1.topk, rn.topk) and np.array_equal(r1.topk, r7.topk)


def test_per_user_and_topk_outputs():
    scores, train, valid, test = _random_problem(n_users=50)
    ev = Evaluator(scores.shape[1], ks=(10, 20))
    r = ev.evaluate(table(scores), test, train, return_per_user=True, topk=30)
    assert isinstance(r, EvalResult)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    assert r.n_users == len(users)
    assert set(r.per_user) == {"users", *r.metrics}
    assert list(r.metrics) == [f"{m}@{k}" for m in METRICS for k in (10, 20)]
    for k, v in r.metrics.items():
        assert r.per_user[k].shape == (len(users),)
        assert v == pytest.approx(r.per_user[k].mean())
    assert np.array_equal(r.topk_users, users)
    assert r.topk.shape == (len(users), 30)
    for row, u in zip(r.topk, users):
        assert not set(row.tolist()) & set(train[u].indices.tolist())  # no train item recommended
        s = scores[u][row]
        assert np.all(s[:-1] >= s[1:])  # rank order
    # without the flags there is nothing extra
    r = ev.evaluate(table(scores), test, train)
    assert r.per_user is None and r.topk is None
    assert r["recall@20"] == r.metrics["recall@20"]


def test_topk_wider_than_candidates_pads_with_minus_one_and_k_beyond_items():
    n = 4
    ev = Evaluator(n, ks=(2, 10))
    r = ev.evaluate(table([[1, 2, 3, 4]]), csr([[0]], n), csr([[3, 2]], n), topk=10)
    assert r.topk.tolist() == [[1, 0, -1, -1]]
    assert r.metrics["mrr@2"] == approx(1 / 2)
    assert r.metrics["precision@10"] == approx(1 / 10)
    assert r.metrics["ndcg@10"] == approx(1 / log2(3))


def test_single_excluded_item_inside_top_k_when_k_covers_all_items():
    # K = n_items: the one excluded item sits in the last slot with no tie to reveal it
    n = 3
    r = Evaluator(n, ks=(3,)).evaluate(table([[5, 4, 1]]), csr([[0, 2]], n), csr([[2]], n), topk=3)
    assert r.topk.tolist() == [[0, 1, -1]]
    assert r.metrics["recall@3"] == approx(1 / 2)
    assert r.metrics["ndcg@3"] == approx(1 / (1 + 1 / log2(3)))


def test_nan_scores_raise():
    n = 5
    s = torch.zeros(3, n)
    s[0, 1] = float("nan")
    s[2, 4] = float("nan")
    ev = Evaluator(n, ks=(2,))
    with pytest.raises(ValueError, match=r"NaN scores for 2 of 3 users"):
        ev.evaluate(lambda u: s[u], csr([[0], [1], [2]], n), None)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown metric"):
        Evaluator(5, metrics=("auc",))
    with pytest.raises(ValueError, match="ks"):
        Evaluator(5, ks=(0,))
    ev = Evaluator(5, ks=(2,))
    with pytest.raises(ValueError, match="item columns"):
        ev.evaluate(table([[1, 2, 3]]), csr([[0]], 3), None)
    with pytest.raises(ValueError, match="shape"):
        ev.evaluate(lambda u: torch.zeros(len(u), 4), csr([[0]], 5), None)


def test_metric_subset_and_format():
    n = 5
    ev = Evaluator(n, ks=20, metrics=("ndcg", "recall"))
    r = ev.evaluate(table([[5, 4, 3, 2, 1]]), csr([[0]], n), None)
    assert list(r.metrics) == ["recall@20", "ndcg@20"]
    line = format_metrics(r.metrics)
    assert line == "recall@20=1.0000  ndcg@20=1.0000"
    assert format_metrics(r.metrics, keys=["ndcg@20"]) == "ndcg@20=1.0000"


# --------------------------------------------------------------------------- plain-Python reference

def reference(scores, target, exclude, ks):
    """Per user: sort the non-excluded items by (-score, item id), then the definitions."""
    out = {f"{m}@{k}": [] for m in METRICS for k in ks}
    for u in range(scores.shape[0]):
        rel = set(target[u].indices.tolist())
        if not rel:
            continue
        ex = set(exclude[u].indices.tolist())
        cand = sorted((i for i in range(scores.shape[1]) if i not in ex), key=lambda i: (-scores[u, i], i))
        for k in ks:
            top = cand[:k]
            hits = [1 if i in rel else 0 for i in top]
            nh = sum(hits)
            first = next((j + 1 for j, h in enumerate(hits) if h), None)
            dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hits))
            idcg = sum(1 / math.log2(j + 2) for j in range(min(len(rel), k)))
            out[f"recall@{k}"].append(nh / len(rel))
            out[f"precision@{k}"].append(nh / k)
            out[f"hit@{k}"].append(1.0 if nh else 0.0)
            out[f"mrr@{k}"].append(1 / first if first else 0.0)
            out[f"ndcg@{k}"].append(dcg / idcg)
    return {k: sum(v) / len(v) for k, v in out.items()}


@pytest.mark.parametrize("kind", ["distinct", "ties", "mixed", "mixed-float64"])
def test_against_plain_python_reference(kind):
    scores, train, valid, test = _random_problem(n_users=400, n_items=150, seed=7,
                                                 tie_levels=3 if kind == "ties" else None)
    if kind.startswith("mixed"):
        # every third user gets coarse (tied) scores, some -inf candidates and -0.0 / +0.0
        scores[::3] = np.round(scores[::3])
        scores[1::9, :100] = -np.inf
        scores[2::9] = np.where(scores[2::9] == 0, -0.0, scores[2::9])
    ks = (1, 5, 10, 20, 50)
    ev = Evaluator(scores.shape[1], ks=ks, batch_size=64)
    got = ev.evaluate(table(scores, np.float64 if kind.endswith("float64") else np.float32),
                      test, [train, valid]).metrics
    want = reference(scores, test, (train + valid).tocsr(), ks)
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-12), k


def test_metrics_by_popularity_against_a_hand_ranked_case():
    """Relevant items split by their train popularity: each bucket's NDCG@2 / Recall@2 over the users that have
    a relevant item in it, on the same full ranking."""
    from multikg4rec.evaluation import metrics_by_popularity
    counts = np.array([3, 50, 200, 7, 1])                   # buckets: 1-5: items 0, 4; 6-20: 3; 21-100: 1; >100: 2
    target = sp.csr_matrix(np.array([[1, 1, 0, 0, 1],       # user 0: items 0, 1, 4
                                     [0, 0, 1, 1, 0]], dtype=np.float32))   # user 1: items 2, 3
    topk = np.array([[4, 2, 0], [3, 1, 2]])                 # full rankings, best first
    out = metrics_by_popularity(topk, np.array([0, 1]), target, counts, k=2)
    d = 1 / np.log2(3)
    # 1-5: user 0 only (items 0 and 4); its top-2 = [4, 2]: hit at rank 1 -> DCG 1, IDCG 1 + d
    assert out["1-5"] == {"ndcg@2": pytest.approx(1 / (1 + d)), "recall@2": 0.5, "users": 1, "items": 2}
    # 6-20: user 1 (item 3), hit at rank 1
    assert out["6-20"]["ndcg@2"] == 1.0 and out["6-20"]["recall@2"] == 1.0
    # 21-100: user 0 (item 1) not in its top-2; >100: user 1 (item 2) not in its top-2 ([3, 1])
    assert out["21-100"]["ndcg@2"] == 0.0 and out[">100"]["recall@2"] == 0.0 and out[">100"]["users"] == 1
