"""Raw datasets: read what is on disk into one in-memory form, ``RawDataset``.

Every reader returns ORIGINAL ids as strings (tokens): the processed dataset
remaps them, and run artefacts map back to them.

Two kinds of source are understood:

* a RecBole atomic dataset: ``<data_dir>/<NAME>/<NAME>.inter`` (required) with
  optional ``.kg`` (head_id, relation_id, tail_id), ``.link`` (item_id,
  entity_id) and ``.item`` (item_id + any text columns). Users bring their
  own catalogue this way, no code needed.
* the built-in layouts of the real datasets in ``../shared/data`` that are
  not atomic (``ml-1m``, ``lastfm-2k``, ``amazon-book``); see
  ``BUILTIN_READERS`` and each folder's ``SOURCE.txt``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from .atomic import read_atomic


@dataclass
class RawDataset:
    """A dataset as read from disk, before any filtering or remapping.

    inter: columns ``user``, ``item`` (str tokens), optional ``rating``, ``timestamp``.
    kg:    columns ``head``, ``relation``, ``tail`` (str tokens) or None.
    link:  columns ``item``, ``entity``: item token -> KG entity token, or None.
    items: columns ``item`` + free-text metadata columns (title, genres...), or None.
    """

    name: str
    inter: pd.DataFrame
    kg: pd.DataFrame | None = None
    link: pd.DataFrame | None = None
    items: pd.DataFrame | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def default_data_dir() -> Path:
    return Path(os.environ.get("MULTIKG4REC_DATA", "./data"))


def dataset_dir(name: str, data_dir: str | Path | None = None) -> Path:
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    d = root / name
    if not d.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        hint = f" Found: {', '.join(have)}." if have else f" {root} does not exist or is empty."
        raise UserError(
            f"dataset {name!r} not found under {root.resolve()}.{hint} "
            f"Set --data-dir or MULTIKG4REC_DATA, or run 'multikg4rec data download {name}'."
        )
    return d


# --------------------------------------------------------------------------- atomic

def read_atomic_dataset(name: str, d: Path) -> RawDataset:
    inter_path = d / f"{name}.inter"
    df = read_atomic(inter_path, required=("user_id", "item_id"))
    inter = pd.DataFrame({"user": df["user_id"], "item": df["item_id"]})
    for col in ("rating", "timestamp"):
        if col in df:
            inter[col] = df[col].astype("float64")
    raw = RawDataset(name, inter, files=[inter_path])
    kg_path, link_path, item_path = (d / f"{name}.{ext}" for ext in ("kg", "link", "item"))
    if kg_path.is_file():
        kg = read_atomic(kg_path, required=("head_id", "relation_id", "tail_id"))
        raw.kg = pd.DataFrame({"head": kg["head_id"], "relation": kg["relation_id"], "tail": kg["tail_id"]})
        raw.files.append(kg_path)
        if link_path.is_file():
            link = read_atomic(link_path, required=("item_id", "entity_id"))
            raw.link = pd.DataFrame({"item": link["item_id"], "entity": link["entity_id"]})
            raw.files.append(link_path)
        else:
            raw.notes.append(f"{kg_path.name} without {link_path.name}: KG entities are matched to items by equal token")
            raw.link = None
    if item_path.is_file():
        items = read_atomic(item_path, required=("item_id",)).rename(columns={"item_id": "item"})
        raw.items = items
        raw.files.append(item_path)
    return raw


# --------------------------------------------------------------------------- built-in layouts

def _kgat_lists(path: Path) -> pd.DataFrame:
    """KGAT's ``*_list.txt``: header 'org_id remap_id [freebase_id]', space separated."""
    rows = [line.rstrip("\n").split(" ") for line in open(path, encoding="utf-8").read().splitlines()[1:] if line]
    width = max(len(r) for r in rows)
    cols = ["org_id", "remap_id", "freebase_id"][:width]
    return pd.DataFrame(rows, columns=cols)


def _kgat_pairs(*paths: Path) -> pd.DataFrame:
    """KGAT's train/test files, 'user item item ...' per line -> (user, item) remap ids."""
    users, items = [], []
    for p in paths:
        for line in open(p, encoding="utf-8"):
            parts = line.split()
            if len(parts) > 1:
                users.extend([parts[0]] * (len(parts) - 1))
                items.extend(parts[1:])
    return pd.DataFrame({"user": np.asarray(users), "item": np.asarray(items)})


def _satori(kg_dir: Path, item_key: str = "item") -> tuple[pd.DataFrame, pd.DataFrame]:
    """RippleNet/KGCN Satori KG: item_index2entity_id.txt + kg.txt (tab separated)."""
    link = pd.read_csv(kg_dir / "item_index2entity_id.txt", sep="\t", header=None, names=[item_key, "entity"], dtype=str)
    kg = pd.read_csv(kg_dir / "kg.txt", sep="\t", header=None, names=["head", "relation", "tail"], dtype=str)
    return kg, link


