"""Precomputed features: user-supplied ``.npy`` matrices (one row per item or entity) read into the
feature store format, with a row check (ids, NaN/inf, counts); built-in presets (lastfm-2k's text and
audio).
"""
from __future__ import annotations

import datetime as _dt
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from ..data.dataset import default_cache_dir
from ..errors import UserError
from ..fingerprint import file_digest
from .content import ENTITY, ITEM
from .store import (_MOD_NAME, FORMAT_VERSION, FeatureStore, _check_rows, _finalise, _key, _modality_meta,
                    _normalise, _one_builder, _Skips)

log = logging.getLogger(__name__)


#: Built-in precomputed feature sets: paths relative to the dataset folder.
PRECOMPUTED_PRESETS = {
    "lastfm-2k": {
        # row i of every matrix = Spillo item idx i; item_id_join.tsv maps it to the HetRec artistID
        "ids": {"file": "item_id_join.tsv", "id_column": "hetrec_artistID", "row_column": "spillo_item_idx"},
        "choices": {
            "text": {"minilm": "features/all-MiniLM-L6-v2.npy"},
            "audio": {"whisper": "features/whisper.npy", "vggish": "features/vggish.npy"},
        },
        "default": {"text": "minilm", "audio": "whisper"},
        "source": "Spillo et al. (giuspillo/extending_sota_data_mm_feat), per-artist averages",
    },
}


def precomputed_row_ids(base: Path, spec) -> list[str]:
    """Ids of the rows of a feature matrix: ``out[i]`` is the token of row ``i`` ("" = no entity).

    ``spec`` is a path or ``{"file", "id_column", "row_column"}``: a ``.npy`` of ids; a
    text file with one id per line (no header); or a TSV/CSV with a header, naming
    ``id_column`` and optionally ``row_column`` (else line order; negative rows are skipped).
    """
    if isinstance(spec, (str, Path)):
        spec = {"file": str(spec)}
    path = Path(spec["file"]).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise UserError(f"id file {path} not found")
    if path.suffix == ".npy":
        return [str(x) for x in np.load(path, allow_pickle=False).reshape(-1).tolist()]
    lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    id_col = spec.get("id_column")
    if not id_col:
        return [ln.strip() for ln in lines]
    sep = "," if path.suffix == ".csv" else "\t"
    header = lines[0].split(sep) if lines else []
    if id_col not in header:
        raise UserError(f"{path}:1: no column {id_col!r} (header: {header})")
    k = header.index(id_col)
    r = header.index(spec["row_column"]) if spec.get("row_column") in header else None
    if spec.get("row_column") and r is None:
        raise UserError(f"{path}:1: no column {spec['row_column']!r} (header: {header})")
    pairs = []
    for ln_no, ln in enumerate(lines[1:], start=2):
        f = ln.split(sep)
        if len(f) <= max(k, r or 0):
            continue
        if r is None:
            pairs.append((len(pairs), f[k].strip()))
        else:
            try:
                row = int(f[r])
            except ValueError:
                raise UserError(f"{path}:{ln_no}: row index {f[r]!r} is not an integer") from None
            if row >= 0:
                pairs.append((row, f[k].strip()))
    out = [""] * (max((p for p, _ in pairs), default=-1) + 1)
    for row, tok in pairs:
        out[row] = tok
    return out


