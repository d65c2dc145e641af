"""`multikg4rec export` and `multikg4rec serve`: a real server (uvicorn) on 127.0.0.1, real HTTP requests, and
the page in a real headless browser (Debian's chromium + chromium-driver, driven by Selenium)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from multikg4rec.cli import main

httpx = pytest.importorskip("httpx")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`multikg4rec serve` in a subprocess, on a free loopback port."""

    def __init__(self, bundle: Path):
        self.bundle = bundle
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "multikg4rec.cli", "serve", "--bundle", str(bundle),
                                      "--port", str(self.port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read().decode())
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start")

    def get(self, path, **kw):
        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path, **kw):
        return httpx.post(self.url + path, timeout=60, **kw)

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)


def _links_of_the_most_linked_item(ds) -> list[dict]:
    """The KG triples of the item with the most (as head), as a new item's links."""
    x = int(np.bincount(ds.kg[ds.kg[:, 0] < ds.n_items, 0]).argmax())
    tok = lambda e: str(ds.entity_tokens[e]) or str(ds.item_tokens[e])
    return [{"relation": str(ds.relation_tokens[r]), "entity": tok(t)} for h, r, t in ds.kg if h == x]


def _scores(server, path: str) -> dict:
    return {it["item"]: it["score"] for it in server.get(path).json()["items"]}


def _same_after_a_kill(server, path: str) -> "Server":
    """SIGKILL the server and start it again on its bundle: ``path`` answers the same scores. Returns the new
    server."""
    before = _scores(server, path)
    server.stop(signal.SIGKILL)
    server = Server(server.bundle)
    assert _scores(server, path) == pytest.approx(before)
    return server


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """A KGAT run (warm, ml-100k), a content-KNN run (cold items, MiniLM text) and a BPR-MF run, each exported."""
    root = tmp_path_factory.mktemp("serve")
    common = ["--dataset", "ml-100k", "--data-dir", str(data_dir), "--cache-dir", str(root / "cache"),
              "--output-dir", str(root / "runs"), "--quiet", "--threads", "1"]
    assert main(["train", "--model", "kgat", *common, "--epochs", "2", "--embedding_size", "16", "--layers", "[16]",
                 "--kg_embedding_size", "16"]) == 0
    assert main(["train", "--model", "content_knn", *common, "--split", "cold_item", "--encoder", "minilm",
                 "--modalities", "[text]"]) == 0
    assert main(["train", "--model", "bprmf", *common, "--epochs", "1"]) == 0
    out = {}
    for model in ("kgat", "content_knn", "bprmf"):
        run = next((root / "runs" / "ml-100k" / model).glob("*/metrics.json")).parent
        assert main(["export", "--run", str(run), "--out", str(root / f"bundle-{model}")]) == 0
        out[model] = (run, root / f"bundle-{model}")
    return out


@pytest.fixture(scope="module")
def kgat_server(runs):
    s = Server(runs["kgat"][1])
    yield s
    s.stop()


def test_get_recommend_equals_the_cli(kgat_server, runs, capsys):
    """Every user's list of `multikg4rec recommend` (all users): k within the server's precomputed top lists
    (TOP_CACHE_K) and beyond them (ranked per request) give the same items in the same order."""
    from multikg4rec.serve import TOP_CACHE_K
    run = runs["kgat"][0]
    k_big = TOP_CACHE_K + 30
    main(["recommend", "--run", str(run), "--all-users", "--k", str(k_big), "--no-labels"])
    want: dict[str, list[str]] = {}
    for ln in capsys.readouterr().out.splitlines()[1:]:
        user, _, item = ln.split("\t")[:3]
        want.setdefault(user, []).append(item)
    for user in ("1", "42", "917", "943"):
        for k in (15, k_big):
            got = kgat_server.get(f"/recommend?user={user}&k={k}").json()["items"]
            assert [it["item"] for it in got] == want[user][:k] and [it["rank"] for it in got] == list(range(1, k + 1))
    r = kgat_server.get("/recommend?user=1&k=5&exclude=none").json()["items"]
    assert len(r) == 5 and all(it["title"] for it in r)          # titles from the bundle's catalogue


