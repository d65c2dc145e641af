"""Multi-KG4Rec (docs/model.md §2-§6) on a small real slice of ml-100k with random modal features."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from multikg4rec.config import load_config
from multikg4rec.errors import UserError
from multikg4rec.models import get_model_class
from multikg4rec.models.multikg4rec import MultiKG4Rec, random_features
from multikg4rec.explain import modality_report
from multikg4rec.sampling import BPRSampler, KGSampler

FEAT_DIM = 24   # small stand-in for CLIP's 512 keeps the tests fast


def make_config(**overrides):
    cfg = load_config("multikg4rec", "ml-100k")
    cfg.update({"fusion_items": 64, "seed": 7})   # fused-feature cache on: cheap steps (null is exact)
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def features(ml100k_small):
    """Random features; like the real stores, only items (and a few entities) have content."""
    feats = random_features(ml100k_small, ["image", "text"], FEAT_DIM, seed=0, missing=0.2)
    out = {}
    for m, (x, mask) in feats.items():
        mask = mask.clone()
        mask[ml100k_small.n_items + 50:] = False
        out[m] = (x * mask[:, None], mask)
    return out


@pytest.fixture(scope="module")
def batches(ml100k_small):
    rng = np.random.default_rng(0)
    cf = next(iter(BPRSampler(ml100k_small.train, ml100k_small.n_items, 512, rng)))
    ckg = ml100k_small.ckg()
    triples = torch.stack([ckg.head, ckg.relation, ckg.tail], 1).numpy()
    kg = next(iter(KGSampler(triples, ckg.n_nodes, 1024, rng)))
    return cf, kg


def build(ds, features, **overrides):
    torch.manual_seed(0)
    return MultiKG4Rec(ds, make_config(**overrides), features=features)


def test_registry_and_contract(ml100k_small, features):
    assert get_model_class("multikg4rec") is MultiKG4Rec
    assert MultiKG4Rec.requires_kg and MultiKG4Rec.uses_kg_loss and MultiKG4Rec.uses_features
    m = build(ml100k_small, features)
    # §5: per modality d + sum(layers) = 64 + 64 + 32 + 16 = 176, two modalities
    m.eval()
    m.prepare_eval()
    scores = m.full_sort_predict(torch.arange(7))
    assert scores.shape == (7, ml100k_small.n_items)
    assert torch.isfinite(scores).all()
    u, i = m._eval_cache
    assert u.shape == (ml100k_small.n_users, 352) and i.shape == (ml100k_small.n_items, 352)


def test_cf_and_kg_steps_reduce_the_loss_on_a_fixed_batch(ml100k_small, features, batches):
    cf, kg = batches
    m = build(ml100k_small, features, mess_dropout=0.0, fusion_dropout=0.0)
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    first = None
    for _ in range(4):
        loss = m.calculate_loss(cf)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m.calculate_loss(cf).item() < first
    first = None
    for _ in range(4):
        loss = m.calculate_kg_loss(kg)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m.calculate_kg_loss(kg).item() < first


def test_gradients_reach_every_module(ml100k_small, features, batches):
    cf, kg = batches
    m = build(ml100k_small, features)
    (m.calculate_loss(cf) + m.calculate_kg_loss(kg)).backward()
    for name in ("proj.image.weight", "proj.text.weight", "fusion.blocks.0.attn.w_q.image.weight",
                 "fusion.blocks.2.ffn.text.0.weight", "propagation.image.layers.0.W1.weight",
                 "propagation.text.layers.2.W2.weight", "transr.image.W", "transr.text.relation_emb",
                 "id_emb.text.weight"):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


@pytest.mark.parametrize("overrides", [
    {"modalities": ["text"]},                       # w/o v
    {"modalities": ["image"]},                      # w/o t
    {"modalities": []},                             # w/o t&v (ID embeddings only, KGAT-like)
    {"fusion": "t2v"},
    {"fusion": "v2t"},
    {"fusion": "self"},
    {"fusion": "none"},
    {"fusion_items": None},                         # every item fused with gradients each step
    {"fusion_blocks": 1, "fusion_heads": 4, "seq_len": 8, "layers": [32, 16], "aggregator": "gcn"},
    {"attention": False},
])
def test_every_ablation_builds_and_runs_one_step(ml100k_small, features, batches, overrides):
    cf, kg = batches
    m = build(ml100k_small, features, **overrides)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    for loss in (m.calculate_loss(cf), m.calculate_kg_loss(kg)):
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.on_epoch_end(0)
    m.eval()
    m.prepare_eval()
    s = m.full_sort_predict(torch.tensor([0, 3]))
    assert s.shape == (2, ml100k_small.n_items) and torch.isfinite(s).all()
    n_tables = max(1, len(m.modalities))
    assert m._eval_cache[0].shape[1] == n_tables * (64 + sum(m.config["layers"]))
    assert m.use_fusion == (bool(m.modalities) and m.fusion_mode != "none")


def test_fusion_items_cache_is_used_in_training_but_eval_is_exact(ml100k_small, features, batches):
    cf, _ = batches
    m = build(ml100k_small, features, fusion_items=16, fusion_dropout=0.0)
    m.calculate_loss(cf).backward()
    assert m._cache_ok
    m.eval()
    m.prepare_eval()
    a = m.full_sort_predict(torch.arange(5))
    m.fused_cache.zero_()                 # a stale cache must not change evaluation
    m._eval_cache = None
    b = m.full_sort_predict(torch.arange(5))
    assert torch.allclose(a, b, atol=1e-5)


def test_modality_report_per_modality(ml100k_small, features):
    m = build(ml100k_small, features)
    m.on_epoch_end(0)
    user = int(np.argmax(np.diff(ml100k_small.train_csr.indptr)))
    rep = modality_report(m, user, k=10)
    assert len(rep["items"]) == 10
    assert set(ml100k_small.train_csr[user].indices) >= set(rep["items"])
    for key in ("fusion", "propagation", "score", "modality"):
        assert set(rep[key]) == {"image", "text"}
        assert all(np.isfinite(v) and 0 <= v <= 1 for v in rep[key].values())
        assert sum(rep[key].values()) == pytest.approx(1.0, abs=1e-5)
    for m_ in ("image", "text"):
        assert len(rep["item_attention"][m_]) == 10 and len(rep["item_fusion"][m_]) == 10
        # the combined share averages the fusion attention and the score share (not the cross-table logits)
        assert rep["modality"][m_] == pytest.approx((rep["fusion"][m_] + rep["score"][m_]) / 2)
        parts = np.array(rep["item_scores"][m_])
        assert rep["score"][m_] == pytest.approx(abs(parts.sum()) / sum(abs(np.sum(rep["item_scores"][t]))
                                                                     for t in ("image", "text")), rel=1e-4)
    assert m.training                      # the report leaves the mode as it found it
    # one modality, and the ID-only ablation
    rep = modality_report(build(ml100k_small, features, modalities=["text"]), user)
    assert rep["fusion"] == {"text": pytest.approx(1.0)} and rep["modality"]["text"] == pytest.approx(1.0)
    rep = modality_report(build(ml100k_small, features, modalities=[]), user)
    assert rep["modality"] == {"id": pytest.approx(1.0)} and "fusion" not in rep


def test_determinism_with_a_fixed_seed(ml100k_small, features, batches):
    """Same seed -> same init, BFS sequences, dropout masks and cache samples. Values are
    compared to float rounding: with 2 threads, BLAS results can differ in the last bits
    from one call to the next (memory alignment), which is not a seeding matter."""
    cf, kg = batches
    out = []
    for _ in range(2):
        m = build(ml100k_small, features)
        torch.manual_seed(1)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        loss = m.calculate_loss(cf)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.on_epoch_end(0)
        m.eval()
        m.prepare_eval()
        out.append((loss.item(), m.calculate_kg_loss(kg).item(), m.full_sort_predict(torch.arange(5)), m.seq))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-5, abs=1e-7)
    assert out[0][1] == pytest.approx(out[1][1], rel=1e-5, abs=1e-7)
    assert torch.allclose(out[0][2], out[1][2], rtol=1e-4, atol=1e-5)
    assert torch.equal(out[0][3], out[1][3])


def test_state_dict_round_trip(ml100k_small, features, batches):
    cf, _ = batches
    m = build(ml100k_small, features)
    m.calculate_loss(cf).backward()
    m.on_epoch_end(0)
    m.eval()
    m.prepare_eval()
    ref = m.full_sort_predict(torch.arange(4))
    m2 = build(ml100k_small, features)
    m2.load_state_dict(m.state_dict())
    m2.eval()
    assert torch.allclose(m2.full_sort_predict(torch.arange(4)), ref, atol=1e-5)
    assert not any(k.startswith(("raw_", "seq", "fused_cache")) for k in m.state_dict())


def test_features_are_checked(ml100k_small, features):
    with pytest.raises(UserError, match="features"):
        MultiKG4Rec(ml100k_small, make_config(), features=None)
    with pytest.raises(UserError, match="image"):
        MultiKG4Rec(ml100k_small, make_config(), features={"text": features["text"]})
    x, mask = features["text"]
    with pytest.raises(UserError, match="aligned"):
        MultiKG4Rec(ml100k_small, make_config(modalities=["text"]), features={"text": (x[:10], mask[:10])})
    with pytest.raises(UserError, match="fusion"):
        MultiKG4Rec(ml100k_small, make_config(fusion="sideways"), features=features)
    # random stand-in features, and no features needed without modalities
    m = MultiKG4Rec(ml100k_small, make_config(features="random", random_feature_dim=8), features=None)
    assert m.raw_image.shape[1] == 8
    MultiKG4Rec(ml100k_small, make_config(modalities=[]), features=None)


def test_explain_writes_report_and_plot(ml100k_small, features, tmp_path):
    import yaml

    from multikg4rec.explain import explain, explain_run
    m = build(ml100k_small, features)
    rep = explain(m, ml100k_small, 2, out=tmp_path / "ex")
    assert rep["user_token"] == str(ml100k_small.user_tokens[2])
    assert (tmp_path / "ex" / f"user{rep['user_token']}.png").stat().st_size > 0
    # a run directory: config.yaml + checkpoint.pt
    run = tmp_path / "run"
    run.mkdir()
    cfg = make_config(features="random", random_feature_dim=FEAT_DIM)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    torch.manual_seed(0)
    trained = MultiKG4Rec(ml100k_small, cfg)
    torch.save({"model": trained.state_dict()}, run / "checkpoint.pt")
    token = str(ml100k_small.user_tokens[5])
    rep = explain_run(run, token, dataset=ml100k_small)
    assert rep["user"] == 5 and sum(rep["modality"].values()) == pytest.approx(1.0, abs=1e-5)
    assert (run / "explain" / f"user{token}.json").is_file()
    with pytest.raises(UserError):
        explain_run(run, "no-such-user", dataset=ml100k_small)


def test_fused_rows_start_at_the_scale_of_the_tables_and_item_id_option(ml100k_small, features):
    """fusion_output_gain null = 1/sqrt(d): the fused item rows (LayerNorm output, per-element unit variance,
    row norm ~sqrt(d)) start at norm ~1 like the ID / projected rows; 1.0 keeps the plain LayerNorm.
    item_id_embedding adds a learned ID row to items WITH content (docs/model.md §2 gives them none)."""
    d = 64
    norms = {}
    for gain in (None, 1.0):
        m = build(ml100k_small, features, fusion_output_gain=gain).eval()
        with torch.no_grad():
            z = m.fuse(m.pre_tables())
        norms[gain] = torch.stack([z[k].norm(dim=1).mean() for k in z]).mean().item()
    assert norms[1.0] == pytest.approx(d ** 0.5, rel=0.05)
    assert norms[None] == pytest.approx(1.0, rel=0.05)
    with_content = features["text"][1][: ml100k_small.n_items].nonzero().squeeze(1)[:5]
    plain = build(ml100k_small, features)
    ided = build(ml100k_small, features, item_id_embedding=True)
    assert torch.all(plain.idw_text[with_content] == 0) and torch.all(ided.idw_text[with_content] == 1)
    assert torch.equal(plain.idw_text[ml100k_small.n_items:], ided.idw_text[ml100k_small.n_items:])
    with torch.no_grad():   # the item's table row = projected content + its ID row
        rows = ided.node_rows("text", with_content)
        expect = ided._embed("text", ided.raw_text[ided.crow_text[with_content]]) + ided.id_emb["text"].weight[with_content]
    assert torch.allclose(rows, expect, atol=1e-6)


def test_epoch_diagnostics_attention_concentration_and_norms(ml100k_small, features):
    """diagnostics() (written to log.jsonl each epoch): users' mean largest attention weight per table
    (uniform attention gives the mean of 1/degree over users) and mean layer-0 row norms."""
    m = build(ml100k_small, features, attention=False)
    assert m.diagnostics() == {}
    m.on_epoch_end(1)
    diag = m.diagnostics()
    head = m.attention.structure.row
    deg = torch.bincount(head, minlength=m.n_nodes).float()[m.n_entities:]
    for t in ("image", "text"):
        assert diag[t]["user_max_att"] == pytest.approx((1.0 / deg[deg > 0]).mean().item(), abs=1e-4)
        with torch.no_grad():
            l0 = m.layer0(m.pre_tables(), m.fuse(m.pre_tables()))[t]
        assert diag[t]["item_norm"] == pytest.approx(l0[: m.n_items].norm(dim=1).mean().item(), abs=1e-3)
    m = build(ml100k_small, features)
    m.on_epoch_end(1)   # learned attention is more concentrated than uniform, never above 1
    assert all(1.0 >= m.diagnostics()[t]["user_max_att"] > diag[t]["user_max_att"] for t in ("image", "text"))


def test_item_id_embedding_fused_adds_the_id_row_to_the_fused_row(ml100k_small, features):
    """item_id_embedding: fused -> layer-0 item row = z_i^m + ID_i^m; pre-fusion tables (and TransR) unchanged."""
    plain = build(ml100k_small, features).eval()
    fused = build(ml100k_small, features, item_id_embedding="fused").eval()
    with torch.no_grad():
        fused.id_emb["text"].weight.normal_()            # make the ID rows matter
        pre = fused.pre_tables()
        z = fused.fuse(pre)
        l0 = fused.layer0(pre, z)
        n = ml100k_small.n_items
        for t in ("image", "text"):
            assert torch.allclose(l0[t][:n], z[t] + fused.id_emb[t].weight[:n])
            assert torch.equal(l0[t][n:], pre[t][n:])
        assert torch.equal(plain.idw_text, fused.idw_text)  # the pre-fusion tables are docs/model.md §2's
    with pytest.raises(UserError, match="item_id_embedding"):
        build(ml100k_small, features, item_id_embedding="yes")


def test_item_id_channel_is_a_third_id_only_table_summed_in_the_score(ml100k_small, features, batches):
    """item_id_embedding: channel -> tables image, text, id; the id table's layer 0 is the learned ID rows of
    every node (no content, no fusion), the modal tables are docs/model.md §2's, and the score is the sum of the
    three channels' inner products."""
    m = build(ml100k_small, features, item_id_embedding="channel").eval()
    assert m.tables == ["image", "text", "id"]
    n = ml100k_small.n_items
    with torch.no_grad():
        m.id_emb["id"].weight.normal_()
        pre = m.pre_tables()
        l0 = m.layer0(pre, m.fuse(pre))
        assert torch.equal(l0["id"], m.id_emb["id"].weight)
        assert not torch.equal(l0["text"][:n], pre["text"][:n])          # items: fused rows
        u, i, _ = m.propagate()
        per = u.shape[1] // 3
        users = torch.tensor([0, 5])
        scores = m.full_sort_predict(users)
        parts = sum(u[users, k * per:(k + 1) * per] @ i[:, k * per:(k + 1) * per].T for k in range(3))
        assert torch.allclose(scores, parts, atol=1e-5)
        # the id channel is the last block of e*, its own propagation of the ID rows (items, then users)
        out_id = m.propagation["id"](l0["id"], m.adjacency("id"), rows=m.ui_rows)
        assert torch.allclose(i[:, 2 * per:], out_id[:n], atol=1e-6)
        assert torch.allclose(u[:, 2 * per:], out_id[n:], atol=1e-6)
    m.train()
    loss = m.calculate_loss(batches[0])
    loss.backward()
    assert m.id_emb["id"].weight.grad.abs().sum() > 0 and m.proj["text"].weight.grad.abs().sum() > 0
    assert m.calculate_kg_loss(batches[1]).item() > 0
    rep = modality_report(m, 0)
    assert rep["tables"] == ["image", "text", "id"] and sum(rep["modality"].values()) == pytest.approx(1.0)
    with pytest.raises(UserError, match="name of the ID-only table"):
        build(ml100k_small, features, modalities=["id", "text"])


