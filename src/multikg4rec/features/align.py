"""Map a feature store's rows onto a processed Dataset's entity ids (docs/model.md §2).

Entity ``i < n_items`` is item ``i``: looked up by ``Dataset.item_tokens[i]``
(and, failing that, by its linked KG entity token); entity ``i >= n_items`` by
``Dataset.entity_tokens[i]``, or, for a KG entity that is an item absent from the
Dataset's interactions, by that item's token (the store's ``links``).

Missing content (docs/model.md §2, in this order): the other modality's embedding when
the store's spaces are aligned (CLIP) and the dimensions match
(``fill="other_modality"``); else zeros with mask False, and the model uses a
learned ID embedding for those rows.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from ..errors import UserError
from .content import ENTITY, ITEM
from .store import FeatureStore

log = logging.getLogger(__name__)

FILLS = ("other_modality", "zeros")


def _rows(store: FeatureStore, dataset) -> tuple[np.ndarray, ...]:
    """Store row of each dataset entity (-1 = none): by item token, by KG entity token, and by the item
    linked to that KG entity (an item the Dataset dropped from its interactions)."""
    keys = pd.Index(np.char.add(np.asarray(store.kinds).astype(str), np.char.add("\x1f", store.ids.astype(str))))
    n_items = dataset.n_items
    n_ent = max(dataset.n_entities, n_items)
    item_tok = np.asarray(dataset.item_tokens, dtype=str)
    ent_tok = np.asarray(dataset.entity_tokens, dtype=str)
    if len(ent_tok) < n_ent:
        ent_tok = np.concatenate([ent_tok, np.full(n_ent - len(ent_tok), "", dtype=str)])
    by_item = np.full(n_ent, -1, dtype=np.int64)
    by_item[:n_items] = keys.get_indexer(np.char.add(f"{ITEM}\x1f", item_tok))
    by_ent = keys.get_indexer(np.char.add(f"{ENTITY}\x1f", ent_tok)).astype(np.int64)
    by_ent[ent_tok == ""] = -1
    by_link = np.full(n_ent, -1, dtype=np.int64)
    if store.links:
        linked = np.array([store.links.get(t, "") for t in ent_tok], dtype=str)
        has = linked != ""
        by_link[has] = keys.get_indexer(np.char.add(f"{ITEM}\x1f", linked[has]))
    return by_item, by_ent, by_link


def real_content_masks(store: FeatureStore, dataset) -> dict[str, torch.Tensor]:
    """Per modality, ``(n_entities,)`` bool: the row holds real encoded content of that modality."""
    lookups = _rows(store, dataset)
    out = {}
    for m in store.modalities:
        mask = np.asarray(store.masks[m])
        has = np.zeros(len(lookups[0]), dtype=bool)
        for rows in lookups:
            has |= (rows >= 0) & mask[np.maximum(rows, 0)]
        out[m] = torch.from_numpy(has)
    return out


def align_features(store: FeatureStore, dataset, fill: str = "other_modality",
                   modalities: list[str] | tuple[str, ...] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Features of every dataset entity, per modality.

    Returns ``{modality: (x, mask)}`` with ``x`` a ``(n_entities, d)`` float32 tensor
    and ``mask`` a ``(n_entities,)`` bool tensor, True where ``x`` holds a usable
    feature: real content, or (``fill="other_modality"``, aligned store, equal dims)
    the other modality's embedding. Rows with mask False are zeros.
    ``real_content_masks`` gives the real-content masks alone.
    """
    if fill not in FILLS:
        raise UserError(f"fill {fill!r}: choose one of {FILLS}")
    mods = list(modalities) if modalities is not None else list(store.modalities)
    unknown = [m for m in mods if m not in store.modalities]
    if unknown:
        raise UserError(f"modalities {unknown} not in the feature store {store.path} (it has {list(store.modalities)})")
    lookups = _rows(store, dataset)
    n_ent = len(lookups[0])
    real: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for m in store.modalities:
        feats, mask = store.features[m], np.asarray(store.masks[m])
        x = np.zeros((n_ent, feats.shape[1]), dtype=np.float32)
        got = np.zeros(n_ent, dtype=bool)
        for rows in lookups:  # item row first, then the KG entity's row, then its linked item's row
            take = ~got & (rows >= 0)
            take[take] = mask[rows[take]]
            x[take] = feats[rows[take]]
            got |= take
        real[m] = (x, got)
    n_items = dataset.n_items
    if not any(real[m][1][:n_items].any() for m in store.modalities) and n_items:
        log.warning("no item of dataset %s has features in %s: do the store's ids (%s...) match the dataset's "
                    "item tokens (%s...)?", dataset.name, store.path, list(store.ids[:3]), list(dataset.item_tokens[:3]))
    out = {}
    for m in mods:
        x, got = real[m]
        x, mask = x.copy(), got.copy()
        if fill == "other_modality" and store.aligned:
            for o in store.modalities:
                if o == m or real[o][0].shape[1] != x.shape[1]:
                    continue
                take = ~mask & real[o][1]
                x[take] = real[o][0][take]
                mask |= take
        out[m] = (torch.from_numpy(x), torch.from_numpy(mask))
        log.info("%s %s: %d of %d entities have a feature (%d real)", dataset.name, m, int(mask.sum()), n_ent,
                 int(got.sum()))
    return out


