"""The paper's baselines KGCN, SpectralCF, ConvNCF, MKGAT (docs/model.md §8): one epoch each through
the trainer on a small real slice, and one defining equation of each checked by hand."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from multikg4rec.config import load_config
from multikg4rec.data import Dataset
from multikg4rec.errors import UserError
from multikg4rec.training import run


def toy_dataset(n_users=3, n_items=4, n_entities=6, n_relations=2, train=None, kg=None) -> Dataset:
    train = np.array(train if train is not None else [[0, 0], [0, 1], [1, 1], [1, 2], [2, 3], [2, 0]])
    kg = np.array(kg if kg is not None else [[0, 0, 4], [1, 0, 4], [2, 1, 5], [0, 1, 5]]).reshape(-1, 3)
    return Dataset("toy", [f"u{u}" for u in range(n_users)], [f"i{i}" for i in range(n_items)],
                   [f"e{e}" for e in range(n_entities)], [f"r{r}" for r in range(n_relations)],
                   train=train, valid=np.zeros((0, 2)), test=np.zeros((0, 2)), kg=kg,
                   item_linked=np.ones(n_items, dtype=bool))


# ---------------------------------------------------------------- one epoch through the trainer

SMALL = {
    "kgcn": {},
    "spectralcf": {},
    "convncf": {"embedding_size": 16, "channels": [8, 8, 8, 8], "pretrain_path": None},  # 16 -> 8 -> 4 -> 2 -> 1
    "mkgat": {"features": "random", "embedding_size": 16, "layers": [16, 8], "kg_batch_size": 32768},
}


@pytest.mark.parametrize("model", sorted(SMALL))
def test_baseline_one_epoch(ml100k_small, tmp_path, model):
    cfg = load_config(model, "ml-100k", None, {"epochs": 1, "seed": 7, "output_dir": str(tmp_path)} | SMALL[model])
    res = run(cfg, dataset=ml100k_small, quiet=True)
    m = json.loads((res.run_dir / "metrics.json").read_text())
    for split in ("valid", "test"):
        for key in ("recall@20", "mrr@20", "ndcg@20"):
            v = m[split][key]
            assert math.isfinite(v) and 0.0 <= v <= 1.0, (split, key, v)
    log = [json.loads(line) for line in (res.run_dir / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and math.isfinite(log[0]["loss"])
    if model == "mkgat":
        assert math.isfinite(log[0]["kg_loss"])


# ---------------------------------------------------------------- KGCN

def test_kgcn_user_relation_attention_two_neighbours():
    """Item 0 has exactly two KG neighbours (e4 via r0, e5 via r1); with K = 2, H = 1, sum aggregator:
    y = u^T tanh(W (v + softmax(u^T r)_1 e4 + softmax(u^T r)_2 e5) + b)."""
    from multikg4rec.models.kgcn import KGCN
    ds = toy_dataset(kg=[[0, 0, 4], [0, 1, 5]])
    cfg = {"embedding_size": 3, "neighbor_sample_size": 2, "n_iter": 1, "aggregator": "sum", "loss_type": "bce",
           "reg_weight": 0.0, "seed": 1}
    m = KGCN(ds, cfg)
    assert sorted(m.adj_entity[0].tolist()) == [4, 5]
    u, r, e, agg = m.user_emb.weight[1], m.relation_emb.weight, m.entity_emb.weight, m.aggregators[0].linear
    pi = torch.stack([u @ r[0], u @ r[1]])                                 # pi^u_r = u^T r
    w = torch.exp(pi) / torch.exp(pi).sum()                                # softmax over the 2 neighbours
    v_s = w[0] * e[4] + w[1] * e[5]
    expected = u @ torch.tanh(agg.weight @ (e[0] + v_s) + agg.bias)
    with torch.no_grad():
        got = m.score_pairs(torch.tensor([1]), torch.tensor([0]))
        full = m.full_sort_predict(torch.tensor([1]))
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    assert full[0, 0].item() == pytest.approx(expected.item(), abs=1e-6)
    # scaling: release (the authors' code, RecBole): g = mean over the d = 3 dimensions, neighbours averaged over K = 2
    torch.manual_seed(0)
    m = KGCN(ds, cfg | {"scaling": "release"})
    u, r, e, agg = m.user_emb.weight[1], m.relation_emb.weight, m.entity_emb.weight, m.aggregators[0].linear
    pi = torch.stack([(u * r[0]).mean(), (u * r[1]).mean()])
    w = torch.exp(pi) / torch.exp(pi).sum()
    expected = u @ torch.tanh(agg.weight @ (e[0] + (w[0] * e[4] + w[1] * e[5]) / 2) + agg.bias)
    with torch.no_grad():
        assert m.score_pairs(torch.tensor([1]), torch.tensor([0])).item() == pytest.approx(expected.item(), abs=1e-6)
        assert m.full_sort_predict(torch.tensor([1]))[0, 0].item() == pytest.approx(expected.item(), abs=1e-6)


def test_kgcn_neighbour_table():
    from multikg4rec.models.kgcn import sample_neighbors
    kg = np.array([[0, 0, 1], [0, 1, 2], [0, 0, 3], [0, 1, 4], [5, 0, 1]])
    adj_e, adj_r = sample_neighbors(kg, 7, 2, 3, np.random.default_rng(0))
    assert adj_e.shape == (7, 3)
    assert len(set(adj_e[0].tolist())) == 3 and set(adj_e[0].tolist()) <= {1, 2, 3, 4}   # 4 neighbours: distinct
    assert set(adj_e[1].tolist()) <= {0, 5}                                            # 2 neighbours (undirected)
    assert adj_e[6].tolist() == [6, 6, 6] and adj_r[6].tolist() == [2, 2, 2]           # isolated: self loops
    rel = {(0, 1): 0, (0, 2): 1, (0, 3): 0, (0, 4): 1}
    assert all(rel[(0, e)] == r for e, r in zip(adj_e[0].tolist(), adj_r[0].tolist()))


@pytest.mark.parametrize("aggregator", ["sum", "concat", "neighbor"])
@pytest.mark.parametrize("n_iter", [1, 2, 3])
def test_kgcn_deduplicated_ranking_equals_tree_walk(aggregator, n_iter):
    """full_sort_predict (deduplicated nodes, linearity at the first iteration) = score_pairs (tree walk)."""
    from multikg4rec.models.kgcn import KGCN
    ds = toy_dataset(kg=[[0, 0, 4], [0, 1, 5], [1, 1, 4], [4, 0, 5], [2, 0, 3]])   # item 3 only via item 2
    cfg = {"embedding_size": 5, "neighbor_sample_size": 3, "n_iter": n_iter, "aggregator": aggregator,
           "loss_type": "bce", "reg_weight": 0.0, "seed": 3}
    m = KGCN(ds, cfg).eval()
    with torch.no_grad():
        full = m.full_sort_predict(torch.arange(3))
        ref = torch.stack([m.score_pairs(torch.full((4,), u), torch.arange(4)) for u in range(3)])
    assert torch.allclose(full, ref, atol=1e-5)


def test_kgcn_full_ranking_matches_pairwise(ml100k_small, monkeypatch):
    from multikg4rec.models.kgcn import KGCN
    cfg = load_config("kgcn", "ml-100k", None, {"aggregator": "concat"})
    m = KGCN(ml100k_small, cfg).eval()
    users = torch.tensor([0, 3, 77])
    items = torch.arange(ml100k_small.n_items)
    with torch.no_grad():
        full = m.full_sort_predict(users)
        ref = torch.stack([m.score_pairs(torch.full_like(items, u), items) for u in users.tolist()])
        monkeypatch.setattr(KGCN, "EVAL_BLOCK", 1)            # one user per block: the same scores
        blocked = m.full_sort_predict(users)
    assert torch.allclose(full, ref, atol=1e-5)
    assert torch.allclose(blocked, full, atol=1e-6)


# ---------------------------------------------------------------- SpectralCF

def _dense_filter(ds, laplacian):
    n = ds.n_users + ds.n_items
    a = np.zeros((n, n))
    for u, i in ds.train:
        a[u, ds.n_users + i] = a[ds.n_users + i, u] = 1.0
    a += np.eye(n)                                                         # self connections
    deg = a.sum(1)
    if laplacian == "rw":
        lap = np.eye(n) - np.diag(1 / deg) @ a
    else:
        lap = np.eye(n) - np.diag(deg ** -0.5) @ a @ np.diag(deg ** -0.5)
    return lap


@pytest.mark.parametrize("laplacian", ["rw", "sym"])
def test_spectralcf_one_layer_matches_dense(laplacian):
    from multikg4rec.models.spectralcf import SpectralCF
    ds = toy_dataset()
    cfg = {"embedding_size": 4, "n_layers": 1, "laplacian": laplacian, "self_loops": True, "reg_weight": 0.0}
    m = SpectralCF(ds, cfg)
    lap = _dense_filter(ds, laplacian)
    lam, U = np.linalg.eig(lap)
    spectral = (U @ np.linalg.inv(U) + U @ np.diag(lam) @ np.linalg.inv(U)).real  # U U^-1 + U Lam U^-1
    assert np.allclose(spectral, np.eye(len(lap)) + lap, atol=1e-8)
    if laplacian == "sym":                                                 # orthonormal basis: U^-1 = U^T
        lam_s, U_s = np.linalg.eigh(lap)
        assert np.allclose(U_s @ U_s.T + U_s @ np.diag(lam_s) @ U_s.T, np.eye(len(lap)) + lap, atol=1e-8)
    x0 = torch.cat([m.user_emb.weight, m.item_emb.weight]).detach().double().numpy()
    theta = m.filters[0].detach().double().numpy()
    x1 = 1 / (1 + np.exp(-((np.eye(len(lap)) + lap) @ x0 @ theta)))       # sigma((I + L) X Theta')
    with torch.no_grad():
        users, items = m.propagate()
    got = torch.cat([users, items]).double().numpy()
    assert got.shape == (ds.n_users + ds.n_items, 8)                       # X_0 || X_1
    assert np.allclose(got[:, :4], x0, atol=1e-6) and np.allclose(got[:, 4:], x1, atol=1e-5)


def test_spectralcf_adj_filter_is_recboles():
    """``laplacian: adj`` (RecBole 1.2.1's SpectralCF): I + D^-1/2 A D^-1/2, A without self connections,
    degrees counted on A; a low-pass filter, unlike the paper's I + L."""
    from multikg4rec.models.spectralcf import spectral_filter
    ds = toy_dataset()
    n = ds.n_users + ds.n_items
    a = np.zeros((n, n))
    for u, i in ds.train:
        a[u, ds.n_users + i] = a[ds.n_users + i, u] = 1.0
    d = a.sum(1) ** -0.5
    want = np.eye(n) + np.diag(d) @ a @ np.diag(d)
    got = spectral_filter(ds.train, ds.n_users, ds.n_items, "adj", self_loops=False).toarray()
    assert np.allclose(got, want)
    assert np.linalg.eigvalsh(want).min() > -1e-9 and np.linalg.eigvalsh(want).max() <= 2 + 1e-9


# ---------------------------------------------------------------- ConvNCF

def _convncf(ds, d, channels, **kw):
    from multikg4rec.models.convncf import ConvNCF
    cfg = {"embedding_size": d, "channels": channels, "dropout": 0.0, "reg_weight": 0.0, "conv_reg_weight": 0.0,
           "fc_reg_weight": 0.0, "pretrain_path": None} | kw
    return ConvNCF(ds, cfg)


def test_convncf_outer_product_and_conv_chain():
    """E = p q^T (64 x 64), six 2x2 stride-2 convolutions: 64 -> 32 -> 16 -> 8 -> 4 -> 2 -> 1, each
    as F.conv2d; the model's patch-matrix form gives the same score."""
    m = _convncf(toy_dataset(), 64, [32] * 6)
    p, q = torch.randn(3, 64), torch.randn(3, 64)
    # the first layer's patch matrix holds exactly the outer product's entries
    patches = m.interaction_map(p, q)                                       # (3, 32*32, 4)
    assert patches.shape == (3, 1024, 4)
    E = torch.zeros(3, 64, 64)
    E[:, m.patch_rows, m.patch_cols] = patches.reshape(3, -1)
    assert torch.allclose(E, p[:, :, None] * q[:, None, :])
    x, sizes = E.unsqueeze(1), []
    for w, b in zip(m.conv_weights, m.conv_biases):
        c_in = w.shape[0] // 4
        kernel = w.view(4, c_in, -1).permute(2, 1, 0).reshape(-1, c_in, 2, 2)  # row (2 dr + dc) c_in + c
        x = F.relu(F.conv2d(x, kernel, b, stride=2))
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(32, 32, 32), (32, 16, 16), (32, 8, 8), (32, 4, 4), (32, 2, 2), (32, 1, 1)]
    expected = m.predict(x.flatten(1)).squeeze(-1)
    assert torch.allclose(m.score_pairs(p, q), expected, atol=1e-5)