def test_without_modalities_it_is_kgat_step_for_step(ml100k_small, batches):
    """w/o t&v (no modal features, no fusion) is KGAT (docs/model.md §4-6): same parameters from the same seed, same CF and
    KG losses, same gradients, same scores after the attention update. Catches the two drifting apart."""
    from multikg4rec.models.kgat import KGAT
    cf, kg = batches
    common = {"seed": 7, "mess_dropout": 0.1, "reg_weight": 1e-5, "kg_reg_weight": 1e-5, "layers": [64, 32, 16]}
    torch.manual_seed(0)
    kgat = KGAT(ml100k_small, load_config("kgat", "ml-100k") | common)
    torch.manual_seed(0)
    multi = MultiKG4Rec(ml100k_small, make_config(modalities=[], **common))
    assert torch.equal(kgat.node_emb.weight, multi.id_emb["id"].weight)
    for name in ("cf", "kg"):
        torch.manual_seed(1)
        la = kgat.calculate_loss(cf) if name == "cf" else kgat.calculate_kg_loss(kg)
        torch.manual_seed(1)
        lb = multi.calculate_loss(cf) if name == "cf" else multi.calculate_kg_loss(kg)
        assert torch.equal(la, lb), name
        la.backward()
        lb.backward()
    assert torch.equal(kgat.node_emb.weight.grad, multi.id_emb["id"].weight.grad)
    assert torch.equal(kgat.transr.W.grad, multi.transr["id"].W.grad)
    kgat.on_epoch_end(0)
    multi.on_epoch_end(0)
    for m in (kgat, multi):
        m.eval()
        m.prepare_eval()
    users = torch.arange(10)
    assert torch.equal(kgat.full_sort_predict(users), multi.full_sort_predict(users))


