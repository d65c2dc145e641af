"""The feature store: one folder per (dataset, encoder, content), written once, reused.

Layout under ``<cache>/features/<dataset>/<encoder>-<key>/`` (``<cache>`` =
``--cache-dir`` or ``$MULTIKG4REC_CACHE`` or ``~/.cache/multikg4rec``)::

    ids.npy              (n,) str   original tokens (item tokens, KG entity tokens)
    kinds.npy            (n,) int8  0 = item, 1 = KG entity (the two token namespaces)
    <modality>.npy       (n, d) float32, zeros where the row has no content
    <modality>.mask.npy  (n,) bool  True where the row is real, encoded content
    meta.json            encoder name / models / library versions, dims, counts,
                         skipped rows with reasons; written last: its presence
                         marks a complete store

``key`` hashes the encoder identity, the content (texts, the bytes of each
image) or the bytes of the precomputed files, so a change rebuilds and a repeat run loads.

Building streams content in batches (images are read from disk per batch, never
all at once) and writes every ``chunk_rows`` encoded rows to
``<store>.partial/<modality>-NNNNNN.npz`` (tmp file + atomic rename). An
interrupted build resumes from those chunks; the store itself is assembled in a
temporary folder and renamed into place, so a reader never sees half a store.

A row whose content cannot be encoded (unreadable image, empty or non-UTF-8
text, NaN/inf or all-zero vector, a feature row with no id) is skipped with a
warning naming the entity, counted, and masked as missing.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.dataset import default_cache_dir
from ..errors import UserError
from .content import ENTITY, ITEM, KIND_NAMES, EntityContent, collect_content
from .encoders import BadInput, Encoder, make_encoder

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_MOD_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
MAX_WARNINGS = 20


@dataclass
class FeatureStore:
    """A finished store, loaded (matrices memory-mapped)."""

    path: Path
    meta: dict
    ids: np.ndarray                       # (n,) str
    kinds: np.ndarray                     # (n,) int8, ITEM / ENTITY
    features: dict[str, np.ndarray]       # modality -> (n, d) float32
    masks: dict[str, np.ndarray]          # modality -> (n,) bool
    from_cache: bool = False
    links: dict = field(default_factory=dict)   # KG entity token -> item token (see EntityContent.links)
    _index: dict | None = field(default=None, repr=False)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.features)

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(x.shape[1]) for m, x in self.features.items()}

    @property
    def encoder(self) -> dict:
        return self.meta["encoder"]

    @property
    def aligned(self) -> bool:
        """True when all modalities share one embedding space (CLIP)."""
        return bool(self.meta["encoder"].get("aligned"))

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, kind: int, token: str) -> int | None:
        if self._index is None:
            self._index = {(int(k), str(t)): r for r, (k, t) in enumerate(zip(self.kinds, self.ids))}
        return self._index.get((kind, str(token)))

    def coverage(self) -> dict[str, dict]:
        """Per modality: rows with content, rows encoded (mask True), rows skipped."""
        return {m: {k: v for k, v in info.items() if k != "skipped_examples"}
                for m, info in self.meta["modalities"].items()}

    @classmethod
    def load(cls, path: str | Path, from_cache: bool = True) -> "FeatureStore":
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"{path} is not a finished feature store (no meta.json)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            raise UserError(f"{path}: feature store format {meta.get('format')} (this code reads {FORMAT_VERSION}); "
                            f"rebuild with 'multikg4rec features build --rebuild'")
        feats = {m: np.load(path / f"{m}.npy", mmap_mode="r") for m in meta["modalities"]}
        masks = {m: np.load(path / f"{m}.mask.npy") for m in meta["modalities"]}
        links = {}
        if (path / "links.npy").is_file():
            pairs = np.load(path / "links.npy")
            links = dict(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist()))
        return cls(path, meta, np.load(path / "ids.npy"), np.load(path / "kinds.npy"), feats, masks, from_cache,
                   links)

    def summary(self) -> str:
        m = self.meta
        lines = [f"feature store {self.path}",
                 f"  dataset {m['dataset']}, encoder {m['encoder']['name']}"
                 f"{' (aligned spaces)' if self.aligned else ''}, {len(self)} rows "
                 f"({m['rows']['items']} items, {m['rows']['entities']} KG entities)",
                 f"  built in {m['seconds']:.1f} s on {m['created']}" + (" (loaded from cache)" if self.from_cache else "")]
        for mod, info in m["modalities"].items():
            lines.append(f"  {mod:<6} dim {info['dim']:>5}: {info['encoded']} encoded of {info['with_content']} "
                         f"with content ({info['items_encoded']} items, {info['entities_encoded']} entities), "
                         f"{info['skipped']} skipped")
        for n in m.get("notes", []):
            lines.append(f"  note: {n}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers

def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _key(payload: dict) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_savez(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Skips:
    """Counts skipped rows per modality; warns for the first few, by entity."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.by_mod: dict[str, list] = {}

    def add(self, mod: str, kind: int, token: str, reason: str, warn: bool = True) -> None:
        lst = self.by_mod.setdefault(mod, [])
        if warn and len(lst) < MAX_WARNINGS:
            log.warning("%s: %s %r (%s): %s; row skipped, masked as missing",
                        self.dataset, KIND_NAMES[kind], token, mod, reason)
        elif warn and len(lst) == MAX_WARNINGS:
            log.warning("%s (%s): more rows skipped; they are counted in the store's meta.json", self.dataset, mod)
        lst.append([KIND_NAMES[kind], token, reason])