class PrecomputedEncoder:
    """Features read from ``.npy`` matrices instead of computed.

    ``features``: ``{modality: path}`` (relative paths are under the dataset folder);
    ``ids``: an id file (see :func:`precomputed_row_ids`) shared by all matrices;
    ``kind``: ``"item"`` (ids are item tokens, default) or ``"entity"``.
    Without ``features``, the dataset's preset is used, where ``text=`` / ``audio=``
    pick among its choices (lastfm-2k: ``audio="whisper"`` default, or ``"vggish"``).
    """

    OPTIONS = ("features", "ids", "kind", "text", "audio", "image", "dataset")
    name = "precomputed"
    aligned = False

    def __init__(self, features: dict | None = None, ids=None, kind: str = "item", normalize: bool = True,
                 dataset: str | None = None, **choices):
        self.features = dict(features or {})
        self.ids = ids
        self.kind = kind
        self.normalize = normalize
        self.dataset = dataset
        self.choices = {k: v for k, v in choices.items() if v}
        self.preset = None
        if kind not in ("item", "entity"):
            raise UserError(f"precomputed kind {kind!r}: 'item' or 'entity'")

    def resolve(self, dataset: str) -> None:
        """Fill features/ids from the dataset's preset when the user gave none."""
        if self.features:
            if self.ids is None:
                raise UserError("precomputed features need an id file (--ids FILE): row i of each matrix = "
                                "the entity named on line i")
            return
        preset = PRECOMPUTED_PRESETS.get(dataset)
        if preset is None:
            raise UserError(f"no precomputed feature preset for {dataset!r} (presets: {sorted(PRECOMPUTED_PRESETS)}): "
                            f"pass --features MODALITY=FILE.npy ... and --ids FILE")
        self.preset = dataset
        self.ids = self.ids or preset["ids"]
        for mod, options in preset["choices"].items():
            pick = self.choices.get(mod, preset["default"].get(mod))
            if pick is None:
                continue
            if pick not in options:
                raise UserError(f"{dataset} precomputed {mod}: {pick!r} is not one of {sorted(options)}")
            self.features[mod] = options[pick]
            self.choices[mod] = pick

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.features)

    def identity(self) -> dict:
        return {"name": "precomputed", "aligned": False, "normalize": self.normalize, "kind": self.kind,
                "preset": self.preset, "choices": self.choices,
                "parts": {m: {"file": str(p)} for m, p in self.features.items()}, "ids": self.ids}

    def files(self, base: Path) -> dict[str, Path]:
        out = {}
        for m, p in self.features.items():
            p = Path(p).expanduser()
            out[m] = p if p.is_absolute() else base / p
        return out


# --------------------------------------------------------------------------- building the store

def build_precomputed(dataset_name: str, encoder: PrecomputedEncoder, data_dir=None, cache_dir=None,
                      chunk_rows: int = 4096, rebuild: bool = False) -> FeatureStore:
    """Read user-supplied matrices into the store format, row-checking them (ids, NaN/inf, counts).
    One process at a time per dataset and encoder (others wait, then load it)."""
    with _one_builder(cache_dir, dataset_name, "precomputed"):
        return _build_precomputed(dataset_name, encoder, data_dir, cache_dir, chunk_rows, rebuild)


