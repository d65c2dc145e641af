"""A self-contained export of a trained run (``multikg4rec export --run RUN --out BUNDLE``): what a server needs
to answer with no data folder and no pickle of arbitrary objects.

A bundle folder holds::

    manifest.json      format, model, dataset, the run's config and metrics, the data fingerprint, the SHA-256
                       of every other file (a damaged or missing file is a one-line error on load)
    weights.pt         the best epoch's state dict (tensors only: loads with ``torch.load(weights_only=True)``)
    dataset.npz        the dataset as the model saw it (tokens, splits: each user's train items, the KG)
    features.npz       the aligned content features of a model that uses them
    embeddings.npz     ``user`` (n_users, D), ``item`` (n_items, D): the rows the evaluator scores with
                       (inner-product models; absent for KGCN and ConvNCF, which the server rebuilds)
    catalogue.json     item titles and image files, where the dataset has them
    catalogue/         those image files
    journal.jsonl      (written by the server) items and users added since the export, replayed on load
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .rundir import load_run, read_config, read_json, run_features, run_dataset

FORMAT = 1
#: the files the manifest's checksums cover (those a bundle has)
FILES = ("weights.pt", "dataset.npz", "features.npz", "embeddings.npz", "catalogue.json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def export(run_dir: str | Path, out: str | Path, data_dir=None) -> Path:
    """Write the bundle of the finished run ``run_dir`` to ``out`` (a new or empty folder); ``data_dir`` is
    read for item titles and images only (the run's default when None)."""
    run_dir, out = Path(run_dir), Path(out)
    cfg = read_config(run_dir)
    if not (run_dir / "metrics.json").is_file():
        raise UserError(f"{run_dir} has not finished (no metrics.json): train it first, then export")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder: choose a new --out")
    model, dataset, cfg = load_run(run_dir, data_dir=data_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "weights.pt")
    dataset.save(tmp / "dataset.npz", compressed=True)
    if (run_dir / "features.npz").is_file():
        shutil.copy2(run_dir / "features.npz", tmp / "features.npz")
    with torch.no_grad():
        model.prepare_eval()
    if (rows := model.scoring_rows()) is not None:                     # inner-product models: the scored rows
        u, i = rows
        np.savez_compressed(tmp / "embeddings.npz", user=u.float().cpu().numpy(), item=i.float().cpu().numpy())
    (tmp / "catalogue.json").write_text(json.dumps(_catalogue(dataset, data_dir or cfg.get("data_dir"), tmp)),
                                        encoding="utf-8")
    files = {name: _sha256(tmp / name) for name in FILES if (tmp / name).is_file()}
    files |= {f"catalogue/{p.name}": _sha256(p) for p in sorted((tmp / "catalogue").glob("*"))}
    manifest = {"format": FORMAT, "model": cfg["model"], "dataset": dataset.name, "config": cfg,
                "metrics": read_json(run_dir / "metrics.json"), "fingerprint": dataset.fingerprint(),
                "run_dir": str(run_dir), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": files}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if out.exists():
        out.rmdir()
    tmp.rename(out)                                                     # whole or not at all
    return out


def _catalogue(dataset, data_dir, out: Path) -> dict:
    """Item titles and poster files (copied into ``out/catalogue``) where the dataset has them."""
    titles, images = {}, {}
    try:
        from .features.content import ITEM, collect_content
        c = collect_content(dataset.name, data_dir, descriptions=False)
    except (UserError, OSError):
        return {"titles": titles, "images": images}
    known = set(map(str, dataset.item_tokens))
    (out / "catalogue").mkdir(exist_ok=True)
    for tok, kind, text, img in zip(c.ids, c.kinds, c.text, c.image):
        if kind != ITEM or str(tok) not in known:
            continue
        if text:
            titles[str(tok)] = text.splitlines()[0][:200]
        if img is not None and Path(img).is_file():
            name = f"{hashlib.sha1(str(tok).encode()).hexdigest()[:12]}{Path(img).suffix.lower()}"
            shutil.copy2(img, out / "catalogue" / name)
            images[str(tok)] = name
    return {"titles": titles, "images": images}


class Bundle:
    """A loaded bundle: its manifest, dataset, scoring rows (or rebuilt model), catalogue. Every file is
    checked against the manifest first; a damaged bundle is a one-line ``UserError``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "manifest.json").is_file():
            raise UserError(f"{self.path} is not a bundle (no manifest.json): make one with multikg4rec export")
        self.manifest = read_json(self.path / "manifest.json")
        if self.manifest.get("format") != FORMAT:
            raise UserError(f"{self.path}: bundle format {self.manifest.get('format')!r}, this version reads {FORMAT}")
        for name, digest in self.manifest.get("files", {}).items():
            f = self.path / name
            if not f.is_file():
                raise UserError(f"{f}: missing from the bundle; export it again")
            if _sha256(f) != digest:
                raise UserError(f"{f}: damaged (its checksum differs from manifest.json); export the bundle again")
        self.config = self.manifest["config"]
        self.dataset = run_dataset(self.path)
        if self.dataset is None or self.dataset.fingerprint() != self.manifest["fingerprint"]:
            raise UserError(f"{self.path}/dataset.npz does not match manifest.json's fingerprint; export again")
        self.catalogue = read_json(self.path / "catalogue.json") if (self.path / "catalogue.json").is_file() \
            else {"titles": {}, "images": {}}
        self.model = None
        if (self.path / "embeddings.npz").is_file():
            z = np.load(self.path / "embeddings.npz", allow_pickle=False)
            self.user_rows, self.item_rows = torch.from_numpy(z["user"]), torch.from_numpy(z["item"])
        else:                                          # a model that does not score by inner products
            self.user_rows = self.item_rows = None
            self.model = self.build_model()

    def build_model(self):
        """The run's model rebuilt from the bundle alone (weights-only state dict)."""
        from .models import build_model
        model = build_model(self.config, self.dataset, run_features(self.path))
        try:
            state = torch.load(self.path / "weights.pt", map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as e:
            raise UserError(f"{self.path}/weights.pt: does not load ({str(e).splitlines()[0][:160]}); export again") \
                from None
        return model.eval()

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for internal user ids ``users``: (len(users), n_items)."""
        if self.user_rows is not None:
            return self.user_rows.index_select(0, users) @ self.item_rows.T
        with torch.no_grad():
            return self.model.full_sort_predict(users)