def _check_rows(emb: np.ndarray) -> np.ndarray:
    """Per row: '' if usable, else why not."""
    emb = np.asarray(emb)
    finite = np.isfinite(emb).all(axis=1)
    zero = finite & ~np.any(emb != 0, axis=1)
    return np.where(~finite, "NaN/inf values in the feature vector",
                    np.where(zero, "all-zero feature vector", ""))


def _save_links(folder: Path, links: dict) -> None:
    path = folder / "links.npy"
    if not links:
        path.unlink(missing_ok=True)
        return
    tmp = folder / f".links.tmp-{os.getpid()}.npy"
    np.save(tmp, np.asarray(sorted(links.items()), dtype=str).reshape(-1, 2))
    os.replace(tmp, path)


def _finalise(final: Path, dataset: str, ids, kinds, feats: dict, masks: dict, meta: dict,
              links: dict | None = None) -> Path:
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    np.save(tmp / "ids.npy", np.asarray(ids, dtype=str))
    np.save(tmp / "kinds.npy", np.asarray(kinds, dtype=np.int8))
    if links:
        _save_links(tmp, links)
    for m in feats:
        np.save(tmp / f"{m}.npy", feats[m])
        np.save(tmp / f"{m}.mask.npy", masks[m])
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
    try:
        if final.exists():  # an unfinished leftover (no meta.json) or a concurrent build
            if (final / "meta.json").is_file():
                shutil.rmtree(tmp)
                return final
            shutil.rmtree(final)
        os.rename(tmp, final)
    except OSError:
        if not (final / "meta.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _modality_meta(dim, with_content, mask, kinds, skipped) -> dict:
    kinds = np.asarray(kinds)
    return {"dim": int(dim), "with_content": int(with_content), "encoded": int(mask.sum()),
            "items_encoded": int((mask & (kinds == ITEM)).sum()),
            "entities_encoded": int((mask & (kinds == ENTITY)).sum()),
            "skipped": len(skipped), "skipped_examples": skipped[:1000]}


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


# --------------------------------------------------------------------------- encoding

def _encode_batch(part, inputs: list, rows: list[int], label) -> tuple[list[int], list[np.ndarray], list]:
    """Encode; on an error, retry one by one so one bad input costs one row. If every input of a
    batch fails on its own, the error is the encoder's, not the data's: re-raise it."""
    try:
        out = np.asarray(part.encode(inputs), dtype=np.float32)
        return rows, list(out), []
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as batch_error:
        if len(inputs) == 1:
            raise RuntimeError(f"{label(rows[0])}: the encoder failed: {type(batch_error).__name__}: "
                               f"{batch_error}") from batch_error
        ok_rows, ok_emb, failed = [], [], []
        for x, r in zip(inputs, rows):
            try:
                ok_emb.append(np.asarray(part.encode([x]), dtype=np.float32)[0])
                ok_rows.append(r)
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as e:
                failed.append((r, f"encoder failed on it ({type(e).__name__}: {e})"))
        if not ok_rows:
            raise RuntimeError(f"the encoder failed on a whole batch ({type(batch_error).__name__}: "
                               f"{batch_error})") from batch_error
        return ok_rows, ok_emb, failed


def _load_chunks(partial: Path, mod: str, dim: int) -> list[dict]:
    chunks = []
    for f in sorted(partial.glob(f"{mod}-*.npz")):
        try:
            with np.load(f, allow_pickle=False) as z:
                c = {"rows": z["rows"], "emb": z["emb"], "ok": z["ok"], "why": json.loads(str(z["why"]))}
            if c["emb"].ndim != 2 or c["emb"].shape[1] != dim or len(c["rows"]) != len(c["emb"]):
                raise ValueError(f"shape {c['emb'].shape}, expected (*, {dim})")
            chunks.append(c)
        except Exception as e:
            log.warning("ignoring unreadable partial chunk %s (%s); its rows are encoded again", f, e)
    return chunks


@contextlib.contextmanager
def _library_bars(enabled: bool):
    """Hugging Face's own progress bars (weights loading) on or off for the ``with`` block."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:                                  # transformers is only needed by some encoders
        yield
        return
    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _one_builder(cache_dir, dataset: str, name: str):
    """Hold an exclusive lock on the stores of ``dataset`` x encoder ``name`` while one is built or loaded:
    two processes that need the same features (the jobs of ``reproduce --jobs 2`` on a fresh machine) would
    otherwise write into the same ``.partial`` folder, and one would move it while the other still writes.
    The second process waits, then loads what the first one built."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / "features" / dataset / f"{_slug(name)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another process is building the %s features; waiting for it", dataset, name)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_store(content: EntityContent, encoder: Encoder, cache_dir=None, batch_size: int = 32,
                chunk_rows: int = 256, progress: bool = True, rebuild: bool = False) -> FeatureStore:
    """Encode ``content`` with ``encoder`` into the store (or load it when already built).
    One process at a time per dataset and encoder (others wait, then load it)."""
    with _one_builder(cache_dir, content.dataset, encoder.name):
        return _build_store(content, encoder, cache_dir, batch_size, chunk_rows, progress, rebuild)


def _build_store(content: EntityContent, encoder: Encoder, cache_dir, batch_size: int, chunk_rows: int,
                 progress: bool, rebuild: bool) -> FeatureStore:
    t0 = time.time()
    mods = [m for m in encoder.modalities if m in content.modalities]
    for m in mods:
        if not _MOD_NAME.match(m):
            raise UserError(f"modality name {m!r}: lower-case letters, digits, '-' or '_'")
    if not mods:
        raise UserError(f"{content.dataset}: no content for encoder {encoder.name!r} (it encodes "
                        f"{list(encoder.modalities)}; the dataset has {list(content.modalities) or 'no text or images'}): "
                        + "; ".join(content.notes) + ". Add content (docs/data.md, 'Bring your own data'), or "
                        "train on the graph alone with --modalities []")
    ident = encoder.identity()
    key = _key({"format": FORMAT_VERSION, "dataset": content.dataset, "encoder": ident,
                "content": content.fingerprint(), "options": content.options, "modalities": mods})
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / "features" / content.dataset / f"{_slug(encoder.name)}-{key}"
    partial = final.with_name(final.name + ".partial")
    if rebuild:
        shutil.rmtree(final, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
    if (final / "meta.json").is_file():
        store = FeatureStore.load(final, from_cache=True)
        if store.links != content.links:  # links change no vector: refresh them in place
            _save_links(final, content.links)
            store.links = dict(content.links)
        return store

    with _library_bars(progress):                   # transformers' "Loading weights" bar obeys --quiet too
        encoder.load()
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "identity.json").write_text(json.dumps(ident, indent=1, default=str), encoding="utf-8")
    n = len(content)
    kinds = np.asarray(content.kinds, dtype=np.int8)
    skips = _Skips(content.dataset)
    feats, masks, mod_meta = {}, {}, {}
    from tqdm.auto import tqdm

    def label(r):
        return f"{content.dataset}: {KIND_NAMES[content.kinds[r]]} {content.ids[r]!r}"

    for mod in mods:
        part = encoder.parts[mod]
        dim = int(part.dim)
        rows_all = content.rows_with(mod)
        chunks = _load_chunks(partial, mod, dim)
        done = set(np.concatenate([c["rows"] for c in chunks]).tolist()) if chunks else set()
        todo = [int(r) for r in rows_all if int(r) not in done]
        if mod == "text":  # similar lengths in a batch: less padding
            todo.sort(key=lambda r: len(content.text[r]))
        seq = max((int(f.stem.rsplit("-", 1)[1]) for f in partial.glob(f"{mod}-*.npz")), default=-1) + 1
        buf_rows, buf_emb, buf_ok, buf_why = [], [], [], []

        def flush():
            nonlocal seq, buf_rows, buf_emb, buf_ok, buf_why
            if not buf_rows:
                return
            emb = np.stack(buf_emb).astype(np.float32) if buf_emb else np.zeros((0, dim), np.float32)
            _atomic_savez(partial / f"{mod}-{seq:06d}.npz", rows=np.asarray(buf_rows, dtype=np.int64), emb=emb,
                          ok=np.asarray(buf_ok, dtype=bool), why=np.array(json.dumps(buf_why)))
            chunks.append({"rows": np.asarray(buf_rows, dtype=np.int64), "emb": emb,
                           "ok": np.asarray(buf_ok, dtype=bool), "why": buf_why})
            seq += 1
            buf_rows, buf_emb, buf_ok, buf_why = [], [], [], []

        def add(r, emb, why):
            buf_rows.append(r)
            buf_emb.append(emb if emb is not None else np.zeros(dim, np.float32))
            buf_ok.append(not why)
            buf_why.append(why)
            if why:
                skips.add(mod, content.kinds[r], content.ids[r], why)

        bar = tqdm(total=len(rows_all), initial=len(rows_all) - len(todo), desc=f"{content.dataset} {mod}",
                   unit=mod, disable=not progress, leave=False)
        try:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                inputs, in_rows = [], []
                for r in batch:
                    try:
                        inputs.append(part.prepare(content.get(mod, r)))
                        in_rows.append(r)
                    except BadInput as e:
                        add(r, None, str(e))
                if inputs:
                    ok_rows, ok_emb, failed = _encode_batch(part, inputs, in_rows, label)
                    for r, why in failed:
                        add(r, None, why)
                    if ok_rows:
                        emb = np.stack(ok_emb)
                        if emb.shape[1] != dim:
                            raise RuntimeError(f"encoder {encoder.name} ({mod}) returned dim {emb.shape[1]}, "
                                               f"expected {dim}")
                        whys = _check_rows(emb)
                        for r, e, why in zip(ok_rows, emb, whys):
                            add(r, None if why else e, str(why))
                del inputs
                bar.update(len(batch))
                if len(buf_rows) >= chunk_rows:
                    flush()
        finally:
            flush()  # keep what was encoded, even on an error or Ctrl-C
            bar.close()
        # assemble
        x = np.zeros((n, dim), dtype=np.float32)
        mask = np.zeros(n, dtype=bool)
        prior_skips = []
        for c in chunks:
            ok = c["ok"]
            x[c["rows"][ok]] = c["emb"][ok]
            mask[c["rows"][ok]] = True
        recorded = {(s[0], s[1]) for s in skips.by_mod.get(mod, [])}
        for c in chunks:  # skips recorded by an earlier, interrupted run
            for r, ok, why in zip(c["rows"].tolist(), c["ok"].tolist(), c["why"]):
                if not ok and (KIND_NAMES[content.kinds[r]], content.ids[r]) not in recorded:
                    prior_skips.append([KIND_NAMES[content.kinds[r]], content.ids[r], why])
        skipped = skips.by_mod.get(mod, []) + prior_skips
        if encoder.normalize:
            x = _normalise(x)
        feats[mod], masks[mod] = x, mask
        mod_meta[mod] = _modality_meta(dim, len(rows_all), mask, kinds, skipped)
        if skipped:
            log.warning("%s (%s): %d of %d rows skipped (see %s/meta.json)", content.dataset, mod, len(skipped),
                        len(rows_all), final)

    meta = {
        "format": FORMAT_VERSION, "key": key, "dataset": content.dataset,
        "encoder": {**ident, "dims": {m: int(encoder.parts[m].dim) for m in mods}},
        "modalities": mod_meta,
        "rows": {"total": n, "items": int((kinds == ITEM).sum()), "entities": int((kinds == ENTITY).sum())},
        "content_options": content.options,
        "notes": list(content.notes) + [f"{m}: the encoder has this modality but the dataset gives no {m}"
                                        for m in encoder.modalities if m not in mods],
        "content_problems": [list(s) for s in content.skipped[:1000]], "n_content_problems": len(content.skipped),
        "batch_size": batch_size, "seconds": round(time.time() - t0, 3),
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    _finalise(final, content.dataset, content.ids, kinds, feats, masks, meta, links=content.links)
    shutil.rmtree(partial, ignore_errors=True)
    return FeatureStore.load(final, from_cache=False)


# --------------------------------------------------------------------------- entry point

def build_features(dataset_name: str, encoder="clip", data_dir=None,
                   cache_dir=None, batch_size: int = 32, descriptions: bool = True, progress: bool = True,
                   rebuild: bool = False, content: EntityContent | None = None, **encoder_opts) -> FeatureStore:
    """Build (or load from the cache) the features of ``dataset_name`` with ``encoder``.

    ``encoder``: a name (``clip``, ``minilm+efficientnet``, ``minilm``, ``efficientnet``,
    ``precomputed``) or an encoder object; ``encoder_opts`` go to :func:`make_encoder`
    (``clip_path``, ``device``, ``image_norm``, ``normalize``; for precomputed:
    ``features={mod: path}``, ``ids``, ``kind``, ``audio``/``text``).
    ``descriptions``: include ml-1m's LLM-written descriptions in the item text.
    ``content``: encode this content instead of the dataset's (tests, subsets).
    """
    from .precomputed import PrecomputedEncoder, build_precomputed
    enc = make_encoder(encoder, **encoder_opts) if isinstance(encoder, str) else encoder
    if isinstance(enc, PrecomputedEncoder):
        return build_precomputed(dataset_name, enc, data_dir=data_dir, cache_dir=cache_dir, rebuild=rebuild)
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if content is None:
        content = collect_content(dataset_name, data_dir, descriptions=descriptions)
    return build_store(content, enc, cache_dir=cache_dir, batch_size=batch_size, progress=progress, rebuild=rebuild)


def list_stores(cache_dir=None, dataset: str | None = None) -> list[Path]:
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "features"
    pattern = f"{dataset}/*/meta.json" if dataset else "*/*/meta.json"
    return sorted(p.parent for p in root.glob(pattern))
