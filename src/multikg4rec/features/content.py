"""Entity content: the text and image of every entity that has one.

Content is keyed by ORIGINAL ids, in two namespaces, because item tokens and KG
entity tokens can collide (ml-1m MovieIDs and Satori entity ids are both small
integers):

* ``("item", item_token)``   -- ``Dataset.item_tokens`` (MovieID, artistID, ...);
* ``("entity", entity_token)`` -- ``Dataset.entity_tokens`` of KG entities.

What each dataset gives (see each folder's SOURCE.txt):

=============  =========================================================  ==========================================
dataset        item text                                                   images / entity text
=============  =========================================================  ==========================================
ml-1m          movies.dat title + genres (+ text/llm_response_item.json     posters/<MovieID>.jpg (265 items);
               LLM-written descriptions, ``descriptions=True`` by default)  Satori entities: ids only, no text
ml-100k        ml-100k.item movie_title (release_year) + class (genres)     ml-1m posters joined by normalised title +
                                                                            year; Freebase MIDs: no names, no text
lastfm-2k      artists.dat name + lfm2k_text.tsv tags                        no images; Satori entities that are
                                                                            HetRec artists (item_index2entity_id)
                                                                            get the artist's name + tags
amazon-book    none (ASINs only)                                             none (Freebase MIDs only)
RecBole        ``NAME.item``: its text columns, concatenated                ``images/<item_id>.(jpg|jpeg|png|webp)``;
atomic                                                                      entity text from ``NAME.ent`` if present
=============  =========================================================  ==========================================

Reading is tolerant: a line that is not UTF-8 or an empty text is skipped with a
warning naming the entity (it counts as missing content); it never aborts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.sources import dataset_dir
from ..fingerprint import file_digest

log = logging.getLogger(__name__)

ITEM, ENTITY = 0, 1
KIND_NAMES = {ITEM: "item", ENTITY: "entity"}
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class EntityContent:
    """Raw content of one dataset, one row per (kind, token) that has text or an image.

    ``ids[r]`` is the original token of row ``r`` and ``kinds[r]`` is ``ITEM`` or
    ``ENTITY``; ``text[r]`` is a string or None, ``image[r]`` a Path or None.
    """

    dataset: str
    ids: list[str] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    text: list[str | None] = field(default_factory=list)
    image: list[Path | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (entity, reason) dropped while reading
    options: dict = field(default_factory=dict)
    #: KG entity token -> item token, for items linked to a KG entity: an item that a
    #: Dataset drops from its interactions (rating threshold, k-core) stays a KG
    #: entity under its entity token and still finds its content through this link
    links: dict[str, str] = field(default_factory=dict)
    _index: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, kind: int, token: str) -> int:
        """Row of ``(kind, token)``, created on first use."""
        key = (kind, token)
        r = self._index.get(key)
        if r is None:
            r = self._index[key] = len(self.ids)
            self.ids.append(token)
            self.kinds.append(kind)
            self.text.append(None)
            self.image.append(None)
        return r

    def find(self, kind: int, token: str) -> int | None:
        return self._index.get((kind, token))

    def set_text(self, kind: int, token: str, text: str | None) -> None:
        label = f"{self.dataset}: {KIND_NAMES[kind]} {token!r}"
        if text is None:
            return
        text = " ".join(str(text).split())
        if not text:
            self.skip(label, "empty text")
            return
        self.text[self.row(kind, token)] = text

    def set_image(self, kind: int, token: str, path: Path) -> None:
        self.image[self.row(kind, token)] = Path(path)

    def skip(self, label: str, reason: str) -> None:
        if len(self.skipped) < 20:
            log.warning("%s: %s; counted as missing content", label, reason)
        elif len(self.skipped) == 20:
            log.warning("%s: further content problems are counted, not printed", self.dataset)
        self.skipped.append((label, reason))

    def subset(self, rows) -> "EntityContent":
        """A new content with only ``rows`` (tests, benchmarks, a quick look)."""
        out = EntityContent(self.dataset, notes=list(self.notes), options=dict(self.options), links=dict(self.links))
        for r in rows:
            r = int(r)
            k = out.row(self.kinds[r], self.ids[r])
            out.text[k], out.image[k] = self.text[r], self.image[r]
        return out

    # ---- views
    @property
    def modalities(self) -> tuple[str, ...]:
        mods = []
        if any(t is not None for t in self.text):
            mods.append("text")
        if any(p is not None for p in self.image):
            mods.append("image")
        return tuple(mods)

    def rows_with(self, modality: str) -> np.ndarray:
        col = {"text": self.text, "image": self.image}[modality]
        return np.array([r for r, v in enumerate(col) if v is not None], dtype=np.int64)

    def get(self, modality: str, r: int):
        return {"text": self.text, "image": self.image}[modality][r]

    def fingerprint(self) -> str:
        """Hash of everything the encoders will read (texts; the bytes of each image file).
        ``links`` are left out: they change no vector (the store rewrites them on reuse)."""
        h = hashlib.sha1()
        for tok, kind, text, img in zip(self.ids, self.kinds, self.text, self.image):
            h.update(f"{kind}\x1f{tok}\x1f{text}\x1f".encode("utf-8", "surrogateescape"))
            if img is not None:
                h.update(file_digest(img).encode())
            h.update(b"\x1e")
        return h.hexdigest()

    def counts(self) -> dict:
        kinds = np.asarray(self.kinds, dtype=np.int8)
        has_t = np.array([t is not None for t in self.text], dtype=bool)
        has_i = np.array([p is not None for p in self.image], dtype=bool)
        return {
            "items with text": int((has_t & (kinds == ITEM)).sum()),
            "items with image": int((has_i & (kinds == ITEM)).sum()),
            "entities with text": int((has_t & (kinds == ENTITY)).sum()),
            "entities with image": int((has_i & (kinds == ENTITY)).sum()),
        }


# --------------------------------------------------------------------------- helpers

def _read_lines_tolerant(path: Path, content: EntityContent, what: str) -> tuple[list[str], list[tuple[str, bytes]]]:
    """Read a TSV-like file line by line as UTF-8; returns (header fields, rows as (decoded line | None, raw)).

    A line that is not UTF-8 comes back as None so the caller can warn naming its entity.
    """
    raw_lines = path.read_bytes().splitlines()
    if not raw_lines:
        return [], []
    header = raw_lines[0].decode("utf-8", "replace").rstrip("\r").split("\t")
    rows = []
    for ln, raw in enumerate(raw_lines[1:], start=2):
        if not raw.strip():
            continue
        try:
            rows.append((raw.decode("utf-8").rstrip("\r"), raw))
        except UnicodeDecodeError as e:
            tok = raw.split(b"\t", 1)[0].decode("utf-8", "replace")
            content.skip(f"{content.dataset}: {what} {tok!r} ({path.name}:{ln})",
                         f"text is not valid UTF-8 ({e.reason} at byte {e.start})")
    return header, rows


def _list_images(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the image files in ``folder`` (first extension in IMAGE_EXTS order wins)."""
    if not folder.is_dir():
        return {}
    out: dict[str, Path] = {}
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS),
                   key=lambda p: (p.stem, IMAGE_EXTS.index(p.suffix.lower())))
    for p in files:
        out.setdefault(p.stem, p)
    return out


