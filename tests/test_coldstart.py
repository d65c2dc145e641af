"""The cold-item protocol (docs/coldstart.md): the item split, candidate-restricted ranking, warm-only negatives,
the content baselines, and cold metrics that recompute from a run's own files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from multikg4rec.data.dataset import COLD_TEST, COLD_VALID, WARM, Dataset, split_items
from multikg4rec.evaluation import Evaluator


def test_split_items_divides_the_items_with_interactions_8_1_1_and_is_seeded():
    has = np.ones(1000, dtype=bool)
    has[::10] = False                                       # 100 items nobody interacted with stay warm
    part = split_items(1000, has, (0.8, 0.1, 0.1), seed=3)
    assert (part[~has] == WARM).all()
    assert (part == COLD_VALID).sum() == 90 and (part == COLD_TEST).sum() == 90
    assert np.array_equal(part, split_items(1000, has, (0.8, 0.1, 0.1), seed=3))
    assert not np.array_equal(part, split_items(1000, has, (0.8, 0.1, 0.1), seed=4))


@pytest.fixture(scope="module")
def cold(data_dir, tmp_path_factory):
    from multikg4rec.data import load_dataset
    return load_dataset("ml-100k", {"rating_threshold": 3, "seed": 0, "split": "cold_item"}, data_dir=data_dir,
                        cache_dir=tmp_path_factory.mktemp("c"))


def test_a_cold_item_has_no_train_interaction_and_keeps_its_kg_edges(cold, data_dir, tmp_path):
    part = cold.item_partition
    assert cold.is_cold and part.shape == (cold.n_items,)
    assert (part[cold.train[:, 1]] == WARM).all()                              # no new item in train
    assert set(np.flatnonzero(part == COLD_VALID)) <= set(cold.valid[:, 1])    # every cold-valid item in valid
    assert (part[cold.test[:, 1]] != COLD_VALID).all() and (part[cold.valid[:, 1]] != COLD_TEST).all()
    n_with = (np.bincount(np.concatenate([cold.train, cold.valid, cold.test])[:, 1], minlength=cold.n_items) > 0)
    assert abs((part == COLD_TEST).sum() - 0.1 * n_with.sum()) <= 1
    kg_items = np.unique(cold.kg[:, [0, 2]])
    assert np.isin(np.flatnonzero(part == COLD_TEST), kg_items).any()        # new items keep their KG triples
    ckg = cold.ckg()
    cold_nodes = torch.from_numpy(np.flatnonzero(part != WARM))
    interact = ckg.relation == 0
    assert not torch.isin(ckg.tail[interact], cold_nodes).any()              # but no interact edge
    cold.save(tmp_path / "d.npz")
    again = Dataset.load(tmp_path / "d.npz")
    assert np.array_equal(again.item_partition, part) and again.fingerprint() == cold.fingerprint()


def test_candidates_rank_those_items_alone():
    """candidates = a full ranking over the candidate columns only; target items outside them are dropped."""
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.3, 0.5]])
    target = sp.csr_matrix(np.array([[1, 1, 0, 1, 0]], dtype=np.float32))
    ev = Evaluator(5, ks=(1, 2))
    cand = np.array([False, True, False, True, True])
    res = ev.evaluate(lambda u: scores[u], target, None, return_per_user=True, topk=3, candidates=cand)
    # candidates 1 (0.1), 3 (0.3), 4 (0.5): ranking 4, 3, 1; relevant among them: 1 and 3
    assert res.topk.tolist() == [[4, 3, 1]]
    assert res.metrics["recall@1"] == 0.0 and res.metrics["recall@2"] == 0.5
    assert res.metrics["ndcg@2"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    with pytest.raises(ValueError, match="no candidate"):
        ev.evaluate(lambda u: scores[u], target, candidates=np.zeros(5, bool))


def test_negatives_come_from_the_pool():
    from multikg4rec.sampling import BPRSampler
    train = np.array([[0, 0], [0, 1], [1, 2], [1, 3]] * 50)
    pool = np.array([0, 1, 2, 3, 4])
    s = BPRSampler(train, 10, 64, np.random.default_rng(0), neg_pool=pool)
    negs = np.concatenate([b["neg_items"].numpy() for b in s])
    assert np.isin(negs, pool).all() and len(np.unique(negs)) > 1


def _toy(n_items=4):
    return Dataset("toy", ["u0", "u1"], [f"i{k}" for k in range(n_items)], [""] * n_items, [],
                   train=[[0, 0], [0, 1], [1, 2]], valid=[], test=[], kg=np.zeros((0, 3), np.int64),
                   item_linked=[False] * n_items)


def test_content_knn_scores_the_mean_cosine_to_the_users_items():
    from multikg4rec.config import load_config
    from multikg4rec.models.content_knn import ContentKNN
    ds = _toy()
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 4.0]])
    feats = {"text": (x, torch.tensor([True, True, True, False]))}           # item 3 has no text
    cfg = load_config("content_knn", "ml-100k", None, {"modalities": ["text"]})
    m = ContentKNN(ds, cfg, features=feats).eval()
    s = m.full_sort_predict(torch.tensor([0, 1]))
    c = torch.nn.functional.normalize(x, dim=1)
    assert s[0, 2].item() == pytest.approx(((c[2] @ c[0]) + (c[2] @ c[1])).item() / 2)
    assert s[1, 0].item() == pytest.approx((c[0] @ c[2]).item())
    assert s[0, 3].item() == 0.0 and not any(p.requires_grad for p in m.parameters())


def test_dropoutnet_scores_new_items_from_content_alone(tmp_path):
    from multikg4rec.config import load_config
    from multikg4rec.models.dropoutnet import DropoutNet
    ds = _toy()
    d0 = 4
    state = {"user_emb.weight": torch.randn(2, d0), "item_emb.weight": torch.randn(4, d0)}
    torch.save({"model": state}, tmp_path / "best_model.pt")
    feats = {"text": (torch.randn(4, 3), torch.ones(4, dtype=torch.bool))}
    cfg = load_config("dropoutnet", "ml-100k", None, {"modalities": ["text"], "embedding_size": d0,
                                                      "pretrain_path": str(tmp_path), "hidden": [8, 5]})
    m = DropoutNet(ds, cfg, features=feats)
    assert torch.equal(m.v_pref[3], torch.zeros(d0))              # item 3: no train interaction, no preferences
    assert torch.equal(m.v_pref[0], state["item_emb.weight"][0])
    batch = {"users": torch.tensor([0, 1]), "pos_items": torch.tensor([0, 2]), "neg_items": torch.tensor([3, 1])}
    loss = m.calculate_loss(batch)
    loss.backward()
    assert loss.item() > 0 and m.f_v[0].weight.grad is not None
    m.eval()
    u, i = m.final_embeddings()
    assert u.shape == (2, 5) and i.shape == (4, 5)
    m.p = 1.0                                                     # training with every preference dropped ...
    m.train()
    torch.manual_seed(0)
    a = m.f_v(m._inputs(m.v_pref[:2], m.v_cont[:2]))
    b = m.f_v(torch.cat([torch.zeros(2, d0), m.v_cont[:2]], 1))
    assert torch.allclose(a, b)                                   # ... sees content alone


def _ndcg20(ranked: list[str], relevant: set[str]) -> float:
    dcg = sum(1 / np.log2(j + 2) for j, it in enumerate(ranked[:20]) if it in relevant)
    return dcg / sum(1 / np.log2(j + 2) for j in range(min(len(relevant), 20)))


def test_a_cold_run_writes_both_rankings_and_its_metrics_recompute_from_its_files(data_dir, tmp_path):
    """The cold and the hybrid NDCG@20 of a run recompute from its own files: the split (original ids), the
    item partition, and the two top-K lists."""
    from multikg4rec.cli import main
    from multikg4rec.data.atomic import read_atomic
    assert main(["train", "--model", "bprmf", "--dataset", "ml-100k", "--data-dir", str(data_dir), "--split",
                 "cold_item", "--epochs", "2", "--embedding_size", "8", "--output-dir", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "c"), "--quiet", "--threads", "1"]) == 0
    run = next((tmp_path / "runs").rglob("metrics.json")).parent
    m = json.loads((run / "metrics.json").read_text())
    part = read_atomic(run / "split" / "ml-100k.items")
    kind = dict(zip(part["item_id"], part["partition"]))
    test = read_atomic(run / "split" / "ml-100k.test.inter")
    for suffix, key, keep in (("", "test", {"cold_test"}), ("_hybrid", "test_hybrid", {"warm", "cold_test"})):
        rel: dict[str, set] = {}
        for u, i in zip(test["user_id"], test["item_id"]):
            if kind[i] in keep:
                rel.setdefault(u, set()).add(i)
        lists = {ln.split("\t")[0]: ln.split("\t")[1:] for ln in (run / f"topk{suffix}.tsv").read_text().splitlines()}
        assert set(lists) == set(rel)
        assert all(kind[i] in keep for items in lists.values() for i in items)   # only candidates are ranked
        mine = np.mean([_ndcg20(lists[u], rel[u]) for u in rel])
        assert mine == pytest.approx(m[key]["ndcg@20"], abs=1e-12)
    assert m["n_test_users"] < m["n_test_users_hybrid"]


def test_the_seed_plan_gives_dear_datasets_fewer_seeds_and_the_id_models_the_fewest():
    from collections import Counter
    from multikg4rec.experiments.jobs import coldstart_jobs
    n = Counter((j.dataset, j.label) for j in coldstart_jobs(["ml-100k", "ml-1m", "lastfm-2k", "mine"], list(range(5))))
    assert n["ml-100k", "bprmf"] == n["ml-100k", "multikg4rec"] == 5
    assert n["ml-1m", "multikg4rec"] == n["ml-1m", "multikg4rec fused"] == n["ml-1m", "content_knn"] == 3
    assert n["ml-1m", "bprmf"] == n["ml-1m", "multikg4rec text"] == 1
    assert n["lastfm-2k", "kgat"] == 2 and n["mine", "kgat"] == 5          # a dataset without a plan: --seeds
    assert Counter((j.dataset, j.label) for j in coldstart_jobs(["ml-1m"], [0, 1]))["ml-1m", "kgat"] == 2