def test_cached_top_lists_equal_ranking_each_request(runs):
    """The batched top lists GET /recommend reads equal ranking each user on its own, for every user and
    every exclusion set; after an added item (a new catalogue) they are stale until ranked again."""
    from multikg4rec.serve import Service
    svc = Service(runs["kgat"][1])
    for exclude in ("all", "train"):
        svc.refresh_top(exclude, wait=True)
        for u in range(svc.rows[0].shape[0]):
            cached = svc.cached_top(u, 30, exclude)
            version, svc.version = svc.version, -1          # no cache: ranked for this request alone
            live = svc.rank(None, u, 30, exclude=exclude)
            svc.version = version
            assert np.array_equal(cached[0], live[0]) and np.array_equal(cached[1], live[1])
    svc._loading = True                                  # no background re-ranking: see the stale state
    svc._changed()
    assert svc.cached_top(0, 30, "all") is None


def test_bad_requests_are_json_4xx_naming_the_field(kgat_server):
    cases = [(kgat_server.get("/recommend?user=nobody"), 404, "user"),
             (kgat_server.get("/recommend?user=1&k=0"), 422, "k"),
             (kgat_server.get("/recommend?user=1&k=999999"), 422, "k"),
             (kgat_server.get("/recommend?user=1&exclude=some"), 422, "exclude"),
             (kgat_server.post("/recommend", json={"items": ["no-such-item"]}), 404, "items"),
             (kgat_server.post("/recommend", json={"items": []}), 422, "items"),
             (kgat_server.post("/recommend", content=b"x" * (2 << 20), headers={"content-type": "application/json"}),
              413, "body"),
             (kgat_server.get("/explain?user=1&item=nope"), 404, "item"),
             (kgat_server.get("/catalogue/..%2Fmanifest.json"), 404, ""),     # no route: nothing outside is read
             (kgat_server.get("/catalogue/manifest.json"), 404, "catalogue"),
             (kgat_server.post("/items", json={"item": "new", "text": "a film"}), 422, "links"),   # KGAT: no text
             (kgat_server.post("/items", json={"item": "new", "links": [{"relation": "nope", "entity": "1"}]}),
              422, "unknown relation"),
             (kgat_server.post("/items", json={"item": "new", "links": [{"relation": "r", "entity": "1",
                                                                          "direction": "up"}]}), 422, "direction")]
    for r, code, field in cases:
        assert r.status_code == code, (r.request.url, r.text)
        assert field in json.dumps(r.json()), r.text


def test_session_recommendations_and_search_and_explanations(kgat_server):
    hits = kgat_server.get("/items?q=star wars").json()["items"]
    assert hits and "Star Wars" in hits[0]["title"]
    r = kgat_server.post("/recommend", json={"items": [hits[0]["item"]], "k": 10}).json()
    assert len(r["items"]) == 10 and hits[0]["item"] not in [it["item"] for it in r["items"]]
    assert r["fold_in"].startswith("exact")                       # a user node added to the CKG
    top = kgat_server.get("/recommend?user=1&k=3").json()["items"][0]["item"]
    ex = kgat_server.get(f"/explain?user=1&item={top}").json()
    assert ex["modality"] is None                                  # KGAT has no modalities
    assert ex["paths"], "a KG model's top item should have a KG path from the user's items"
    p = ex["paths"][0]
    assert p["path"][0] == {"user": "1"} and p["path"][-1]["item"] == top and p["path"][1]["relation"] == "interact"
    assert all(a["score"] >= b["score"] for a, b in zip(ex["paths"], ex["paths"][1:]))
    m = kgat_server.get("/models").json()[0]
    assert m["model"] == "kgat" and m["can_add_items"] is True and len(m["fingerprint"]) == 16


def test_an_id_model_cannot_add_items_and_folds_a_session_in_approximately(runs):
    from multikg4rec.serve import Service, fold_in_rule
    svc = Service(runs["bprmf"][1])
    ok, why = svc.can_add_items()
    assert not ok and "ID model" in why and fold_in_rule("bprmf").startswith("approximation")
    with pytest.raises(ValueError):
        svc.add_item("new", "a film", None)