def test_convncf_training_gradients_match_the_conv2d_chain():
    """ConvNCF.TRAIN_BLOCK computes the first two layers block by block and recomputes the first
    layer's activations in the backward pass (_FirstTwoLayers) instead of keeping them: scores and
    every gradient (embeddings, each conv weight and bias) equal autograd's through plain F.conv2d
    layers, dead ReLUs included, in one block or in many."""
    torch.manual_seed(0)
    m = _convncf(toy_dataset(), 16, [8, 8, 8, 8])
    with torch.no_grad():
        m.conv_biases[0].fill_(-0.05)                                      # some first-layer units off
    p, q = torch.randn(5, 16, requires_grad=True), torch.randn(5, 16, requires_grad=True)
    params = [*m.conv_weights, *m.conv_biases, m.predict.weight, p, q]
    m.TRAIN_BLOCK = 1 << 23                                                # one block
    y = m.score_pairs(p, q)
    ours = torch.autograd.grad((y * torch.arange(1.0, 6.0)).sum(), params)
    m.TRAIN_BLOCK = 16 * 8                                                 # blocks of 16 of the 320 positions
    y_blocks = m.score_pairs(p, q)
    ours_blocks = torch.autograd.grad((y_blocks * torch.arange(1.0, 6.0)).sum(), params)
    x = (p[:, :, None] * q[:, None, :]).unsqueeze(1)
    for w, b in zip(m.conv_weights, m.conv_biases):
        c_in = w.shape[0] // 4
        x = F.relu(F.conv2d(x, w.view(4, c_in, -1).permute(2, 1, 0).reshape(-1, c_in, 2, 2), b, stride=2))
    y_ref = m.predict(x.flatten(1)).squeeze(-1)
    ref = torch.autograd.grad((y_ref * torch.arange(1.0, 6.0)).sum(), params)
    assert torch.allclose(y, y_ref, atol=1e-5)
    first = (p[:, m.patch_rows] * q[:, m.patch_cols]).view(-1, 4) @ m.conv_weights[0] + m.conv_biases[0]
    assert (first <= 0).any() and (first > 0).any()
    assert torch.allclose(y_blocks, y_ref, atol=1e-5)
    for g, gb, r in zip(ours, ours_blocks, ref):
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-4)
        assert torch.allclose(gb, r, atol=1e-5, rtol=1e-4)