def _read_links(path: Path, content: EntityContent, header: bool, sep: str = "\t") -> None:
    """item -> entity link file (two columns, item first) into ``content.links`` (entity -> item)."""
    if not path.is_file():
        return
    lines = path.read_bytes().decode("utf-8", "replace").splitlines()[1 if header else 0:]
    for line in lines:
        f = line.strip().split(sep)
        if len(f) >= 2 and f[0] and f[1]:
            content.links.setdefault(f[1].strip(), f[0].strip())


def _join(*parts: str | None) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")


def normalise_title(title: str) -> str:
    """Lower case, no accents, no punctuation, "The"/"A" suffixes moved ("Usual Suspects, The" -> "the usual suspects")."""
    t = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    t = t.strip().lower()
    m = re.match(r"^(.*),\s*(the|a|an|les|la|le|il|el|das|der|die)$", t)
    if m:
        t = f"{m.group(2)} {m.group(1)}"
    t = t.replace("&", " and ")
    t = re.sub(r"[^a-z0-9]+", " ", t)
    return " ".join(t.split())


def title_keys(title: str) -> tuple[set[str], int | None]:
    """Normalised candidate titles and the year of a MovieLens title, e.g.
    "Big Blue, The (Le Grand Bleu) (1988)" -> ({"the big blue le grand bleu", "the big blue",
    "le grand bleu"}, 1988). ml-100k titles carry no year (it is a separate column)."""
    m = _YEAR.search(title)
    year = int(m.group(1)) if m else None
    base = title[: m.start()] if m else title
    keys = {normalise_title(base)}
    parens = re.findall(r"\(([^()]*)\)", base)
    main = re.sub(r"\s*\([^()]*\)", "", base).strip()
    keys.add(normalise_title(main))
    keys.update(normalise_title(p) for p in parens)
    if " - " in main:  # "Star Wars: Episode V - The Empire Strikes Back"
        keys.add(normalise_title(main.rsplit(" - ", 1)[1]))
    keys.discard("")
    return keys, year


