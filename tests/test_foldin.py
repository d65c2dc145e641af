"""Fold-in of new items and users into a trained graph model (multikg4rec.foldin), on real ml-100k runs under
the cold-item split: rebuilt with nothing new it gives the trained scoring rows to every digit; a new item that
copies a cold-test item (content, KG edges both ways) is built as that item is."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from multikg4rec.cli import main
from multikg4rec.foldin import FoldInError, NewItem, grow
from multikg4rec.rundir import load_run, run_features

SMALL = ["--epochs", "1", "--embedding_size", "16", "--layers", "[16]", "--kg_embedding_size", "16"]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("foldin")
    common = ["--dataset", "ml-100k", "--data-dir", str(data_dir), "--cache-dir", str(root / "cache"),
              "--output-dir", str(root / "runs"), "--quiet", "--threads", "1", "--split", "cold_item"]
    assert main(["train", "--model", "kgat", *common, *SMALL]) == 0
    assert main(["train", "--model", "multikg4rec", *common, *SMALL, "--encoder", "minilm", "--modalities", "[text]",
                 "--fusion_ffn_dim", "32", "--seq_len", "8"]) == 0
    out = {}
    for m in ("kgat", "multikg4rec"):
        run = next((root / "runs" / "ml-100k" / m).glob("*/metrics.json")).parent
        model, ds, _ = load_run(run)
        model.eval()
        with torch.no_grad():
            model.prepare_eval()
        out[m] = (model, ds, run_features(run))
    return out


def _twin(ds, feats, x: int) -> NewItem:
    """A new item with item x's content and every KG triple of x, x as head ("out") or as tail ("in")."""
    tok = lambda e: str(ds.entity_tokens[e]) or str(ds.item_tokens[e])
    links = [(str(ds.relation_tokens[r]), tok(t)) for h, r, t in ds.kg if h == x]
    links += [(str(ds.relation_tokens[r]), tok(h), "in") for h, r, t in ds.kg if t == x]
    return NewItem("twin", links, {m: v[x] for m, (v, mask) in (feats or {}).items() if mask[x]})


def _cold_item(ds, feats) -> int:
    """A cold-test item with a KG edge in each direction and content in every modality."""
    for x in np.flatnonzero(ds.item_partition == 2):
        if (ds.kg[:, 0] == x).any() and (ds.kg[:, 2] == x).any() and all(m[x] for _, m in (feats or {}).values()):
            return int(x)
    pytest.skip("no cold-test item with edges both ways")


@pytest.mark.parametrize("name", ["kgat", "multikg4rec"])
def test_grown_by_nothing_is_the_trained_model_to_every_digit(trained, name):
    model, ds, feats = trained[name]
    u0, i0 = model.scoring_rows()
    new, g = grow(model, ds, feats)
    u1, i1 = new.scoring_rows()
    assert torch.equal(u0, u1) and torch.equal(i0, i1)
    assert (g.node_map == np.arange(ds.n_entities + ds.n_users)).all()


def test_a_new_item_copying_a_cold_item_is_built_as_that_item(trained):
    """KGAT: with the cold item's (untrained) ID row set to zero like a new node's, the copy's final row is the
    item's: the same edges (both directions), attention and propagation."""
    model, ds, feats = trained["kgat"]
    x = _cold_item(ds, feats)
    with torch.no_grad():
        model.node_emb.weight[x] = 0
        model.update_attention()                  # the trained attention follows its rows, as after an epoch
    new, g = grow(model, ds, feats, items=[_twin(ds, feats, x)])
    xn = int(g.new_items[0])
    assert xn == ds.n_items and g.ent_map[ds.n_items] == ds.n_items + 1      # entities moved up by one
    _, items = new.scoring_rows()
    assert torch.allclose(items[xn], items[x], atol=1e-6) and items[x].abs().sum() > 0


def test_multikg4rec_builds_a_new_item_from_its_content_as_the_cold_evaluation_does(trained):
    """Multi-KG4Rec's cold item has no ID row: the copy's layer-0 row is the item's content projection, and with
    the item's BFS sample (the one thing drawn at random when the graph is built) its final row is the item's."""
    model, ds, feats = trained["multikg4rec"]
    x = _cold_item(ds, feats)
    new, g = grow(model, ds, feats, items=[_twin(ds, feats, x)])
    xn = int(g.new_items[0])
    pre = new.pre_tables()["text"]
    assert torch.equal(pre[xn], pre[x])
    with torch.no_grad():
        s = new.seq[x].clone()
        new.seq[xn] = torch.where(s == x, xn, torch.where(s == xn, x, s))
        new.seq_mask[xn] = new.seq_mask[x]
        new.update_attention()
        new.prepare_eval()
    _, items = new.scoring_rows()
    assert torch.allclose(items[xn], items[x], atol=1e-6)


def test_a_new_user_is_a_user_node_whose_content_is_the_mean_of_its_items(trained):
    """Multi-KG4Rec's user row is its ID row plus its train items' content (docs/model.md (3)); a new user with
    user 0's items has that content row and no ID row."""
    model, ds, feats = trained["multikg4rec"]
    items = ds.train_csr[0].indices.tolist()
    new, g = grow(model, ds, feats, users=[("new", items)])
    nu = g.dataset.n_entities + int(g.new_users[0])
    pre = new.pre_tables()["text"]
    u0 = g.dataset.n_entities
    assert torch.allclose(pre[nu], pre[u0] - new.id_emb["text"].weight[u0], atol=1e-6)
    users, _ = new.scoring_rows()
    assert users.shape[0] == ds.n_users + 1 and users[-1].abs().sum() > 0


def test_unknown_links_are_refused(trained):
    model, ds, feats = trained["kgat"]
    with pytest.raises(FoldInError, match="unknown relation"):
        grow(model, ds, feats, items=[NewItem("x", [("no-such-relation", str(ds.item_tokens[0]))])])
    with pytest.raises(FoldInError, match="unknown entity"):
        grow(model, ds, feats, items=[NewItem("x", [(str(ds.relation_tokens[0]), "no-such-entity")])])
    with pytest.raises(FoldInError, match="direction"):
        grow(model, ds, feats, items=[NewItem("x", [(str(ds.relation_tokens[0]), str(ds.item_tokens[0]), "up")])])


@pytest.mark.parametrize("name", ["kgat", "multikg4rec"])
def test_reusing_the_trained_model_gives_what_a_full_rebuild_gives(trained, name):
    """The fast path (``reuse``: the attention of untouched heads and Multi-KG4Rec's fused chunks taken from the
    trained model, one BFS for the new items only) gives every attention value and scoring row a full rebuild
    gives; the trained items keep their sequences."""
    model, ds, feats = trained[name]
    x = _cold_item(ds, feats)
    add = dict(items=[_twin(ds, feats, x)], users=[("new", ds.train_csr[0].indices.tolist())])
    fast, g = grow(model, ds, feats, **add)
    full, _ = grow(model, ds, feats, reuse=False, **add)
    for t in fast.attention_tables:
        a, b = getattr(fast, f"att_{t}"), getattr(full, f"att_{t}")
        assert torch.equal(a, b) and not torch.equal(a, fast.uniform_attention())
    for a, b in zip(fast.scoring_rows(), full.scoring_rows()):
        assert torch.equal(a, b)
    if name == "multikg4rec":
        assert ds.n_items > 1024                      # the trained rows span a reused chunk and a re-fused one
        assert torch.equal(fast.seq[: ds.n_items], torch.from_numpy(g.node_map)[model.seq])
        assert fast.seq_mask[-1].sum() > 1             # the new item's own BFS reached its linked entities