def test_convncf_training_workspace_gives_autograds_gradients_bit_for_bit():
    """fp32 training keeps e^(1) and its gradient in buffers reused across steps (_Workspace, the default):
    scores and every gradient equal plain autograd's exactly, over two steps of different batch sizes (the
    smaller one reuses a prefix of the buffers, no new allocation); a backward pass whose workspace another
    forward pass has overwritten raises instead of returning wrong gradients; eval mode drops the buffers."""
    torch.manual_seed(0)
    m = _convncf(toy_dataset(), 16, [8, 8, 8, 8])
    with torch.no_grad():
        m.conv_biases[0].fill_(-0.05)                                      # some first-layer units off
    params = [*m.conv_weights, *m.conv_biases, m.predict.weight]
    for n in (7, 3):
        p, q = torch.randn(n, 16, requires_grad=True), torch.randn(n, 16, requires_grad=True)
        got = {}
        for ws in (True, False):
            m.TRAIN_WORKSPACE = ws
            y = m.score_pairs(p, q)
            got[ws] = (y, *torch.autograd.grad((y * torch.arange(1.0, n + 1.0)).sum(), [*params, p, q]))
        assert all(torch.equal(a, b) for a, b in zip(got[True], got[False]))
        e1 = m._workspace.bufs["e1"]
        assert e1.numel() == 7 * 64 * 8                                   # sized by the larger first batch
    m.TRAIN_WORKSPACE = True
    p, q = torch.randn(4, 16, requires_grad=True), torch.randn(4, 16, requires_grad=True)
    y1 = m.score_pairs(p, q)
    m.score_pairs(q, p)                                                    # overwrites y1's e^(1)
    with pytest.raises(RuntimeError, match="reused the first layer's workspace"):
        torch.autograd.grad(y1.sum(), params)
    m.eval()
    assert not m._workspace.bufs