def test_user_rows_are_the_projection_of_the_mean_of_their_items_features(ml100k_small, features):
    """docs/model.md §2: a user's content is the mean of its TRAIN items' features, projected: LeakyReLU(W x_u + b) +
    its ID row. The full table computes it as the mean of the items' projected rows (the projection is
    affine); checked here against the definition by a plain loop, and against ``node_rows`` (the batch path,
    which projects the users' mean features)."""
    m = build(ml100k_small, features)
    ds = ml100k_small
    pre = m.pre_tables()
    train = ds.train
    nodes = torch.arange(m.n_nodes)
    for t in m.modalities:
        x, mask = features[t]
        W, b = m.proj[t].weight, m.proj[t].bias
        ids = m.id_emb[t].weight
        checked = 0
        for u in range(0, ds.n_users, 5):                                    # a spread of users
            items = [i for i in train[train[:, 0] == u, 1] if mask[i]]
            row = ds.n_entities + u
            expect = ids[row].clone()
            if items:
                xu = x[items].mean(0)
                expect = expect + torch.nn.functional.leaky_relu(W @ xu + b, 0.2)
                checked += 1
            torch.testing.assert_close(pre[t][row], expect, rtol=1e-5, atol=1e-6)
        assert checked > 10
        content = mask.nonzero().squeeze(1)                                   # entities: their own features
        torch.testing.assert_close(pre[t][content], torch.nn.functional.leaky_relu(x[content] @ W.T + b, 0.2),
                                   rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.node_rows(t, nodes), pre[t], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["multikg4rec", "kgat"])
