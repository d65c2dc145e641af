"""``multikg4rec serve --bundle BUNDLE``: an HTTP API and a web page over an exported run (FastAPI + uvicorn).

Endpoints (by original ids; OpenAPI docs at ``/docs``):

* ``GET /health``, ``GET /models``: what is loaded, its metrics and data fingerprint;
* ``GET /recommend?user=U&k=20&exclude=all``: the top-K of ``multikg4rec recommend --all-users`` (the same
  ranking and scores: ``Evaluator.ranked``, ties to the lower item id, the user's known items left out), read
  from every user's top ``TOP_CACHE_K`` ranked in one batched pass per catalogue;
* ``POST /recommend`` ``{"items": [...], "k": 20}``: the top-K for an anonymous profile of those items, by
  the model's fold-in rule (``FOLD_IN``);
* ``GET /items?q=...``: title search; ``POST /items``: add a new item from its content (models that embed
  unseen items from content; others answer 409 with the reason); added items persist in the bundle's
  ``journal.jsonl`` and are replayed on start;
* ``GET /explain?user=U&item=I``: per-modality shares (Multi-KG4Rec) and the top KG paths linking the user's
  items to I, ranked by the product of the model's attention weights along the path;
* ``GET /``: the web page; ``GET /catalogue/<file>``: a poster of the bundle's catalogue (nothing else is
  ever read from disk).

Bad requests are a JSON 4xx naming the field: an unknown user or item 404, ``k`` out of range 422, a body
over ``MAX_BODY`` bytes 413.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import BaseModel, Field

from .bundle import Bundle
from .errors import UserError
from .evaluation import Evaluator
from .foldin import GROWABLE, FoldInError, NewItem as GraphItem, grow, ready
from .recommend import BATCH, EXCLUDE, rank_rows

#: largest request body accepted (a session's item list, a new item's text)
MAX_BODY = 1 << 20
#: GET /recommend answers k up to this from every user's top list, ranked in one batched pass when the
#: catalogue changes (the evaluator's ranking, as ``multikg4rec recommend``); a larger k is ranked per request
TOP_CACHE_K = 100
#: how each model scores an anonymous profile (POST /recommend)
FOLD_IN = {
    "content_knn": "exact: the profile is the mean of the items' content rows, the model's own user rule",
    "graph": "exact: the profile is a new user node with interact edges to its items; the model is rebuilt over "
             "the grown CKG with its trained weights and its attention recomputed (multikg4rec.foldin); the new "
             "node has no trained ID row (zero)",
    "default": "approximation: the profile is the mean of the items' scoring rows (the model's final item "
               "embeddings); the model's user rule (an ID row, or a CKG user node) needs a trained user",
}
#: models that embed an unseen item from its content alone (POST /items)
CONTENT_MODELS = ("content_knn",)


def fold_in_rule(name: str) -> str:
    return FOLD_IN.get(name) or FOLD_IN["graph" if name in GROWABLE else "default"]


class Session(BaseModel):
    """POST /recommend: an anonymous profile."""
    items: list[str] = Field(..., min_length=1, max_length=10000, description="original item ids")
    k: int = 20


class NewUser(BaseModel):
    """POST /users: a named new user and the items of its profile."""
    user: str = Field(..., min_length=1, max_length=200)
    items: list[str] = Field(..., min_length=1, max_length=10000, description="original item ids")


class Link(BaseModel):
    """A KG triple of a new item: (item, relation, entity), or (entity, relation, item) with direction "in"."""
    relation: str = Field(..., min_length=1, max_length=500)
    entity: str = Field(..., min_length=1, max_length=500, description="a KG entity or item token")
    direction: str = Field("out", pattern="^(out|in)$")


class NewItem(BaseModel):
    """POST /items: a new item's content."""
    item: str = Field(..., min_length=1, max_length=200)
    text: str | None = Field(None, max_length=20000)
    image: str | None = Field(None, description="a file of the bundle's catalogue/")
    links: list[Link] = Field(default_factory=list, max_length=10000,
                              description="KG triples of the item (graph models: its edges in the CKG)")