def test_convncf_bf16_trains_in_mixed_precision_and_scores_in_fp32():
    """precision: bf16 runs the CNN's products in bfloat16 (autocast) in training mode only: there the scores
    are fp32 values close to the fp32 model's (not rounded to bfloat16's 8 bits), gradients reach every CNN
    parameter as fp32, and TRAIN_BLOCK does not apply; in eval mode the scores are exactly fp32's. An unknown
    precision is a one-line error."""
    torch.manual_seed(0)
    ds = toy_dataset()
    m32 = _convncf(ds, 16, [8, 8, 8, 8])
    m16 = _convncf(ds, 16, [8, 8, 8, 8], precision="bf16")
    m16.load_state_dict(m32.state_dict())
    p, q = torch.randn(64, 16), torch.randn(64, 16)
    y32, y16 = m32.score_pairs(p, q), m16.score_pairs(p, q)
    assert y16.dtype == torch.float32 and not torch.equal(y16, y32)      # bfloat16 products in training
    assert (y16 - y32).abs().max() < 0.25 * y32.std()                    # ~3 significant digits per product
    assert torch.corrcoef(torch.stack([y16, y32]))[0, 1] > 0.95
    assert not torch.equal(y16, y16.bfloat16().float())                   # not bfloat16-rounded scores
    m16.TRAIN_BLOCK = 16
    grads = torch.autograd.grad(m16.score_pairs(p, q).sum(), list(m16.parameters()), allow_unused=True)
    for (name, _), g in zip(m16.named_parameters(), grads):
        if name.startswith(("conv_", "predict")):
            assert g is not None and g.dtype == torch.float32 and g.abs().sum() > 0, name
    m32.eval(), m16.eval()
    with torch.no_grad():
        assert torch.equal(m16.score_pairs(p, q), m32.score_pairs(p, q))   # evaluation: fp32
        assert torch.equal(m16.full_sort_predict(torch.tensor([1])), m32.full_sort_predict(torch.tensor([1])))
    with pytest.raises(UserError, match="fp32 or bf16"):
        _convncf(ds, 16, [8, 8, 8, 8], precision="fp16")