def match_titles(queries: list[tuple[str, int | None]], targets: list[tuple[str, str]]) -> dict[int, str]:
    """Match (title, year) queries to (id, "Title (year)") targets on a shared normalised title
    and the same year (else a year off by one), when exactly one target qualifies.
    Returns {query index: target id}."""
    index: dict[str, set[str]] = {}
    years: dict[str, int | None] = {}
    for tid, title in targets:
        keys, y = title_keys(title)
        years[tid] = y
        for k in keys:
            index.setdefault(k, set()).add(tid)
    out = {}
    for q, (title, year) in enumerate(queries):
        keys, y = title_keys(title)
        year = year if year is not None else y
        cands = set().union(*(index.get(k, set()) for k in keys)) if keys else set()
        if year is None:
            pick = cands
        else:
            pick = {t for t in cands if years[t] == year} or \
                   {t for t in cands if years[t] is not None and abs(years[t] - year) <= 1}
        if len(pick) == 1:
            out[q] = next(iter(pick))
    return out


# --------------------------------------------------------------------------- per-dataset readers

def _ml1m_movies(d: Path) -> list[tuple[str, str, str]]:
    """(MovieID, title, genres) of movies.dat (latin-1, '::' separated)."""
    out = []
    for line in (d / "movies.dat").read_bytes().decode("latin-1").splitlines():
        parts = line.split("::")
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2].replace("|", ", ")))
    return out