def _build_precomputed(dataset_name: str, encoder: PrecomputedEncoder, data_dir, cache_dir, chunk_rows: int,
                       rebuild: bool) -> FeatureStore:
    from ..data.sources import dataset_dir
    t0 = time.time()
    base = dataset_dir(dataset_name, data_dir)
    encoder.resolve(dataset_name)
    files = encoder.files(base)
    for m in files:
        if not _MOD_NAME.match(m):
            raise UserError(f"modality name {m!r}: lower-case letters, digits, '-' or '_'")
    ids_spec = encoder.ids if isinstance(encoder.ids, dict) else {"file": str(encoder.ids)}
    id_path = Path(ids_spec["file"]).expanduser()
    id_path = id_path if id_path.is_absolute() else base / id_path
    ident = encoder.identity()
    key = _key({"format": FORMAT_VERSION, "dataset": dataset_name, "encoder": ident,
                "files": {m: file_digest(p) for m, p in files.items()}, "ids_file": file_digest(id_path)})
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / "features" / dataset_name / f"precomputed-{key}"
    if rebuild:
        shutil.rmtree(final, ignore_errors=True)
    if (final / "meta.json").is_file():
        return FeatureStore.load(final, from_cache=True)

    row_ids = precomputed_row_ids(base, ids_spec)
    kind = ITEM if encoder.kind == "item" else ENTITY
    # rows of the store: unique non-empty ids, first occurrence wins
    tokens, first_row = [], {}
    skips = _Skips(dataset_name)
    for i, tok in enumerate(row_ids):
        if tok and tok not in first_row:
            first_row[tok] = i
            tokens.append(tok)
    n = len(tokens)
    kinds = np.full(n, kind, dtype=np.int8)
    feats, masks, mod_meta, dims = {}, {}, {}, {}
    for mod, path in files.items():
        if not path.is_file():
            raise UserError(f"precomputed {mod} features: {path} not found")
        try:
            mat = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as e:
            raise UserError(f"precomputed {mod} features: {path} is not a readable .npy ({e})") from None
        if mat.ndim != 2:
            raise UserError(f"precomputed {mod} features: {path} has shape {mat.shape}, expected (rows, dim)")
        dim = int(mat.shape[1])
        dims[mod] = dim
        x = np.zeros((n, dim), dtype=np.float32)
        mask = np.zeros(n, dtype=bool)
        if mat.shape[0] != len(row_ids):
            log.warning("%s: %s has %d rows but the id file %s names %d; %s", dataset_name, path, mat.shape[0],
                        id_path, len(row_ids),
                        "rows without an id are ignored" if mat.shape[0] > len(row_ids)
                        else "ids past the last row are masked as missing")
        n_rows = min(mat.shape[0], len(row_ids))
        pos = {tok: k for k, tok in enumerate(tokens)}
        for tok in tokens:
            if first_row[tok] >= n_rows:
                skips.add(mod, kind, tok, f"no row {first_row[tok]} in {path.name} ({mat.shape[0]} rows)")
        for i, tok in enumerate(row_ids[:n_rows]):
            if tok and first_row[tok] != i:
                skips.add(mod, kind, tok, f"duplicate id: row {i} ignored, row {first_row[tok]} kept")
        for start in range(0, n_rows, chunk_rows):
            block = np.asarray(mat[start:start + chunk_rows], dtype=np.float64)
            whys = _check_rows(block)
            for j, why in enumerate(whys):
                i = start + j
                tok = row_ids[i]
                if not tok or first_row[tok] != i:
                    continue
                if why:
                    skips.add(mod, kind, tok, f"{why} (row {i} of {path.name})")
                    continue
                k = pos[tok]
                x[k] = block[j]
                mask[k] = True
        if encoder.normalize:
            x = _normalise(x)
        feats[mod], masks[mod] = x, mask
        skipped = skips.by_mod.get(mod, [])
        mod_meta[mod] = _modality_meta(dim, n, mask, kinds, skipped)
        mod_meta[mod]["file"] = str(path)
        if skipped:
            log.warning("%s (%s): %d of %d rows skipped (see %s/meta.json)", dataset_name, mod, len(skipped), n, final)
    n_noid = sum(1 for t in row_ids if not t)
    notes = [f"row i of each matrix = id on line i of {id_path.name}" +
             (f" ({n_noid} rows have no id)" if n_noid else "")]
    if encoder.preset:
        notes.append(f"preset {encoder.preset}: {PRECOMPUTED_PRESETS[encoder.preset]['source']}; "
                     f"choices {encoder.choices}")
    meta = {
        "format": FORMAT_VERSION, "key": key, "dataset": dataset_name,
        "encoder": {**ident, "dims": dims}, "modalities": mod_meta,
        "rows": {"total": n, "items": int((kinds == ITEM).sum()), "entities": int((kinds == ENTITY).sum())},
        "notes": notes, "seconds": round(time.time() - t0, 3),
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    _finalise(final, dataset_name, tokens, kinds, feats, masks, meta)
    return FeatureStore.load(final, from_cache=False)