def test_convncf_full_ranking_matches_pairs():
    ds = toy_dataset()
    m = _convncf(ds, 8, [4, 4, 4]).eval()
    with torch.no_grad():
        full = m.full_sort_predict(torch.tensor([2, 0]))
        for row, u in enumerate([2, 0]):
            p = m.user_emb.weight[u].expand(ds.n_items, -1)
            assert torch.allclose(full[row], m.score_pairs(p, m.item_emb.weight), atol=1e-6)


def test_convncf_pretrain_from_bprmf(ml100k_small, tmp_path):
    bpr = run(load_config("bprmf", "ml-100k", None, {"epochs": 1, "embedding_size": 16,
                                                       "output_dir": str(tmp_path)}), dataset=ml100k_small, quiet=True)
    state = torch.load(bpr.run_dir / "best_model.pt", weights_only=False)["model"]
    m = _convncf(ml100k_small, 16, [4, 4, 4, 4], pretrain_path=str(bpr.run_dir))
    assert torch.equal(m.user_emb.weight, state["user_emb.weight"])
    assert torch.equal(m.item_emb.weight, state["item_emb.weight"])
    with pytest.raises(UserError, match="needs"):
        _convncf(ml100k_small, 8, [4, 4, 4], pretrain_path=str(bpr.run_dir / "best_model.pt"))
    with pytest.raises(UserError, match="2\\^len"):
        _convncf(ml100k_small, 16, [4, 4])
    # pretrain_path: auto finds the BPR-MF run of the same dataset / seed / embedding size / output root
    from multikg4rec.rundir import default_run_dir
    auto = {"pretrain_path": "auto", "dataset": "ml-100k", "seed": 3, "output_dir": str(tmp_path / "auto")}
    with pytest.raises(UserError, match="train it first"):
        _convncf(ml100k_small, 16, [4, 4, 4, 4], **auto)
    target = default_run_dir(load_config("bprmf", "ml-100k", None, {"seed": 3, "embedding_size": 16,
                                                                    "output_dir": str(tmp_path / "auto")}))
    target.mkdir(parents=True)
    (target / "best_model.pt").write_bytes((bpr.run_dir / "best_model.pt").read_bytes())
    m = _convncf(ml100k_small, 16, [4, 4, 4, 4], **auto)
    assert torch.equal(m.item_emb.weight, state["item_emb.weight"])


# ---------------------------------------------------------------- MKGAT

def test_mkgat_transe_score():
    from multikg4rec.models.mkgat import transe_score
    h, r = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert transe_score(h, r, torch.tensor([[1.0, 1.0]])).item() == 0.0          # h + r = t
    assert transe_score(h, r, torch.tensor([[0.0, 0.0]])).item() == 2.0          # ||(1, 1)||^2