def read_ml1m(d: Path) -> RawDataset:
    """MovieLens-1M: DERK's KGAT-format interactions (all 1,000,209 pairs, no
    ratings) with ORIGINAL user/movie ids restored, the Satori KG (MKR), and
    titles + genres (movies.dat) + LLM-written descriptions as item text."""
    it = d / "interactions"
    pairs = _kgat_pairs(it / "train.txt", it / "test.txt")
    users = _kgat_lists(it / "user_list.txt").set_index("remap_id")["org_id"]
    items = _kgat_lists(it / "item_list.txt").set_index("remap_id")["org_id"]
    inter = pd.DataFrame({"user": users.loc[pairs["user"]].to_numpy(), "item": items.loc[pairs["item"]].to_numpy()})
    kg, link = _satori(d / "kg-satori")
    movies = pd.read_csv(d / "movies.dat", sep="::", engine="python", header=None,
                         names=["item", "title", "genres"], dtype=str, encoding="latin-1")
    movies["genres"] = movies["genres"].str.replace("|", ", ", regex=False)
    files = [it / "train.txt", it / "test.txt", d / "kg-satori" / "kg.txt", d / "movies.dat"]
    return RawDataset("ml-1m", inter, kg=kg, link=link, items=movies, files=files,
                      notes=["no rating values in this copy: every pair is a positive",
                             "KG: Microsoft Satori (MKR), not the paper's Freebase extraction"])


def read_lastfm2k(d: Path) -> RawDataset:
    """Last.fm-2K, the multimodal subset of Spillo et al. (1,425 artists with
    text and audio features), with ORIGINAL HetRec ids, and the Satori KG
    (RippleNet/MCCLK) linked by HetRec artistID (397 artists overlap)."""
    inter = pd.read_csv(d / "lfm2k_og_ids.inter", sep="\t", dtype=str)
    inter = pd.DataFrame({"user": inter["userID"], "item": inter["itemID"]})
    kg, link = _satori(d / "kg")
    text = pd.read_csv(d / "lfm2k_text.tsv", sep="\t", dtype=str, keep_default_na=False)
    artists = pd.read_csv(d / "original_hetrec2011" / "artists.dat", sep="\t", dtype=str,
                          keep_default_na=False, usecols=["id", "name"], encoding="utf-8")
    items = artists.rename(columns={"id": "item", "name": "title"}).merge(
        text.rename(columns={"artistID": "item", "text": "tags"}), on="item", how="outer")
    return RawDataset("lastfm-2k", inter, kg=kg, link=link, items=items,
                      files=[d / "lfm2k_og_ids.inter", d / "kg" / "kg.txt"],
                      notes=["KG covers 397 of the 1,425 multimodal artists"])


def read_amazon_book(d: Path) -> RawDataset:
    """Amazon-Book as released by KGAT, with ORIGINAL reviewer ids and ASINs.
    Its KG triples (kg_final.txt) are not in the offline copy; if a user puts
    KGAT's ``kg_final.txt`` in the folder it is used (entity/relation remap ids
    as in KGAT's entity_list/relation_list)."""
    pairs = _kgat_pairs(d / "train.txt", d / "test.txt")
    users = _kgat_lists(d / "user_list.txt").set_index("remap_id")["org_id"]
    items = _kgat_lists(d / "item_list.txt").set_index("remap_id")["org_id"]
    inter = pd.DataFrame({"user": users.loc[pairs["user"]].to_numpy(), "item": items.loc[pairs["item"]].to_numpy()})
    raw = RawDataset("amazon-book", inter, files=[d / "train.txt", d / "test.txt"])
    kg_path = d / "kg_final.txt"
    if kg_path.is_file():
        kg = pd.read_csv(kg_path, sep=" ", header=None, names=["head", "relation", "tail"], dtype=str)
        raw.kg = kg
        # KGAT: item remap id == entity remap id
        raw.link = pd.DataFrame({"item": items.to_numpy(), "entity": items.index.to_numpy()})
        raw.files.append(kg_path)
    else:
        raw.notes.append("no KG triples (kg_final.txt absent): only collaborative models can run")
    return raw


BUILTIN_READERS = {"ml-1m": read_ml1m, "lastfm-2k": read_lastfm2k, "amazon-book": read_amazon_book}


def read_raw(name: str, data_dir: str | Path | None = None) -> RawDataset:
    """Read dataset ``name`` from ``data_dir`` (atomic files win over a built-in layout)."""
    d = dataset_dir(name, data_dir)
    if (d / f"{name}.inter").is_file():
        raw = read_atomic_dataset(name, d)
    elif name in BUILTIN_READERS:
        try:
            raw = BUILTIN_READERS[name](d)
        except FileNotFoundError as e:
            raise UserError(f"dataset {name!r} in {d} is incomplete: {e.filename} is missing (see its SOURCE.txt)") from None
        except UnicodeDecodeError:                   # which file, which line: the first one that does not decode
            from .atomic import utf8_error
            bad = [f for f in sorted(d.rglob("*")) if f.is_file() and f.suffix in (".inter", ".kg", ".link", ".txt",
                                                                                     ".tsv", ".dat")]
            raise UserError(next((m for f in bad if (m := utf8_error(f))), f"{d}: a data file is not UTF-8 text")) \
                from None
    else:
        raise UserError(
            f"{d} holds no {name}.inter: a dataset folder needs RecBole atomic files "
            f"(NAME.inter with 'user_id:token<TAB>item_id:token' header; optional NAME.kg, NAME.link, NAME.item)"
        )
    if len(raw.inter) == 0:
        raise UserError(f"dataset {name!r}: no interactions in {raw.files[0]}")
    return raw