def test_a_kg_model_takes_a_new_item_through_its_links_and_replays_it_after_a_kill(runs):
    """KGAT: a new item linked like an existing item becomes a node of the CKG; it is ranked at once (scored by
    the rebuilt model), its links are refused when unknown, and a server killed with SIGKILL serves it again
    with the same scores."""
    from multikg4rec.serve import Service
    bundle = runs["kgat"][1]
    ds = Service(bundle).bundle.dataset
    links = _links_of_the_most_linked_item(ds)
    s = Server(bundle)
    try:
        r = s.post("/items", json={"item": "linked-new", "text": "A new film", "links": links})
        assert r.status_code == 201, r.text
        assert r.json()["item"] == "linked-new" and r.json()["title"] == "A new film"
        n = s.get("/health").json()["items"]
        assert n == ds.n_items + 1
        scores = _scores(s, f"/recommend?user=1&k={n}")
        assert "linked-new" in scores and np.isfinite(scores["linked-new"])
        assert s.get("/items?q=a new film").json()["items"][0]["item"] == "linked-new"
        paths = s.get("/explain?user=1&item=linked-new").json()["paths"]       # drawn on the grown CKG
        assert paths and all(p["path"][-1]["item"] == "linked-new" for p in paths)
        assert {p["path"][2]["entity"] for p in paths} <= {link["entity"] for link in links} | \
            {f"item {link['entity']}" for link in links}
        s = _same_after_a_kill(s, f"/recommend?user=1&k={n}")
    finally:
        s.stop()
        (bundle / "journal.jsonl").unlink(missing_ok=True)


def test_a_new_item_gets_the_row_the_cold_start_evaluation_gives_and_survives_a_kill(runs, data_dir):
    """POST /items with an item's content text gives the content row the feature store gave that item (what the
    cold-start evaluation ranks); the item is recommendable at once, and after SIGKILL and a restart."""
    from multikg4rec.features.content import ITEM, collect_content
    from multikg4rec.serve import Service
    bundle = runs["content_knn"][1]
    svc = Service(bundle)
    ds = svc.bundle.dataset
    cold = int(np.flatnonzero(ds.item_partition == 2)[0])
    tok = str(ds.item_tokens[cold])
    c = collect_content("ml-100k", data_dir, descriptions=True)
    text = next(t for t, k, i in zip(c.text, c.kinds, c.ids) if k == ITEM and str(i) == tok)
    row = svc.encode_item(text, None)
    assert np.allclose(row.numpy(), svc.bundle.item_rows[cold].numpy(), atol=1e-5)
    known = np.concatenate([ds.train, ds.valid, ds.test])
    user = str(ds.user_tokens[np.setdiff1d(np.arange(ds.n_users), known[known[:, 1] == cold, 0])[0]])

    s = Server(bundle)
    try:
        t0 = time.time()
        r = s.post("/items", json={"item": "brand-new", "text": text})
        assert r.status_code == 201, r.text
        n = s.get("/health").json()["items"]
        recs = s.get(f"/recommend?user={user}&k={n}").json()["items"]
        took = time.time() - t0
        scores = {it["item"]: it["score"] for it in recs}
        assert "brand-new" in scores and scores["brand-new"] == pytest.approx(scores[tok], abs=1e-5)
        assert took < 30
        assert s.post("/items", json={"item": "brand-new", "text": "again"}).status_code == 409
        assert s.post("/items", json={"item": "x", "image": "../manifest.json"}).status_code == 404
        s = _same_after_a_kill(s, f"/recommend?user={user}&k={n}")
    finally:
        s.stop()
        (bundle / "journal.jsonl").unlink(missing_ok=True)


@pytest.mark.parametrize("model", ["kgat", "content_knn"])
def test_a_named_new_user_is_the_sessions_fold_in_and_survives_items_added_after_and_a_kill(runs, model):
    """POST /users: the user is the model's fold-in of its items (KGAT: a user node of the grown CKG;
    content-KNN: the mean of the items' content rows), so GET /recommend for it ranks as POST /recommend
    ranked the same items before it existed; it keeps its name through a later added item (KGAT rebuilds
    the graph) and through SIGKILL and a restart."""
    from multikg4rec.serve import Service
    bundle = runs[model][1]
    ds = Service(bundle).bundle.dataset
    mine = [str(ds.item_tokens[i]) for i in (3, 10, 42, 77, 300)]
    s = Server(bundle)
    try:
        session = s.post("/recommend", json={"items": mine, "k": 20}).json()["items"]
        r = s.post("/users", json={"user": "alice", "items": mine})
        assert r.status_code == 201, r.text
        assert s.get("/health").json()["users"] == ds.n_users + 1
        got = s.get("/recommend?user=alice&k=20").json()["items"]
        assert [it["item"] for it in got[:10]] == [it["item"] for it in session[:10]]
        assert [it["score"] for it in got] == pytest.approx([it["score"] for it in session], abs=1e-5)
        assert not set(mine) & {it["item"] for it in got}                      # its profile is its train
        assert s.post("/users", json={"user": "alice", "items": mine}).status_code == 409
        assert s.post("/users", json={"user": "bob", "items": ["no-such-item"]}).status_code == 404
        if model == "kgat":
            links = _links_of_the_most_linked_item(ds)
            assert s.post("/items", json={"item": "later", "links": links}).status_code == 201
            assert s.get("/explain?user=alice&item=later").status_code == 200
        n = s.get("/health").json()["items"]
        s = _same_after_a_kill(s, f"/recommend?user=alice&k={n - 5}")
    finally:
        s.stop()
        (bundle / "journal.jsonl").unlink(missing_ok=True)


