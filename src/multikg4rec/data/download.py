"""``multikg4rec data download NAME``: fetch interactions from the official
source where the licence allows it, convert them to RecBole atomic files, and
say what else to put where. Offline, ``--source`` takes a local copy of the
same archive; without one, the error says exactly what to fetch.

Knowledge graphs are not downloaded (their licences and hosts vary): the
message names the files and the folder layout the loader expects.
"""
from __future__ import annotations

import io
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd

from ..errors import UserError
from .atomic import write_atomic
from .sources import default_data_dir

GROUPLENS = "https://files.grouplens.org/datasets/"
SOURCES = {
    "ml-100k": (GROUPLENS + "movielens/ml-100k.zip",
                "KG: put RecBole's ml-100k.kg and ml-100k.link (KB4Rec Freebase linkage) in the same folder."),
    "ml-1m": (GROUPLENS + "movielens/ml-1m.zip",
              "KG: put MKR's data/movie/kg.txt and item_index2entity_id.txt (Satori) as ml-1m.kg / ml-1m.link, "
              "or use the ml-1m folder layout described in docs/data.md."),
    "lastfm-2k": (GROUPLENS + "hetrec2011/hetrec2011-lastfm-2k.zip",
                  "KG: put RippleNet's data/music/kg.txt and item_index2entity_id.txt as lastfm-2k.kg / .link."),
}


def _fetch(url_or_path: str) -> bytes:
    p = Path(url_or_path)
    if p.is_file():
        return p.read_bytes()
    try:
        with urllib.request.urlopen(url_or_path, timeout=30) as r:
            return r.read()
    except (OSError, ValueError) as e:
        raise UserError(f"could not fetch {url_or_path} ({e}); offline? download it elsewhere and pass "
                        f"--source /path/to/{Path(url_or_path).name}") from None


def _convert(name: str, zf: zipfile.ZipFile, out: Path) -> None:
    def member(suffix):
        for n in zf.namelist():
            if n.endswith(suffix):
                return zf.read(n)
        raise UserError(f"archive has no {suffix}")

    if name == "ml-100k":
        df = pd.read_csv(io.BytesIO(member("u.data")), sep="\t", header=None,
                         names=["user_id", "item_id", "rating", "timestamp"], dtype=str)
    elif name == "ml-1m":
        df = pd.read_csv(io.BytesIO(member("ratings.dat")), sep="::", engine="python", header=None,
                         names=["user_id", "item_id", "rating", "timestamp"], dtype=str)
    else:  # lastfm-2k: user_artists.dat (userID artistID weight) -> implicit pairs
        df = pd.read_csv(io.BytesIO(member("user_artists.dat")), sep="\t", dtype=str)
        df = pd.DataFrame({"user_id": df["userID"], "item_id": df["artistID"], "rating": df["weight"]})
    types = {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
    write_atomic(df, out / f"{name}.inter", {c: types[c] for c in df.columns})


def download(name: str, data_dir=None, source: str | None = None) -> Path:
    root = Path(data_dir) if data_dir else default_data_dir()
    if name not in SOURCES:
        raise UserError(
            f"no download for {name!r}. Known: {', '.join(SOURCES)}. amazon-book: copy KGAT's "
            f"Data/amazon-book/ (train.txt, test.txt, *_list.txt, kg_final.txt) into {root / 'amazon-book'}; "
            f"any other dataset: write RecBole atomic files into {root}/<NAME>/")
    url, kg_note = SOURCES[name]
    blob = _fetch(source or url)
    out = root / name
    with tempfile.TemporaryDirectory(dir=root if root.is_dir() else None) as tmp:
        try:
            zf = zipfile.ZipFile(io.BytesIO(blob))
        except zipfile.BadZipFile:
            raise UserError(f"{source or url} is not a zip archive") from None
        _convert(name, zf, Path(tmp))
        out.mkdir(parents=True, exist_ok=True)
        for f in Path(tmp).iterdir():
            shutil.move(str(f), out / f.name)
    print(f"wrote {out}/{name}.inter\n{kg_note}")
    return out
