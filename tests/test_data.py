"""Data layer: atomic files, preprocessing (docs/model.md §1), split, CKG, cache, bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from multikg4rec.data import RawDataset, build_dataset, load_dataset, read_raw, split_per_user
from multikg4rec.data.atomic import read_atomic
from multikg4rec.data.dataset import k_core
from multikg4rec.errors import UserError


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _toy_raw(n_users=6, per_user=10, seed=0):
    rng = np.random.default_rng(seed)
    rows = [(f"u{u}", f"i{i}") for u in range(n_users) for i in rng.choice(30, per_user, replace=False)]
    inter = pd.DataFrame(rows, columns=["user", "item"])
    kg = pd.DataFrame({"head": ["e0", "e1", "e0"], "relation": ["genre", "genre", "director"],
                       "tail": ["g1", "g1", "d9"]})
    link = pd.DataFrame({"item": ["i0", "i1", "nope"], "entity": ["e0", "e1", "e5"]})
    return RawDataset("toy", inter, kg=kg, link=link)


# ---------------------------------------------------------------- split

def test_split_ratios_and_every_user_in_all_three():
    users = np.repeat(np.arange(50), np.arange(3, 53))  # user u has u + 3 rows
    part = split_per_user(users, (0.8, 0.1, 0.1), seed=1)
    for u in range(50):
        p = part[users == u]
        n = len(p)
        expected = max(1, int(np.floor(0.1 * n)))
        assert (p == 1).sum() == expected and (p == 2).sum() == expected
        assert (p == 0).sum() == n - 2 * expected >= 1


def test_split_is_seeded_and_users_below_three_stay_in_train():
    users = np.array([0, 0, 1, 1, 1, 1, 1, 2])
    a, b = split_per_user(users, seed=7), split_per_user(users, seed=7)
    np.testing.assert_array_equal(a, b)
    assert (a[users == 0] == 0).all() and (a[users == 2] == 0).all()
    big = np.repeat(np.arange(200), 20)
    assert not np.array_equal(split_per_user(big, seed=1), split_per_user(big, seed=2))


def test_k_core_is_iterative():
    # user 2 has 1 interaction -> dropped; then item 9 (only used by user 2 and 0) falls below 2
    users = np.array([0, 0, 0, 1, 1, 1, 2])
    items = np.array([1, 2, 9, 1, 2, 3, 9])
    keep = k_core(users, items, min_user=2, min_item=2)
    np.testing.assert_array_equal(keep, [True, True, False, True, True, False, False])


# ---------------------------------------------------------------- preprocessing

def test_build_ids_kg_and_ckg():
    ds = build_dataset(_toy_raw(), {"seed": 3})
    assert ds.n_users == 6 and len(ds.train) + len(ds.valid) + len(ds.test) == 60
    # items are entities 0..n_items-1; linked items carry their KG token
    i0, i1 = list(ds.item_tokens).index("i0"), list(ds.item_tokens).index("i1")
    assert ds.entity_tokens[i0] == "e0" and ds.entity_tokens[i1] == "e1"
    assert ds.item_linked.sum() == 2 and ds.n_entities == ds.n_items + 2  # + g1, d9
    # triples are over entity ids: (i0, genre, g1), (i1, genre, g1), (i0, director, d9)
    ent = list(ds.entity_tokens)
    rel = list(ds.relation_tokens)
    got = {(ent[h] if h >= ds.n_items else ds.item_tokens[h], rel[r], ent[t]) for h, r, t in ds.kg}
    assert got == {("i0", "genre", "g1"), ("i1", "genre", "g1"), ("i0", "director", "d9")}
    ckg = ds.ckg()
    R = ds.n_relations + 1
    assert ckg.n_relations == 2 * R and ckg.n_nodes == ds.n_entities + ds.n_users
    n_e = len(ds.train) + len(ds.kg)
    assert len(ckg.head) == 2 * n_e
    # interact edges come from TRAIN only and point user -> item; their inverses item -> user
    inter = ckg.relation == 0
    assert inter.sum() == len(ds.train)
    assert (ckg.head[inter] >= ds.n_entities).all() and (ckg.tail[inter] < ds.n_items).all()
    np.testing.assert_array_equal(ckg.head[n_e:].numpy(), ckg.tail[:n_e].numpy())
    np.testing.assert_array_equal(ckg.relation[n_e:].numpy(), ckg.relation[:n_e].numpy() + R)
    valid_pairs = {tuple(p) for p in ds.valid}
    train_edges = {(int(h) - ds.n_entities, int(t)) for h, t in zip(ckg.head[inter], ckg.tail[inter])}
    assert not (valid_pairs & train_edges)


def test_rating_threshold_and_warnings(caplog):
    raw = _toy_raw()
    raw.inter["rating"] = np.tile([1.0, 5.0], len(raw.inter) // 2)
    ds = build_dataset(raw, {"rating_threshold": 3, "seed": 0})
    assert len(ds.train) + len(ds.valid) + len(ds.test) == 30
    assert "absent from the interactions" in caplog.text  # the 'nope' link


def test_users_with_fewer_than_three_warn(caplog):
    raw = _toy_raw()
    raw.inter = pd.concat([raw.inter, pd.DataFrame({"user": ["lonely", "lonely"], "item": ["i0", "i1"]})])
    ds = build_dataset(raw, {"seed": 0})
    assert "1 users have fewer than 3 interactions" in caplog.text
    lonely = list(ds.user_tokens).index("lonely")
    assert (ds.train[:, 0] == lonely).sum() == 2 and lonely not in ds.test[:, 0]
    ds2 = build_dataset(raw, {"seed": 0, "min_user_inter": 3})
    assert "lonely" not in set(ds2.user_tokens)


def test_a_dataset_with_nothing_to_evaluate_is_a_user_error():
    """Every user below 3 interactions: no valid or test pair, so every metric would be NaN (a run that 'finished'
    with best epoch -1); the build says why instead."""
    raw = _toy_raw(n_users=4, per_user=2)
    with pytest.raises(UserError, match="nothing to validate or test on: no user has the 3 interactions"):
        build_dataset(raw, {"seed": 0})


# ---------------------------------------------------------------- atomic files and bad input

def test_atomic_malformed_line_names_file_and_line(tmp_path):
    p = _write(tmp_path / "x.inter", "user_id:token\titem_id:token\n1\t2\n3\t4\t5\n")
    with pytest.raises(UserError, match=r"x.inter:3: malformed line"):
        read_atomic(p, required=("user_id", "item_id"))


def test_atomic_bad_float_and_header(tmp_path):
    p = _write(tmp_path / "y.inter", "user_id:token\titem_id:token\trating:float\n1\t2\t4\n1\t3\tfive\n")
    with pytest.raises(UserError, match=r"y.inter:3: column 'rating' is declared float"):
        read_atomic(p)
    q = _write(tmp_path / "z.inter", "user_id\titem_id\n1\t2\n")
    with pytest.raises(UserError, match=r"z.inter:1: header field"):
        read_atomic(q)


def test_bring_your_own_atomic_dataset(tmp_path, caplog):
    d = tmp_path / "shop"
    rows = "\n".join(f"u{u}\tp{(u * 7 + k) % 40}" for u in range(20) for k in range(8))
    _write(d / "shop.inter", "user_id:token\titem_id:token\n" + rows + "\n")
    _write(d / "shop.kg", "head_id:token\trelation_id:token\ttail_id:token\nE1\tbrand\tB\nE2\tbrand\tB\nE9\tbrand\tC\n")
    _write(d / "shop.link", "item_id:token\tentity_id:token\np0\tE1\np7\tE2\nghost\tE9\n")
    ds = load_dataset("shop", {"seed": 1}, data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert ds.n_users == 20 and ds.item_linked.sum() == 2 and len(ds.kg) == 3
    assert "1 of 3 item->entity links name items absent" in caplog.text


def test_missing_dataset_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="dataset 'nope' not found"):
        load_dataset("nope", {}, data_dir=tmp_path)


def test_cache_roundtrip_and_config_sensitivity(tmp_path):
    d = tmp_path / "mini"
    rows = "\n".join(f"{u}\t{(u + k) % 25}\t{1 + (k % 5)}" for u in range(30) for k in range(6))
    _write(d / "mini.inter", "user_id:token\titem_id:token\trating:float\n" + rows + "\n")
    cache = tmp_path / "cache"
    a = load_dataset("mini", {"seed": 5}, data_dir=tmp_path, cache_dir=cache)
    files = list((cache / "datasets").glob("mini-*.npz"))
    assert len(files) == 1
    b = load_dataset("mini", {"seed": 5}, data_dir=tmp_path, cache_dir=cache)
    for k in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    np.testing.assert_array_equal(a.user_tokens, b.user_tokens)
    c = load_dataset("mini", {"seed": 5, "rating_threshold": 3}, data_dir=tmp_path, cache_dir=cache)
    assert len(c.train) < len(a.train) and len(list((cache / "datasets").glob("mini-*.npz"))) == 2


# ---------------------------------------------------------------- real data

@pytest.mark.parametrize("name, users, items, linked", [
    ("ml-100k", 943, None, None),
    ("ml-1m", 6040, 3706, 2347),
    ("lastfm-2k", 1858, 1425, 397),
])
def test_real_datasets_load(data_dir, cache_dir, name, users, items, linked):
    cfg = {"seed": 2024, "rating_threshold": 3 if name == "ml-100k" else None}
    ds = load_dataset(name, cfg, data_dir=data_dir, cache_dir=cache_dir)
    assert ds.n_users == users
    if items:
        assert ds.n_items == items
    if linked:
        assert ds.item_linked.sum() == linked
    assert ds.has_kg and len(ds.kg) > 0
    # every user with >= 3 interactions is in all three splits
    counts = np.bincount(np.concatenate([ds.train[:, 0], ds.valid[:, 0], ds.test[:, 0]]), minlength=ds.n_users)
    enough = np.flatnonzero(counts >= 3)
    assert set(enough) <= set(ds.valid[:, 0]) and set(enough) <= set(ds.test[:, 0])


def test_ml1m_restores_original_ids(data_dir):
    raw = read_raw("ml-1m", data_dir)
    assert len(raw.inter) == 1_000_209
    # DERK remap 0 -> MovieLens user 1; user 1 rated Toy Story (MovieID 1)
    assert ((raw.inter["user"] == "1") & (raw.inter["item"] == "1")).any()
    assert len(raw.kg) == 20_782


def test_amazon_book_without_kg(data_dir, cache_dir):
    raw = read_raw("amazon-book", data_dir)
    assert raw.kg is None and len(raw.inter) == 846_434
    assert any("no KG triples" in n for n in raw.notes)