def test_mkgat_attention_matches_per_triple_definition():
    """e(h,r,t) = W1 (e_h || e_r || e_t); pi = softmax_h LeakyReLU(w2^T e(h,r,t));
    e_agg(h) = sum pi e(h,r,t); a head without triples aggregates nothing. Values and
    gradients (the attention is trained end to end) against the per-triple definition."""
    from multikg4rec.models.mkgat import Graph, MKGATLayer
    torch.manual_seed(0)
    head = torch.tensor([0, 0, 0, 1, 2, 2, 2])
    rel = torch.tensor([0, 1, 1, 2, 0, 2, 1])
    tail = torch.tensor([1, 2, 3, 0, 0, 4, 4])                                # (2, *, 4) twice: duplicates kept
    g = Graph(head, rel, tail, n_nodes=6, n_relations=3)
    layer = MKGATLayer(4, 5, 3, "concat", dropout=0.0)
    x, R = torch.randn(6, 4, requires_grad=True), torch.randn(3, 3, requires_grad=True)
    probe = torch.randn(6, 5)

    e_agg, att = layer.propagate(x, R, g)
    (e_agg * probe).sum().backward()
    got = [t.grad.clone() for t in (x, R, layer.W1, layer.w2)]
    for t in (x, R, layer.W1, layer.w2):
        t.grad = None

    trip = torch.cat([x[head], R[rel], x[tail]], 1) @ layer.W1.T           # e(h, r, t)
    logit = F.leaky_relu(trip @ layer.w2, 0.2).squeeze(-1)
    rows = []
    for h in range(6):
        sel = head == h
        if sel.any():
            pi = torch.softmax(logit[sel], 0)
            rows.append((pi[:, None] * trip[sel]).sum(0))
            with torch.no_grad():                                          # the layer's attention, CSR order
                assert att[g.head == h].sum().item() == pytest.approx(1.0, abs=1e-6)
                order = torch.argsort(tail[sel], stable=True)
                assert torch.allclose(att[g.head == h], pi[order], atol=1e-6)
        else:
            rows.append(torch.zeros(5))
    expected = torch.stack(rows)
    (expected * probe).sum().backward()
    assert torch.allclose(e_agg, expected, atol=1e-5)
    assert torch.all(e_agg[3:] == 0) and not g.has_edge[3:].any()
    for a, b in zip(got, (x.grad, R.grad, layer.W1.grad, layer.w2.grad)):
        assert torch.allclose(a, b, atol=1e-5)


def test_mkgat_multimodal_entities():
    """Image/text features become new nodes linked to their entity by has_image / has_text (+ inverses)."""
    from multikg4rec.models.mkgat import MKGAT
    ds = toy_dataset()
    img_mask = torch.tensor([True, False, True, False, False, False])
    txt_mask = torch.tensor([True, True, True, True, True, False])
    feats = {"image": (torch.randn(6, 5), img_mask), "text": (torch.randn(6, 7), txt_mask)}
    cfg = load_config("mkgat", "ml-100k", None, {"embedding_size": 8, "layers": [8, 4]})
    m = MKGAT(ds, cfg, features=feats)
    assert m.n_modal == 2 + 5 and m.n_mkg == 6 + 7 and m.n_nodes == 6 + 7 + 3
    R2 = 2 * (ds.n_relations + 1)
    triples = {tuple(t) for t in m.mkg_triples.tolist()}
    assert (0, R2, 6) in triples and (6, R2 + 1, 0) in triples               # item 0 -has_image-> node 6
    assert (2, R2, 7) in triples                                              # item 2 -has_image-> node 7
    assert (0, R2 + 2, 8) in triples and (8, R2 + 3, 0) in triples           # item 0 -has_text-> node 8
    assert all(h < m.n_mkg and t < m.n_mkg for h, _, t in triples)            # no users in the MKG
    assert m.ego().shape == (m.n_nodes, 8)
    with torch.no_grad():
        assert torch.allclose(m.ego()[6], m.encoders["image"](feats["image"][0][0]))   # e_m = W_m x_m + b_m
    users, items = m.propagate()
    assert users.shape == (3, 8 + 8 + 4) and items.shape == (4, 20)
    with pytest.raises(UserError, match="not in the features"):
        MKGAT(ds, cfg | {"modalities": ["audio"]}, features=feats)
    bare = MKGAT(ds, cfg | {"modalities": []})                                 # "w/o t&v"
    assert bare.n_modal == 0
