"""RecBole-style atomic files: a tab-separated table whose header names each
column and its type, e.g. ``user_id:token  item_id:token  rating:float``.

Types: ``token`` (an id, kept as a string), ``token_seq`` (space-separated
tokens, kept as a string), ``float``, ``float_seq``. Columns are returned
under their bare name (``user_id``), always as pandas columns.
"""
from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import pandas as pd

from ..errors import UserError

_TYPES = {"token", "token_seq", "float", "float_seq"}


def utf8_error(path: Path) -> str | None:
    """``path:LINE: not UTF-8 ...``: the first line of ``path`` that is not valid UTF-8, with what to do;
    None when every line decodes."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return (f"{path}:{n}: not UTF-8 text (byte 0x{line[e.start]:02x} at column {e.start + 1}); the file "
                        f"seems to be in another encoding: re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    return None


def _extra_fields_error(path: Path, n_fields: int) -> str:
    """``path:LINE: malformed line ...`` for the first line with more tab-separated fields than the header."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            k = line.rstrip("\r\n").count("\t") + 1
            if k > n_fields:
                return f"{path}:{n}: malformed line: expected {n_fields} tab-separated fields, saw {k}"
    return f"{path}: malformed lines: more fields than the header's {n_fields}"


def read_header(path: Path) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n")
    except UnicodeDecodeError:
        raise UserError(utf8_error(path) or f"{path}: not UTF-8 text") from None
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
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            # index_col=False: a line with more fields than the header must not silently become an index
            df = pd.read_csv(
                path, sep="\t", header=0, names=names, dtype=str, keep_default_na=False,
                quoting=csv.QUOTE_NONE, engine="c", encoding="utf-8", index_col=False,
            )
        if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
            raise UserError(_extra_fields_error(path, len(names)))
    except pd.errors.ParserError as e:  # e.g. "Expected 4 fields in line 7, saw 5"
        m = re.search(r"line (\d+), saw (\d+)", str(e))
        where = f"{path}:{m.group(1)}" if m else str(path)
        detail = f"expected {len(names)} tab-separated fields, saw {m.group(2)}" if m else str(e).strip()
        raise UserError(f"{where}: malformed line: {detail}") from None
    except UnicodeDecodeError:
        raise UserError(utf8_error(path) or f"{path}: not UTF-8 text") from None
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