def test_an_id_models_named_user_is_the_mean_of_its_items_scoring_rows(runs):
    """BPR-MF exports its ID rows (the scores are their inner products), so a named user folds in by the
    documented approximation: the mean of its items' rows, ranked without its items."""
    from multikg4rec.serve import Service
    svc = Service(runs["bprmf"][1])
    items = [0, 5, 9]
    svc.add_user("approx", [str(svc.bundle.dataset.item_tokens[i]) for i in items], persist=False)
    u = svc.user_index["approx"]
    assert u == svc.bundle.dataset.n_users
    assert torch.allclose(svc.rows[0][u], svc.bundle.item_rows[items].mean(0))
    top, _ = svc.rank(None, u, 20)
    assert len(top) == 20 and not set(items) & set(top.tolist())


def test_a_damaged_bundle_is_one_line(runs, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(runs["kgat"][1], bad)
    with open(bad / "embeddings.npz", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    rc = main(["serve", "--bundle", str(bad), "--port", str(_port())])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "embeddings.npz" in err and "damaged" in err
    rc = main(["export", "--run", str(runs["kgat"][0]), "--out", str(runs["kgat"][1])])
    assert rc == 2 and "not an empty folder" in capsys.readouterr().err


def _chrome():
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        if os.environ.get("CI"):
            pytest.fail("CI must have chromium and chromium-driver (.ci/run installs them)")
        pytest.skip("no chromium / chromedriver here (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service as ChromeService
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,900"):
        opts.add_argument(a)
    return webdriver.Chrome(service=ChromeService(driver), options=opts)


def test_the_page_in_a_real_browser(kgat_server, tmp_path):
    """Pick a user, see the top 10 with titles, click one for its explanation; search and build a session."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    b = _chrome()
    try:
        wait = WebDriverWait(b, 30)
        b.get(kgat_server.url + "/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "model"), "kgat on ml-100k"))
        b.find_element(By.ID, "user").send_keys("1")
        b.find_element(By.ID, "go").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#recs li")) == 10)
        want = [it["title"] for it in kgat_server.get("/recommend?user=1&k=10").json()["items"]]
        assert [e.text for e in b.find_elements(By.CSS_SELECTOR, "#recs li .title")] == want
        b.find_elements(By.CSS_SELECTOR, "#recs li")[0].click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#why .path"))
        assert "user 1 -[interact]->" in b.find_element(By.CSS_SELECTOR, "#why .path").text
        b.find_element(By.ID, "q").send_keys("star wars")
        b.find_element(By.ID, "search").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results li"))
        b.find_elements(By.CSS_SELECTOR, "#results li")[0].click()
        b.find_element(By.ID, "session-go").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "recs-title"), "session (1 items)"))
        assert len(b.find_elements(By.CSS_SELECTOR, "#recs li")) == 10
        b.find_element(By.ID, "new-user").send_keys("page-user")          # the session kept as a named user
        b.find_element(By.ID, "save-user").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "recs-title"), "Top 10 for user page-user"))
        want = [it["title"] for it in kgat_server.get("/recommend?user=page-user&k=10").json()["items"]]
        assert [e.text for e in b.find_elements(By.CSS_SELECTOR, "#recs li .title")] == want
        b.find_elements(By.CSS_SELECTOR, "#recs li")[0].click()
        wait.until(lambda d: "user page-user -[interact]->" in d.find_element(By.ID, "why").text
                   or "No KG path" in d.find_element(By.ID, "why").text)
        shot = os.environ.get("MULTIKG4REC_SCREENSHOT")
        if shot:
            b.save_screenshot(shot)
    finally:
        b.quit()
        (kgat_server.bundle / "journal.jsonl").unlink(missing_ok=True)