def read_ml1m_content(d: Path, content: EntityContent, descriptions: bool = True) -> None:
    items = None
    item_list = d / "interactions" / "item_list.txt"
    if item_list.is_file():
        items = {line.split(" ")[0] for line in item_list.read_text(encoding="utf-8").splitlines()[1:] if line}
    desc: dict = {}
    desc_path = d / "text" / "llm_response_item.json"
    if descriptions:
        if desc_path.is_file():
            try:
                desc = json.loads(desc_path.read_bytes().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                content.skip(f"{content.dataset}: {desc_path}", f"descriptions unreadable ({e}); titles+genres only")
            content.notes.append("item text = title + genres + LLM-written description (CoLaKG)")
        else:
            content.notes.append(f"{desc_path} absent: item text = title + genres")
    else:
        content.notes.append("item text = title + genres (descriptions off)")
    posters = _list_images(d / "posters")
    for mid, title, genres in _ml1m_movies(d):
        if items is not None and mid not in items:
            continue
        extra = desc.get(mid)
        if extra is not None and not isinstance(extra, str):
            content.skip(f"{content.dataset}: item {mid!r}", "description is not a string; title+genres only")
            extra = None
        content.set_text(ITEM, mid, _join(f"{title}.", f"Genres: {genres}." if genres else "", extra))
        if mid in posters:
            content.set_image(ITEM, mid, posters[mid])
    _read_links(d / "kg-satori" / "item_index2entity_id.txt", content, header=False)
    content.notes.append(f"{len(posters)} posters in {d / 'posters'}; Satori KG entities have ids only (no text)")


def read_ml100k_content(d: Path, content: EntityContent, ml1m_dir: Path | None = None) -> None:
    header, rows = _read_lines_tolerant(d / "ml-100k.item", content, "item")
    names = [h.partition(":")[0] for h in header]
    col = {n: k for k, n in enumerate(names)}
    items = []
    for line, _ in rows:
        f = line.split("\t")
        get = lambda name: f[col[name]].strip() if name in col and col[name] < len(f) else ""  # noqa: E731
        iid = get("item_id")
        if not iid:
            continue
        title, year, genres = get("movie_title"), get("release_year"), get("class")
        head = f"{title} ({year})." if year else (f"{title}." if title else "")
        content.set_text(ITEM, iid, _join(head, f"Genres: {', '.join(genres.split())}." if genres else ""))
        items.append((iid, title, int(year) if year.isdigit() else None))
    matched = 0
    if ml1m_dir is not None and (ml1m_dir / "movies.dat").is_file():
        posters = _list_images(ml1m_dir / "posters")
        if posters:
            movies = [(mid, title) for mid, title, _ in _ml1m_movies(ml1m_dir)]
            hits = match_titles([(t, y) for _, t, y in items], movies)
            for q, mid in hits.items():
                if mid in posters:
                    content.set_image(ITEM, items[q][0], posters[mid])
                    matched += 1
    if ml1m_dir is None or not (ml1m_dir / "posters").is_dir():
        content.notes.append("no posters (ml-1m/posters not found next to ml-100k)")
    else:
        content.notes.append(f"{matched} items got an ml-1m poster by normalised title + year")
    _read_links(d / "ml-100k.link", content, header=True)
    content.notes.append("Freebase KG entities: MIDs only (no names, no text)")


def read_lastfm_content(d: Path, content: EntityContent) -> None:
    names: dict[str, str] = {}
    p = d / "original_hetrec2011" / "artists.dat"
    if p.is_file():
        header, rows = _read_lines_tolerant(p, content, "artist")
        for line, _ in rows:
            f = line.split("\t")
            if len(f) >= 2:
                names[f[0]] = f[1]
    tags: dict[str, str] = {}
    p = d / "lfm2k_text.tsv"
    if p.is_file():
        header, rows = _read_lines_tolerant(p, content, "artist")
        for line, _ in rows:
            aid, _, text = line.partition("\t")
            tags[aid] = ", ".join(t.strip() for t in text.split(",") if t.strip())
    items: list[str] = []
    p = d / "lfm2k_og_ids.inter"
    if p.is_file():
        seen = set()
        for line in p.read_text(encoding="utf-8").splitlines()[1:]:
            f = line.split("\t")
            if len(f) >= 2 and f[1] not in seen:
                seen.add(f[1])
                items.append(f[1])

    def text_of(aid: str) -> str | None:
        name, tg = names.get(aid), tags.get(aid)
        if not name and not tg:
            return None
        return _join(f"{name}." if name else "", f"Tags: {tg}." if tg else "")

    for aid in items:
        t = text_of(aid)
        if t is None:
            content.skip(f"{content.dataset}: item {aid!r}", "no name and no tags")
        content.set_text(ITEM, aid, t)
    n_ent = 0
    p = d / "kg" / "item_index2entity_id.txt"
    if p.is_file():
        for line in p.read_text(encoding="utf-8").splitlines():
            f = line.strip().split("\t")
            if len(f) == 2:
                t = text_of(f[0])
                if t is not None:
                    content.set_text(ENTITY, f[1], t)
                    n_ent += 1
    content.notes.append("item text = artist name + user tags; no images (album covers are URLs only)")
    content.notes.append(f"{n_ent} Satori KG entities are HetRec artists and get the artist's name + tags; "
                         f"the other KG entities have ids only")


def _atomic_text(d: Path, file: Path, id_col: str, kind: int, content: EntityContent) -> None:
    header, rows = _read_lines_tolerant(file, content, KIND_NAMES[kind])
    fields = [h.partition(":") for h in header]
    names = [n for n, _, _ in fields]
    if id_col not in names:
        content.skip(f"{content.dataset}: {file}", f"no {id_col!r} column in the header; file ignored")
        return
    k_id = names.index(id_col)
    text_cols = [(k, n) for k, (n, _, t) in enumerate(fields) if k != k_id and t in ("token", "token_seq")]
    for line, _ in rows:
        f = line.split("\t")
        tok = f[k_id].strip() if k_id < len(f) else ""
        if not tok:
            continue
        parts = []
        for k, n in text_cols:
            v = f[k].strip() if k < len(f) else ""
            if v:
                parts.append(f"{n.replace('_', ' ')}: {v}.")
        content.set_text(kind, tok, _join(*parts) if parts else "")


def read_atomic_content(name: str, d: Path, content: EntityContent) -> None:
    item_file, ent_file = d / f"{name}.item", d / f"{name}.ent"
    if item_file.is_file():
        _atomic_text(d, item_file, "item_id", ITEM, content)
        content.notes.append(f"item text = text columns of {item_file.name}")
    else:
        content.notes.append(f"no {item_file.name}: no item text")
    _read_links(d / f"{name}.link", content, header=True)
    images = _list_images(d / "images")
    for tok, path in images.items():
        content.set_image(ITEM, tok, path)
    content.notes.append(f"{len(images)} item images in {d / 'images'}" if images else
                         f"no item images (put them in {d / 'images'}/<item_id>.jpg)")
    if ent_file.is_file():
        _atomic_text(d, ent_file, "ent_id", ENTITY, content)
        content.notes.append(f"entity text = text columns of {ent_file.name}")
    else:
        content.notes.append("KG entities have ids only (no NAME.ent file): no entity text")
    ent_images = _list_images(d / "entity_images")
    for tok, path in ent_images.items():
        content.set_image(ENTITY, tok, path)


def collect_content(dataset_name: str, data_dir=None, descriptions: bool = True) -> EntityContent:
    """Text and image of every entity of ``dataset_name`` that has one (see the module docstring).

    ``descriptions``: include ml-1m's LLM-written descriptions in the item text.
    """
    d = dataset_dir(dataset_name, data_dir)
    content = EntityContent(dataset_name, options={"descriptions": bool(descriptions)})
    if (d / f"{dataset_name}.inter").is_file() and dataset_name != "ml-100k":
        read_atomic_content(dataset_name, d, content)
    elif dataset_name == "ml-1m":
        read_ml1m_content(d, content, descriptions=descriptions)
    elif dataset_name == "ml-100k":
        read_ml100k_content(d, content, ml1m_dir=d.parent / "ml-1m")
    elif dataset_name == "lastfm-2k":
        read_lastfm_content(d, content)
    elif dataset_name == "amazon-book":
        content.notes.append("amazon-book: no text and no images offline (ASINs and Freebase MIDs only); "
                             "use --encoder precomputed with your own feature matrices")
    else:
        read_atomic_content(dataset_name, d, content)
    return content


def content_coverage(dataset_name: str, data_dir, dataset) -> dict:
    """Content counts over a processed ``Dataset`` (what ``multikg4rec data info`` prints).

    Returns ``{"items", "items with text", "items with image", "non-item KG entities" (non-item KG
    entities), "entities with text", "entities with image", "notes"}``; for a dataset
    with a precomputed-feature preset also ``"items with precomputed <modality>"``.
    """
    content = collect_content(dataset_name, data_dir)
    n_items = int(dataset.n_items)
    item_tok = [str(t) for t in dataset.item_tokens]
    ent_tok = [str(t) for t in dataset.entity_tokens]

    def has(kind, tok, col):
        r = content.find(kind, tok)
        return r is not None and col[r] is not None

    def ent_has(tok, col):
        return tok != "" and (has(ENTITY, tok, col) or (tok in content.links and has(ITEM, content.links[tok], col)))

    def item_has(i, col):
        return has(ITEM, item_tok[i], col) or ent_has(ent_tok[i], col)

    out = {
        "items": n_items,
        "items with text": sum(item_has(i, content.text) for i in range(n_items)),
        "items with image": sum(item_has(i, content.image) for i in range(n_items)),
        "non-item KG entities": max(0, int(dataset.n_entities) - n_items),
        "entities with text": sum(ent_has(t, content.text) for t in ent_tok[n_items:]),
        "entities with image": sum(ent_has(t, content.image) for t in ent_tok[n_items:]),
    }
    from .precomputed import PRECOMPUTED_PRESETS, precomputed_row_ids
    if dataset_name in PRECOMPUTED_PRESETS:
        try:
            preset = PRECOMPUTED_PRESETS[dataset_name]
            ids = set(precomputed_row_ids(dataset_dir(dataset_name, data_dir), preset["ids"]))
            n = sum(t in ids for t in item_tok)
            for mod in preset["default"]:
                out[f"items with precomputed {mod}"] = n
        except Exception as e:  # coverage is informative only
            content.notes.append(f"precomputed features unreadable: {e}")
    out["notes"] = content.notes + ([f"{len(content.skipped)} content problems (see warnings)"]
                                    if content.skipped else [])
    return out