class Service:
    """The loaded bundle and everything a request reads: the scoring rows, the exclusion sets, the catalogue."""

    def __init__(self, bundle_path: str | Path):
        self.bundle = Bundle(bundle_path)
        ds = self.bundle.dataset
        self.name = self.bundle.manifest["model"]
        self.lock = threading.Lock()
        self.user_index = {str(t): k for k, t in enumerate(ds.user_tokens)}
        self.item_tokens = [str(t) for t in ds.item_tokens]
        self.item_index = {t: k for k, t in enumerate(self.item_tokens)}
        self.titles = dict(self.bundle.catalogue.get("titles", {}))
        self.images = dict(self.bundle.catalogue.get("images", {}))
        self.n_base = ds.n_items
        self.evaluator = Evaluator(ds.n_items, batch_size=64)
        self.known = {s: ds.csr(s) for s in ("train", "valid", "test")}     # each user's items, per split
        self.exclusions = {k: self.evaluator.exclusion([self.known[s] for s in v], ds.n_users) if v else None
                           for k, v in EXCLUDE.items()}
        self.added: list[dict] = []
        self.extra_rows = None                           # (n_added, D) item rows of added items (content_knn)
        #: graph models: the current scoring rows (users, items) of the catalogue grown by the added items
        self.graph = self.name in GROWABLE
        self.rows = (self.bundle.user_rows, self.bundle.item_rows)
        self.new_items: list[GraphItem] = []
        self.n_ubase = ds.n_users
        #: named new users (POST /users), after the trained ones: (token, item ids of their profile)
        self.new_users: list[tuple[str, list[int]]] = []
        self.grown = None                                # (model, dataset) grown by the added items
        self._att = None                                 # (model, attention CSR, relation CSR) for kg_paths
        self.fold_lock = threading.Lock()                # one rebuild at a time (each holds a whole model)
        self.journal = self.bundle.path / "journal.jsonl"
        self.version = 0                                 # bumped whenever the catalogue's rows change
        self._top: dict[str, tuple] = {}                 # exclude -> (version, top ids (-1: none), scores)
        self._top_lock = threading.Lock()
        self._loading = True                             # replaying the journal: rank once, at the end
        self._replay()
        self._loading = False
        self.refresh_top()                               # in the background: a large catalogue starts at once
        if self.graph:                                   # the first added item or session waits for no warm-up
            threading.Thread(target=self._warm_fold_in, daemon=True).start()

    # ---- scoring
    def _item_rows(self) -> torch.Tensor | None:
        """Every item's scoring row, the added ones last: one read of ``extra_rows`` (replaced, never changed
        in place, after the tokens it needs), so a request racing an added item sees a consistent catalogue."""
        rows, extra = self.rows[1], self.extra_rows
        if rows is None:
            return None
        return rows if extra is None else torch.cat([rows, extra])

    def refresh_top(self, exclude: str = "all", wait: bool = False) -> None:
        """Rank every trained user's top ``TOP_CACHE_K`` against the current catalogue in one batched pass
        (in a background thread unless ``wait``); until it lands, GET /recommend ranks per request. Models
        scored by a network rather than by rows (KGCN, ConvNCF) are always ranked per request."""
        if self.rows[1] is None:
            return

        def work(version=self.version, users_now=self.rows[0], items=self._item_rows()):
            n = items.shape[0]
            seen = self._seen(exclude, users_now.shape[0], n)
            top, scores = rank_rows(lambda u: users_now[u] @ items.T, n, seen, np.arange(users_now.shape[0]),
                                    TOP_CACHE_K)         # `recommend`'s blocks of users: the same bits
            with self._top_lock:
                if version == self.version:              # the catalogue did not change meanwhile
                    self._top[exclude] = (version, top, scores)
        if wait:
            work()
        else:
            threading.Thread(target=work, daemon=True, name="refresh-top").start()

    def cached_top(self, user: int, k: int, exclude: str) -> tuple[np.ndarray, np.ndarray] | None:
        """A trained user's top-k from the batched pass of :meth:`refresh_top`, or None (k over the cache,
        another exclusion set, or a catalogue that changed since)."""
        hit = self._top.get(exclude)
        if hit is None or hit[0] != self.version or k > hit[1].shape[1]:
            return None
        _, top, scores = hit
        keep = top[user, :k] >= 0
        return top[user, :k][keep], scores[user, :k][keep]

    def _changed(self) -> None:
        """The catalogue's rows changed: the cached top lists are stale; rank them again in the background."""
        with self._top_lock:
            self.version += 1
        if not self._loading:
            self.refresh_top()

    def rank(self, user_vec: torch.Tensor | None, user: int | None, k: int, exclude_items=None,
             exclude: str = "all", item_rows: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item ids and scores for internal ``user`` (a trained user) or ``user_vec`` (a profile, scored
        against ``item_rows``, default the catalogue's), the user's known items (``exclude``) and
        ``exclude_items`` left out: the evaluator's ranking."""
        if user is not None and exclude_items is None and item_rows is None:
            if (hit := self.cached_top(user, k, exclude)) is not None:
                return hit
        users_now = self.rows[0]
        items = self._item_rows() if item_rows is None else item_rows
        n = self.n_base if items is None else items.shape[0]
        if user is not None and items is None:          # KGCN / ConvNCF: the rebuilt model scores
            scores = self.bundle.scores(torch.tensor([user]))
        elif user is not None:                          # scored in `recommend`'s block of users: the same bits
            lo = user - user % BATCH
            scores = (users_now[lo:lo + BATCH] @ items.T)[user - lo:user - lo + 1]
        else:
            scores = user_vec[None, :] @ items.T
        if user is not None and n == self.n_base and exclude_items is None and user < self.n_ubase:
            ev, exc, batch = self.evaluator, self.exclusions[exclude], np.array([user])   # `recommend`'s sets
        else:                                           # a profile, a named new user, or added items
            ev, batch = Evaluator(n, batch_size=1), np.array([0])
            rows = np.zeros(0, dtype=np.int64)
            if user is not None:
                rows = self._user_known(user, exclude)
            if exclude_items is not None:
                rows = np.union1d(rows, exclude_items).astype(np.int64)
            exc = ev.exclusion(sp.csr_matrix((np.ones(len(rows), np.float32), (np.zeros(len(rows), np.int64), rows)),
                                             shape=(1, n)), 1)
        for _, top, valid, top_scores in ev.ranked(lambda u: scores, batch, min(k, n), exc):
            keep = valid[0].numpy()
            return top[0].numpy()[keep], top_scores[0].double().numpy()[keep]
        return np.zeros(0, dtype=np.int64), np.zeros(0)

    def profile(self, items: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fold-in row of an anonymous profile (``fold_in_rule``) and the item rows to score it against
        (None: the catalogue's)."""
        if self.graph:
            with self.fold_lock:
                model, g = grow(self.base_model(), self.bundle.dataset, self._features(), self.new_items,
                                self.new_users + [("session", items)])
            u, i = model.scoring_rows()
            return u[int(g.new_users[-1])], i
        rows = self._item_rows()
        if rows is None:
            raise LookupError(f"{self.name} does not score by inner products: no fold-in for an anonymous profile")
        return rows[items].mean(0), None        # content_knn: exactly its user rule; others: FOLD_IN["default"]

    def _warm_fold_in(self) -> None:
        with self.fold_lock:
            ready(self.base_model())

    def base_model(self):
        """The exported model, rebuilt once from the bundle."""
        if self.bundle.model is None:
            self.bundle.model = self.bundle.build_model()
        return self.bundle.model

    def _features(self) -> dict | None:
        from .rundir import run_features
        if not hasattr(self, "_feature_cache"):
            self._feature_cache = run_features(self.bundle.path)
        return self._feature_cache

    def item_json(self, i: int, score: float | None = None, rank: int | None = None) -> dict:
        tok = self.item_tokens[i]
        out = {"item": tok, "title": self.titles.get(tok, ""),
               "image": f"/catalogue/{self.images[tok]}" if tok in self.images else None}
        if rank is not None:
            out |= {"rank": rank, "score": float(score)}
        return out

    # ---- adding items
    def can_add_items(self) -> tuple[bool, str]:
        if self.name in CONTENT_MODELS:
            return True, "the item is embedded from its content (text, image), as the cold-start evaluation does"
        if self.graph:
            return True, ("the item becomes a node of the CKG with its content and KG links and the model is rebuilt "
                          "over the grown graph, as the cold-start evaluation builds a new item (its ID rows zero)")
        return False, (f"{self.name} cannot embed an unseen item: an ID model has no row for it "
                       f"(see docs/serving.md)")

    def encode_content(self, text: str | None, image: str | None) -> dict[str, np.ndarray]:
        """A new item's content rows per modality of the model, as the feature store makes them (encoded,
        normalised when the encoder normalises)."""
        from .features import make_encoder
        from .features.store import _normalise
        cfg = self.bundle.config
        mods = [str(m) for m in cfg.get("modalities") or []]
        raw = {"text": text, "image": image}
        if not any(raw.get(m) for m in mods):
            return {}
        if not hasattr(self, "_encoder"):
            self._encoder = make_encoder(cfg["encoder"])
            self._encoder.load()
        feats = {}
        for part in self._encoder.parts.values():
            if part.modality in mods and raw.get(part.modality):
                x = np.asarray(part.encode([part.prepare(raw[part.modality])]), dtype=np.float32)
                feats[part.modality] = (_normalise(x) if self._encoder.normalize else x)[0]
        return feats

    def encode_item(self, text: str | None, image: str | None) -> torch.Tensor:
        """content_knn's row of a new item, as ``item_content`` makes it from the feature store's rows."""
        from .features.align import item_content
        feats = self.encode_content(text, image)
        mods = [str(m) for m in self.bundle.config.get("modalities") or []]
        if not feats:
            raise ValueError(f"the item needs content in one of the model's modalities {mods}")
        full = {m: (torch.from_numpy(feats[m])[None, :] if m in feats else
                    torch.zeros(1, self._dims()[m]), torch.tensor([m in feats])) for m in mods}
        return item_content(full, mods, 1)[0][0]

    def _dims(self) -> dict:
        return {m: x.shape[1] for m, (x, _) in (self._features() or {}).items()}

    def add_item(self, item: str, text: str | None, image: str | None, row: torch.Tensor | None = None,
                 persist: bool = True, title: str | None = None, links: list | None = None) -> int:
        ok, why = self.can_add_items()
        if not ok:
            raise ValueError(why)
        if title is None:
            title = text.splitlines()[0][:200] if text else ""
        if self.graph:
            content = self.encode_content(text, image)
            if not content and not links:
                raise ValueError(f"the item needs content in one of the model's modalities "
                                 f"{list(self.bundle.config.get('modalities') or [])} or KG links")
            return self._add_graph_items([{"item": item, "title": title, "links": links or [], "content": content}],
                                         persist)
        with self.lock:
            if item in self.item_index:
                raise KeyError(f"item {item!r} exists")
            if row is None:
                row = self.encode_item(text, image)
            entry = {"item": item, "title": title, "row": [float(x) for x in row]}
            if persist:
                with open(self.journal, "a", encoding="utf-8") as f:   # one line, flushed before it counts
                    f.write(json.dumps(entry) + "\n")
                    f.flush()
            new = torch.tensor(entry["row"], dtype=torch.float32)[None, :]
            idx = self.n_base + len(self.added)
            self.item_tokens = self.item_tokens + [item]          # new objects, each swapped in at once:
            self.item_index = {**self.item_index, item: idx}      # the tokens first, the rows last
            self.titles = {**self.titles, item: entry["title"]}
            self.added.append(entry)
            self.extra_rows = new if self.extra_rows is None else torch.cat([self.extra_rows, new])
            self._changed()
            return idx

    def _add_graph_items(self, entries: list[dict], persist: bool, users: list[dict] = ()) -> int:
        """Add items (and named users: ``{"user", "items": [tokens]}``) to a graph model's catalogue: the model is
        rebuilt over the CKG grown by every item and user added so far (``foldin.grow``), then the tokens and
        the rows are swapped in (the rows last). Returns the last new item's id (-1 with none)."""
        with self.lock:
            names = [e["item"] for e in entries]
            for name in names:
                if name in self.item_index or names.count(name) > 1:
                    raise KeyError(f"item {name!r} exists")
            first = len(self.item_tokens)
            index = {**self.item_index, **{t: first + k for k, t in enumerate(names)}}
            people = self._new_user_entries(users, index)
            new = [GraphItem(e["item"], [tuple(x) for x in e["links"]],
                             {m: np.asarray(v, dtype=np.float32) for m, v in (e["content"] or {}).items()})
                   for e in entries]
            with self.fold_lock:
                model, g = grow(self.base_model(), self.bundle.dataset, self._features(), self.new_items + new,
                                self.new_users + people)
            if persist:
                self._journal([{"item": e["item"], "title": e["title"], "links": [list(x) for x in e["links"]],
                                "content": {m: [float(v) for v in r] for m, r in e["content"].items()}}
                               for e in entries] + [{"user": u["user"], "items": list(u["items"])} for u in users])
            self.item_tokens = self.item_tokens + names
            self.item_index = index
            self.titles = {**self.titles, **{e["item"]: e["title"] or "" for e in entries}}
            self.new_items = self.new_items + new
            self.added = self.added + [{"item": t} for t in names]
            self._take_users(people)
            self.grown = (model, g.dataset)              # explanations read its attention (kg_paths)
            self.rows = model.scoring_rows()
            self._changed()
            return first + len(names) - 1

    # ---- named new users (POST /users)
    def _new_user_entries(self, users, index: dict) -> list[tuple[str, list[int]]]:
        """``[{"user", "items": [tokens]}]`` -> [(token, item ids)], checked: a new name, known items."""
        out = []
        for u in users:
            name = str(u["user"])
            if name in self.user_index or any(name == t for t, _ in out):
                raise KeyError(f"user {name!r} exists")
            unknown = [t for t in u["items"] if t not in index]
            if unknown or not u["items"]:
                raise LookupError(f"items: {unknown[:5]} not in the catalogue" if unknown else "items: none given")
            out.append((name, sorted({index[t] for t in u["items"]})))
        return out

    def _take_users(self, people: list[tuple[str, list[int]]]) -> None:
        if people:
            base = self.n_ubase + len(self.new_users)
            self.new_users = self.new_users + people
            self.user_index = {**self.user_index, **{t: base + k for k, (t, _) in enumerate(people)}}

    def _journal(self, entries: list[dict]) -> None:
        with open(self.journal, "a", encoding="utf-8") as f:   # one line each, flushed before it counts
            for e in entries:
                f.write(json.dumps(e) + "\n")
            f.flush()

    def add_user(self, user: str, items: list[str], persist: bool = True) -> int:
        """A named new user whose profile is ``items`` (original ids), folded in by the model's rule
        (``fold_in_rule``), kept in the journal, and recommended to by name from the next request."""
        if self.graph:
            self._add_graph_items([], persist, [{"user": user, "items": items}])
            return self.user_index[user]
        with self.lock:
            people = self._new_user_entries([{"user": user, "items": items}], self.item_index)
            vec, _ = self.profile(people[0][1])          # LookupError: a model without rows cannot
            if persist:
                self._journal([{"user": user, "items": list(items)}])
            rows = (torch.cat([self.rows[0], vec[None, :]]), self.rows[1])
            self._take_users(people)
            self.rows = rows
            self._changed()
            return self.user_index[user]

    def _user_known(self, user: int, exclude: str) -> np.ndarray:
        """Item ids ``exclude`` names for internal ``user``: a named new user's are its profile's (its train)."""
        if user >= self.n_ubase:
            return np.asarray(self.new_users[user - self.n_ubase][1] if "train" in EXCLUDE[exclude] else [],
                              dtype=np.int64)
        return np.concatenate([np.zeros(0, dtype=np.int64)] + [
            (m := self.known[s]).indices[m.indptr[user]:m.indptr[user + 1]] for s in EXCLUDE[exclude]]).astype(np.int64)

    def _seen(self, exclude: str, n_users: int, n_items: int) -> list:
        """The exclusion CSR matrices of ``exclude`` over ``n_users`` users (named new users last) and
        ``n_items`` items (added items last: nobody has seen them but their named users)."""
        extra = self.new_users[: n_users - self.n_ubase]
        out = []
        for s in EXCLUDE[exclude]:
            m = self.known[s]
            m = sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], n_items))
            if extra:
                rows = [its if s == "train" else [] for _, its in extra]
                ind = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
                ptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
                m = sp.vstack([m, sp.csr_matrix((np.ones(len(ind), np.float32), ind, ptr), shape=(len(extra), n_items))],
                              format="csr")
            out.append(m)
        return out

    def _replay(self) -> None:
        if not self.journal.is_file():
            return
        lines = self.journal.read_text(encoding="utf-8").splitlines()
        graph, people = [], []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
                if "user" in e:
                    u = {"user": str(e["user"]), "items": [str(t) for t in e["items"]]}
                    if self.graph:
                        people.append(u)
                    else:
                        self.add_user(u["user"], u["items"], persist=False)
                elif self.graph:
                    graph.append({"item": str(e["item"]), "title": e.get("title", ""), "links": e["links"],
                                  "content": dict(e["content"])})
                else:
                    self.add_item(e["item"], None, None, row=torch.tensor(e["row"]), persist=False,
                                  title=e.get("title", ""))
            except (ValueError, KeyError, TypeError, LookupError) as err:
                if n == len(lines):
                    break                                # a last line cut by a kill: the item was never answered
                raise UserError(f"{self.journal}:{n}: damaged journal line ({err}); remove the line") from None
        if graph or people:
            try:
                self._add_graph_items(graph, persist=False, users=people)  # one rebuild for the whole journal
            except (FoldInError, KeyError, LookupError) as err:
                raise UserError(f"{self.journal}: {err}; remove that item's line") from None

    # ---- explanations
    def kg_paths(self, user: int, item: int, top: int = 5) -> list[dict]:
        """The top paths user -> one of their train items -> a KG entity -> ``item``, scored by the product of
        the attention weights of the three edges (uniform attention for a model without it)."""
        model, ds = self.grown or (None, self.bundle.dataset)     # with added items: the grown model and CKG
        if not ds.has_kg or item >= ds.n_items:
            return []
        if self._att is None or self._att[0] is not model:
            self._att = (model, *self._attention_matrix(model, ds))
        _, A, rel = self._att
        u_node = ds.n_entities + user
        mine = A[u_node].indices                         # the user's train items (interact edges)
        w_u = A[u_node].toarray().ravel()[mine]
        col = A[:, item].tocoo()                         # KG entities pointing to the item (not users)
        keep = (col.row < ds.n_entities) & (col.row != item)
        ents, w_e = col.row[keep], col.data[keep]
        if not len(mine) or not len(ents):
            return []
        mid = A[mine][:, ents].toarray()                # (items of u) x (entities into item)
        score = w_u[:, None] * mid * w_e[None, :]
        flat = np.argsort(-score, axis=None, kind="stable")[:top]
        out = []
        for f in flat:
            a, b = np.unravel_index(f, score.shape)
            if score[a, b] <= 0:
                break
            via, ent = int(mine[a]), int(ents[b])
            out.append({"score": float(score[a, b]),
                        "path": [{"user": str(ds.user_tokens[user])},
                                 {"item": self.item_tokens[via], "title": self.titles.get(self.item_tokens[via], ""),
                                  "relation": "interact"},
                                 {"entity": str(ds.entity_tokens[ent]) or f"item {self.item_tokens[ent]}",
                                  "relation": self._rel_name(rel[via, ent])},
                                 {"item": self.item_tokens[item], "title": self.titles.get(self.item_tokens[item], ""),
                                  "relation": self._rel_name(rel[ent, item])}]})
        return out

    def _rel_name(self, stored) -> str:
        """The name of a CKG relation id (stored + 1): 0 interact, 1..R the KG's, R + 1 interact^-1, then the
        KG's inverses in the same order (``Dataset.ckg``)."""
        ds = self.bundle.dataset
        r, R = int(stored) - 1, ds.n_relations
        if r == 0:
            return "interact"
        if 1 <= r <= R:
            return str(ds.relation_tokens[r - 1])
        if r == R + 1:
            return "interact (inverse)"
        return f"{ds.relation_tokens[r - R - 2]} (inverse)"

    def _attention_matrix(self, model, ds):
        """The CKG of ``ds`` weighted by ``model``'s attention (None: the exported model), and each node
        pair's relation (+1)."""
        ckg = ds.ckg()
        n = ckg.n_nodes
        head, tail, relation = ckg.head.numpy(), ckg.tail.numpy(), ckg.relation.numpy()
        if model is None:
            model = self.bundle.model = self.bundle.model or self.bundle.build_model()
        tables = getattr(model, "attention_tables", ())
        if tables:                                       # CSR order of the model's attention structure
            st = model.attention.structure
            v = np.mean([getattr(model, f"att_{t}").detach().numpy() for t in tables], axis=0)
            A = sp.csr_matrix((v, (st.row.numpy(), st.col.numpy())), shape=(n, n))
        else:
            deg = np.bincount(head, minlength=n).astype(np.float64)
            A = sp.csr_matrix((1.0 / deg[head], (head, tail)), shape=(n, n))
        _, first = np.unique(head.astype(np.int64) * n + tail, return_index=True)   # one relation per pair
        rel = sp.csr_matrix((relation[first] + 1, (head[first], tail[first])), shape=(n, n))   # +1: keep 0 stored
        return A.tocsr(), rel

    def modality_shares(self, user: int) -> dict | None:
        if self.name != "multikg4rec":
            return None
        from .explain import modality_report
        if self.grown is not None:                       # with added items or users: the grown model
            model = self.grown[0]
        else:
            model = self.bundle.model = self.bundle.model or self.bundle.build_model()
        rep = modality_report(model, user)
        return {k: rep[k] for k in ("modality", "fusion", "score") if k in rep}


class BodyLimit:
    """ASGI middleware: a request whose Content-Length is over ``MAX_BODY`` is answered 413 unread (a plain
    ASGI layer, not Starlette's BaseHTTPMiddleware, which costs every request an extra task)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            size = dict(scope["headers"]).get(b"content-length", b"")
            if size.isdigit() and int(size) > MAX_BODY:
                from starlette.responses import JSONResponse
                await JSONResponse({"detail": f"body: {size.decode()} bytes, at most {MAX_BODY}"},
                                   status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(bundle_path: str | Path):
    """The FastAPI app over one bundle."""
    from fastapi import FastAPI, HTTPException, Query
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

    svc = Service(bundle_path)
    app = FastAPI(title="multikg4rec", version="1",
                  description=f"{svc.name} on {svc.bundle.dataset.name}: recommend, explain, add items")

    app.add_middleware(BodyLimit)

    def user_id(user: str) -> int:
        if user not in svc.user_index:
            raise HTTPException(404, detail=f"user: {user!r} is not a user of this model")
        return svc.user_index[user]

    def k_range(k: int) -> int:
        n = len(svc.item_tokens)
        if not 1 <= k <= n:
            raise HTTPException(422, detail=f"k: must be from 1 to {n}, got {k}")
        return k

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": svc.name, "dataset": svc.bundle.dataset.name,
                "users": len(svc.user_index), "items": len(svc.item_tokens)}

    @app.get("/models")
    def models():
        m = svc.bundle.manifest
        ok, why = svc.can_add_items()
        return [{"model": m["model"], "dataset": m["dataset"], "fingerprint": m["fingerprint"],
                 "test": m["metrics"].get("test"), "created": m["created"], "fold_in": fold_in_rule(svc.name),
                 "can_add_items": ok, "add_items": why, "added_items": len(svc.added),
                 "added_users": len(svc.new_users)}]

    @app.get("/recommend")
    async def recommend_get(user: str, k: int = Query(20),
                            exclude: str = Query("all", pattern="^(all|train\\+valid|train|none)$")):
        # async: a trained user's top-K is a sub-millisecond read of the scoring rows, cheaper than a hop to
        # the thread pool; the response is built here and sent as is (no response-model encoding)
        u, k = user_id(user), k_range(k)
        items, scores = svc.rank(None, u, k, exclude=exclude)
        return JSONResponse({"user": user, "items": [svc.item_json(int(i), s, r + 1)
                                                     for r, (i, s) in enumerate(zip(items, scores))]})

    @app.post("/recommend")
    def recommend_post(body: Session):
        unknown = [i for i in body.items if i not in svc.item_index]
        if unknown:
            raise HTTPException(404, detail=f"items: {unknown[:5]} not in the catalogue")
        k = k_range(body.k)
        idx = [svc.item_index[i] for i in body.items]
        try:
            vec, rows = svc.profile(idx)
        except LookupError as e:
            raise HTTPException(409, detail=str(e)) from None
        items, scores = svc.rank(vec, None, k, exclude_items=np.array(idx), item_rows=rows)
        return {"items": [svc.item_json(int(i), s, r + 1) for r, (i, s) in enumerate(zip(items, scores))],
                "fold_in": fold_in_rule(svc.name)}

    @app.get("/items")
    def items(q: str = Query("", max_length=200), limit: int = Query(20, ge=1, le=200)):
        ql = q.lower()
        hits = [i for i, t in enumerate(svc.item_tokens) if ql in svc.titles.get(t, "").lower() or ql == t.lower()]
        return {"items": [svc.item_json(i) for i in hits[:limit]], "total": len(hits)}

    @app.post("/items", status_code=201)
    def add_item(body: NewItem):
        ok, why = svc.can_add_items()
        if not ok:
            raise HTTPException(409, detail=why)
        image = None
        if body.image:
            f = (svc.bundle.path / "catalogue" / Path(body.image).name)
            if Path(body.image).name != body.image or not f.is_file():
                raise HTTPException(404, detail=f"image: {body.image!r} is not a file of the bundle's catalogue")
            image = f
        try:
            idx = svc.add_item(body.item, body.text, image,
                               links=[(x.relation, x.entity, x.direction) for x in body.links])
        except KeyError as e:
            raise HTTPException(409, detail=f"item: {e.args[0]}") from None
        except FoldInError as e:
            raise HTTPException(422, detail=f"links: {e}") from None
        except ValueError as e:
            raise HTTPException(422, detail=f"text/image: {e}") from None
        return svc.item_json(idx)

    @app.post("/users", status_code=201)
    def add_user(body: NewUser):
        try:
            svc.add_user(body.user, body.items)
        except KeyError as e:
            raise HTTPException(409, detail=f"user: {e.args[0]}") from None
        except LookupError as e:
            msg = str(e)
            raise HTTPException(404 if msg.startswith("items:") else 409, detail=msg) from None
        return {"user": body.user, "items": len(set(body.items)), "fold_in": fold_in_rule(svc.name)}

    @app.get("/explain")
    def explain(user: str, item: str):
        u = user_id(user)
        if item not in svc.item_index:
            raise HTTPException(404, detail=f"item: {item!r} not in the catalogue")
        i = svc.item_index[item]
        return {"user": user, "item": svc.item_json(i), "modality": svc.modality_shares(u),
                "paths": svc.kg_paths(u, i)}

    @app.get("/catalogue/{name}")
    def catalogue(name: str):
        f = svc.bundle.path / "catalogue" / name
        if Path(name).name != name or name not in set(svc.images.values()) or not f.is_file():
            raise HTTPException(404, detail=f"catalogue: no file {name!r}")
        return FileResponse(f)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return (Path(__file__).parent / "web" / "index.html").read_text(encoding="utf-8")

    app.state.service = svc
    return app


def serve(bundle_path: str | Path, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    import gc

    import uvicorn
    app = create_app(bundle_path)
    gc.collect()
    gc.freeze()            # the loaded bundle's objects leave the collector's generations: no full collection
                           # walks them again while requests are served
    print(f"serving {app.state.service.name} from {bundle_path} on http://{host}:{port}/ (API docs: /docs)",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