def user_mean_features(dataset, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """docs/model.md §2 user content: mean of the features of each user's TRAIN items that have one.

    ``x``, ``mask``: one modality from :func:`align_features`. Returns ``(n_users, d)``
    features and a ``(n_users,)`` mask (False for a user with no featured train item).
    """
    import scipy.sparse as sp
    A = dataset.train_csr.astype(np.float32)
    m = mask[: dataset.n_items].numpy().astype(np.float32)
    A = A @ sp.diags(m)
    cnt = np.asarray(A.sum(axis=1)).ravel()
    feats = A @ x[: dataset.n_items].numpy()
    feats = feats / np.maximum(cnt, 1)[:, None]
    return torch.from_numpy(np.asarray(feats, dtype=np.float32)), torch.from_numpy(cnt > 0)


def item_content(features: dict, modalities: list[str], n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One content row per item for the content baselines: each modality's row L2-normalised and scaled by
    1/sqrt(#modalities), concatenated (a unit vector for an item with every modality, so inner products are
    cosines). Returns ``(n_items, sum of d_m)`` and ``(n_items,)`` bool: the item has some content."""
    rows, has = [], torch.zeros(n_items, dtype=torch.bool)
    for m in modalities:
        x, mask = features[m]
        x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32)[:n_items]
        mask = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).bool()[:n_items]
        x = torch.nn.functional.normalize(x, dim=1) * mask[:, None] / len(modalities) ** 0.5
        rows.append(x)
        has |= mask
    return torch.cat(rows, 1), has


def load_model_features(dataset, cfg: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The features a model's config asks for: ``cfg["modalities"]`` from the store of
    ``cfg["encoder"]`` (built on first use, cached after), aligned to ``dataset``'s entities."""
    mods = list(cfg.get("modalities") or [])
    if not mods:
        return {}
    from .store import build_features
    opts = {"clip_path": cfg["clip_path"]} if cfg.get("clip_path") else {}
    store = build_features(dataset.name, cfg["encoder"], data_dir=cfg.get("data_dir"),
                           cache_dir=cfg.get("cache_dir"), progress=not cfg.get("quiet"), **opts)
    missing = [m for m in mods if m not in store.modalities]
    if missing:
        raise UserError(f"encoder {cfg['encoder']!r} gives {dataset.name} the modalities {list(store.modalities)}, "
                        f"not {missing}; set --modalities to a subset, e.g. --modalities [{','.join(store.modalities)}]")
    return align_features(store, dataset, fill=cfg.get("feature_fill", "other_modality"), modalities=mods)
