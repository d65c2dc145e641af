"""RecBole-style atomic files: a tab-separated table whose header names each
column and its type, e.g. ``user_id:token  item_id:token  rating:float``.

Types: ``token`` (an id, kept as a string), ``token_seq`` (space-separated
tokens, kept as a string), ``float``, ``float_seq``. Columns are returned
under their bare name (``user_id``), always as pandas columns.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd

from ..errors import UserError

_TYPES = {"token", "token_seq", "float", "float_seq"}


def read_header(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n")
    if not header:
        raise UserError(f"{path}:1: empty file (an atomic file starts with a header such as 'user_id:token<TAB>item_id:token')")
    cols = []
    for field in header.split("\t"):
        name, sep, ftype = field.partition(":")
        if not sep or ftype not in _TYPES:
            raise UserError(
                f"{path}:1: header field {field!r} is not 'name:type' with type in {sorted(_TYPES)}"
            )
        cols.append((name, ftype))
    return cols


def read_atomic(path: str | Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read one atomic file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    cols = read_header(path)
    names = [c for c, _ in cols]
    missing = [c for c in required if c not in names]
    if missing:
        raise UserError(f"{path}:1: missing required column(s) {missing}; header has {names}")
    try:
        df = pd.read_csv(
            path, sep="\t", header=0, names=names, dtype=str, keep_default_na=False,
            quoting=csv.QUOTE_NONE, engine="c", encoding="utf-8",
        )
    except pd.errors.ParserError as e:  # e.g. "Expected 4 fields in line 7, saw 5"
        m = re.search(r"line (\d+), saw (\d+)", str(e))
        where = f"{path}:{m.group(1)}" if m else str(path)
        detail = f"expected {len(names)} tab-separated fields, saw {m.group(2)}" if m else str(e).strip()
        raise UserError(f"{where}: malformed line: {detail}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for name, ftype in cols:
        if ftype == "float":
            num = pd.to_numeric(df[name], errors="coerce")
            bad = num.isna() & (df[name] != "")
            if bad.any():
                row = int(bad.to_numpy().nonzero()[0][0])
                raise UserError(
                    f"{path}:{row + 2}: column {name!r} is declared float but holds {df[name].iloc[row]!r}"
                )
            df[name] = num
    for name in required:
        empty = df[name] == ""
        if empty.any():
            row = int(empty.to_numpy().nonzero()[0][0])
            raise UserError(f"{path}:{row + 2}: empty value in required column {name!r}")
    return df


def write_atomic(df: pd.DataFrame, path: str | Path, types: dict[str, str]) -> None:
    """Write ``df`` as an atomic file; ``types`` maps column -> atomic type."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    out.columns = [f"{c}:{types[c]}" for c in df.columns]
    out.to_csv(path, sep="\t", index=False, quoting=csv.QUOTE_NONE)