def test_cf_loss_is_bpr_plus_l2_of_the_layer0_rows_by_a_plain_loop(ml100k_small, features, batches, model):
    """docs/model.md §6 (KGAT Eq. 13, 15): L_CF = mean -ln sigma(y(u, i) - y(u, j)) + lambda * sum ||e^(0)||^2 / (2 B),
    y = e_u*^T e_i*, computed triple by triple from ``propagate()`` and the layer-0 tables. Catches the one
    gather of ``Recommender.propagated_bpr`` mixing up items and users or reading the wrong layer-0 rows."""
    from multikg4rec.models.kgat import KGAT
    cf = {k: v[:16] for k, v in batches[0].items()}
    lam = 0.5                                               # large, so a wrong L2 term shows
    if model == "kgat":
        torch.manual_seed(0)
        m = KGAT(ml100k_small, load_config("kgat", "ml-100k") | {"reg_weight": lam})
        layer0 = [m.node_emb.weight]
    else:
        m = build(ml100k_small, features, reg_weight=lam)
    m.eval()                                                # no dropout, every item fused exactly
    with torch.no_grad():
        loss = m.calculate_loss(cf)
        u_all, i_all = m.propagate()[:2]
        if model == "multikg4rec":
            pre = m.pre_tables()
            l0 = m.layer0(pre, m.fuse(pre))
            layer0 = [l0[t] for t in m.tables]
    bpr, reg = 0.0, 0.0
    for u, i, j in zip(cf["users"].tolist(), cf["pos_items"].tolist(), cf["neg_items"].tolist()):
        y_ui, y_uj = float(u_all[u] @ i_all[i]), float(u_all[u] @ i_all[j])
        bpr += -np.log(1.0 / (1.0 + np.exp(-(y_ui - y_uj))))
        for node in (m.n_entities + u, i, j):               # CKG node ids: users after the entities
            reg += sum(float(t[node].detach().pow(2).sum()) for t in layer0)
    n = len(cf["users"])
    assert loss.item() == pytest.approx(bpr / n + lam * reg / (2 * n), rel=1e-5)


def test_evaluation_after_the_attention_update_fuses_once_and_a_training_step_refreshes_it(
        ml100k_small, features, batches, monkeypatch):
    """The exact fused rows are computed once per parameter state (attention update, then evaluation); the
    fused Adam step leaves parameter versions alone, so a loss must drop them: the evaluation after a step
    equals a fresh model's with the same weights."""
    cf, _ = batches
    m = build(ml100k_small, features, fusion_dropout=0.0)
    calls = []
    real = m._fuse_all_nograd
    monkeypatch.setattr(m, "_fuse_all_nograd", lambda *a, **k: calls.append(1) or real(*a, **k))
    m.eval()
    m.update_attention()
    m.prepare_eval()
    assert len(calls) == 1
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=0.05, fused=True)
    m.calculate_loss(cf).backward()
    opt.step()
    m.eval()
    m.prepare_eval()
    assert len(calls) == 2
    fresh = build(ml100k_small, features, fusion_dropout=0.0)
    fresh.load_state_dict(m.state_dict())
    fresh.eval()
    fresh.prepare_eval()
    assert torch.equal(m.full_sort_predict(torch.arange(5)), fresh.full_sort_predict(torch.arange(5)))
