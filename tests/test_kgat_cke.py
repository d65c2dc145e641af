"""KGAT and CKE on a small real slice (ml100k_small): losses go down, predictions are
well-formed and deterministic, and one epoch runs through the trainer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from multikg4rec.config import load_config
from multikg4rec.models import get_model_class
from multikg4rec.sampling import BPRSampler, KGSampler

MODELS = ["kgat", "cke"]


def make(name, ds, seed=0, **over):
    cfg = load_config(name, "ml-100k", overrides=over)
    torch.manual_seed(seed)
    return get_model_class(name)(ds, cfg), cfg


def cf_batch(ds, n=256, seed=0):
    return next(iter(BPRSampler(ds.train, ds.n_items, n, np.random.default_rng(seed))))


def kg_batch(model, n=256, seed=0):
    triples, n_nodes = model.kg_train_triples()
    return next(iter(KGSampler(triples, n_nodes, n, np.random.default_rng(seed))))


def descend(model, loss_fn, batch, steps=5, lr=0.01):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", MODELS)
def test_registry_and_flags(name):
    cls = get_model_class(name)
    assert cls.name == name and cls.requires_kg and cls.uses_kg_loss


@pytest.mark.parametrize("name", MODELS)
def test_cf_step_reduces_loss(ml100k_small, name):
    model, _ = make(name, ml100k_small, mess_dropout=0.0) if name == "kgat" else make(name, ml100k_small)
    losses = descend(model, model.calculate_loss, cf_batch(ml100k_small))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("name", MODELS)
def test_kg_step_reduces_loss(ml100k_small, name):
    model, _ = make(name, ml100k_small)
    losses = descend(model, model.calculate_kg_loss, kg_batch(model))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_kg_triples(ml100k_small):
    kgat, _ = make("kgat", ml100k_small)
    cke, _ = make("cke", ml100k_small)
    t, n = kgat.kg_train_triples()
    ckg = ml100k_small.ckg()
    assert n == ckg.n_nodes and len(t) == len(ckg.head) == 2 * (len(ml100k_small.train) + len(ml100k_small.kg))
    t, n = cke.kg_train_triples()
    assert n == ml100k_small.n_entities and np.array_equal(t, ml100k_small.kg)
    # kg_loss_triples: kg (RecBole's KGAT with kg_reverse_r): the KG's triples and their inverses, with the relation
    # ids the CKG gives them (0 = interact), so that TransR's W_r of each relation is the one the attention uses
    own, _ = make("kgat", ml100k_small, kg_loss_triples="kg")
    t, n = own.kg_train_triples()
    kg, R = ml100k_small.kg, ml100k_small.n_relations + 1
    assert n == ml100k_small.n_entities and len(t) == 2 * len(kg) and t[:, [0, 2]].max() < n
    expect = np.concatenate([np.stack([kg[:, 0], kg[:, 1] + 1, kg[:, 2]], 1),
                             np.stack([kg[:, 2], kg[:, 1] + 1 + R, kg[:, 0]], 1)])
    assert np.array_equal(t, expect)
    losses = descend(own, own.calculate_kg_loss, kg_batch(own))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    with pytest.raises(Exception, match="kg_loss_triples"):
        make("kgat", ml100k_small, kg_loss_triples="all")[0].kg_train_triples()


@pytest.mark.parametrize("name", MODELS)
def test_full_sort_predict(ml100k_small, name):
    model, _ = make(name, ml100k_small)
    users = torch.arange(min(7, ml100k_small.n_users))
    model.eval()
    with torch.no_grad():
        model.prepare_eval()
        scores = model.full_sort_predict(users)
        again = model.full_sort_predict(users)
    assert scores.shape == (len(users), ml100k_small.n_items)
    assert torch.isfinite(scores).all() and torch.equal(scores, again)
    if name == "kgat":
        # cached propagation equals a fresh one; the cache is dropped by train()
        u, i = model.propagate()
        assert torch.allclose(scores, u[users] @ i.T, atol=1e-5)
        model.train()
        assert model._eval_cache is None


@pytest.mark.parametrize("name", MODELS)
def test_deterministic_with_fixed_seed(ml100k_small, name):
    out = []
    for _ in range(2):
        model, _ = make(name, ml100k_small, seed=123)
        torch.manual_seed(7)
        losses = descend(model, model.calculate_loss, cf_batch(ml100k_small), steps=2)
        losses += descend(model, model.calculate_kg_loss, kg_batch(model), steps=2)
        model.on_epoch_end(1)
        model.eval()
        with torch.no_grad():
            model.prepare_eval()
            out.append((losses, model.full_sort_predict(torch.arange(5))))
    assert out[0][0] == out[1][0] and torch.equal(out[0][1], out[1][1])


def test_kgat_attention_update(ml100k_small):
    model, _ = make("kgat", ml100k_small)
    head = model.attention.head
    uniform = model.att_id.clone()
    deg = torch.bincount(head, minlength=model.n_nodes).float()
    assert torch.allclose(uniform, 1.0 / deg[head])
    descend(model, model.calculate_kg_loss, kg_batch(model), steps=2)
    model.on_epoch_end(1)
    assert not torch.allclose(model.att_id, uniform)
    sums = torch.zeros(model.n_nodes).index_add(0, head, model.att_id)
    has = deg > 0
    assert torch.allclose(sums[has], torch.ones(int(has.sum())), atol=1e-5)
    # the attention is a buffer: saved and restored with the weights
    state = model.state_dict()
    assert "att_id" in state
    fresh, _ = make("kgat", ml100k_small, seed=5)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.att_id, model.att_id)
    fresh.eval()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(fresh.full_sort_predict(torch.arange(3)), model.full_sort_predict(torch.arange(3)))


def test_kgat_without_attention_keeps_uniform(ml100k_small):
    model, _ = make("kgat", ml100k_small, attention=False, aggregator="gcn")
    before = model.att_id.clone()
    model.on_epoch_end(1)
    assert torch.equal(model.att_id, before)


@pytest.mark.parametrize("name", MODELS)
def test_one_epoch_through_trainer(ml100k_small, tmp_path, name):
    from multikg4rec.training import run
    cfg = load_config(name, "ml-100k", overrides={"epochs": 1, "batch_size": 4096, "kg_batch_size": 8192,
                                                  "output_dir": str(tmp_path), "quiet": True})
    res = run(cfg, run_dir=tmp_path / name, quiet=True, dataset=ml100k_small)
    m = res.metrics
    assert m["epochs_run"] == 1 and m["best_epoch"] == 1
    assert all(np.isfinite(v) for v in m["test"].values())
    assert (tmp_path / name / "log.jsonl").read_text().count("kg_loss") == 1
