"""Top-K recommendations from a trained run, by original user and item ids.

    multikg4rec recommend --run runs/ml-1m/kgat/seed0-... --users 1 42 --k 10
    multikg4rec recommend --run DIR --all-users --k 50 --out recs.tsv

Python API::

    from multikg4rec.recommend import recommend
    recs = recommend("runs/ml-100k/lightgcn/seed0-...", users=["1", "42"], k=10)   # a pandas DataFrame

The run's best model (``best_model.pt``; else the last checkpoint) scores every item for each user with the
model's own ``full_sort_predict``; the ranking is the evaluator's (:meth:`Evaluator.ranked`: ties
to the lower item id, excluded items never returned). ``exclude`` says which of the user's known interactions
are left out of the list:

* ``all`` (default): everything the user interacted with in train, valid and test, i.e. what a catalogue
  would not recommend again;
* ``train+valid``: the test protocol; the top-K of the run's test users then equals the run's ``topk.tsv``;
* ``train``: the validation protocol; ``none``: nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .errors import UserError
from .evaluation import Evaluator

EXCLUDE = {"all": ("train", "valid", "test"), "train+valid": ("train", "valid"), "train": ("train",),
           "none": ()}


def _user_rows(dataset, users: Iterable[str] | None) -> np.ndarray:
    """Internal ids of ORIGINAL user ids (every user when None); one-line error naming unknown ids."""
    if users is None:
        return np.arange(dataset.n_users)
    tokens = np.asarray(dataset.user_tokens).astype(str)
    index = {t: i for i, t in enumerate(tokens)}
    users = [str(u) for u in users]
    missing = [u for u in users if u not in index]
    if missing:
        raise UserError(f"{len(missing)} user id(s) not in dataset {dataset.name!r}: {missing[:5]} "
                        f"(its ids look like {tokens[:3].tolist()}; users with no training interaction have no "
                        f"embedding)")
    return np.asarray([index[u] for u in users], dtype=np.int64)


def _seen(dataset, exclude: str) -> list[sp.csr_matrix]:
    if exclude not in EXCLUDE:
        raise UserError(f"exclude: {exclude!r} is not one of {', '.join(EXCLUDE)}")
    return [dataset.csr(s) for s in EXCLUDE[exclude]]


def item_labels(dataset, data_dir=None, width: int = 60) -> np.ndarray | None:
    """A short text label per item (its title line, cut to ``width``) where the dataset has item text."""
    from .features.content import ITEM, collect_content
    try:
        c = collect_content(dataset.name, data_dir, descriptions=False)
    except (UserError, OSError):
        return None
    text = {tok: t for tok, k, t in zip(c.ids, c.kinds, c.text) if k == ITEM and t}
    if not text:
        return None
    out = [text.get(str(tok), "") for tok in dataset.item_tokens]
    return np.asarray([t if len(t) <= width else t[: width - 1] + "…" for t in out], dtype=object)


#: users scored together by ``multikg4rec recommend``: a float32 matrix product can round a row's scores
#: differently in another batch shape, so a ranking that must equal it scores the same blocks of users
BATCH = 1024


@torch.no_grad()
def rank_rows(score_fn, n_items: int, seen: list[sp.csr_matrix], users: np.ndarray, k: int,
              batch_size: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item ids and scores of ``users`` under ``score_fn`` (user ids -> (B, n_items) scores), the
    ``seen`` items left out, ranked ``batch_size`` users at a time: ``(items, scores)``, both (len(users), k);
    a slot past the user's candidates (fewer than k unseen items) holds -1 / nan."""
    k = min(int(k), n_items)
    ev = Evaluator(n_items, batch_size=batch_size)
    exc = ev.exclusion(seen, seen[0].shape[0]) if seen else None
    items = np.full((len(users), k), -1, dtype=np.int64)
    scores = np.full((len(users), k), np.nan, dtype=np.float64)
    lo = 0
    for batch, top, valid, top_scores in ev.ranked(score_fn, users, k, exc):
        valid = valid.cpu().numpy()
        items[lo:lo + len(batch)] = np.where(valid, top.cpu().numpy(), -1)
        scores[lo:lo + len(batch)] = np.where(valid, top_scores.double().cpu().numpy(), np.nan)
        lo += len(batch)
    return items, scores


@torch.no_grad()
def rank_items(model, dataset, users: np.ndarray, k: int, exclude: str = "all", batch_size: int = BATCH
               ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k internal item ids and scores of a trained model for internal user ids ``users``
    (:func:`rank_rows`, the dataset's ``exclude`` interactions left out)."""
    seen = _seen(dataset, exclude)
    model.eval()
    model.prepare_eval()
    return rank_rows(model.full_sort_predict, dataset.n_items, seen, users, k, batch_size)


def recommend(run_dir: str | Path, users: Iterable[str] | None = None, k: int = 10, exclude: str = "all",
              labels: bool = True, dataset=None, features=None, data_dir=None) -> pd.DataFrame:
    """Top-k recommendations of a trained run for ORIGINAL user ids ``users`` (every user when None).

    Returns a DataFrame with one row per (user, rank): ``user``, ``rank`` (1-based), ``item`` (original id),
    ``score`` and, where the dataset has item text and ``labels``, ``label`` (the item's title line). The run
    answers from its own copy of its data (:func:`rundir.load_run`); ``data_dir`` is read only for item titles
    (and for runs made before runs kept their data).
    """
    from .rundir import load_run
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
        raise UserError(f"k must be a whole number of at least 1, got {k!r}")
    model, dataset, cfg = load_run(run_dir, dataset, features, data_dir=data_dir)
    uid = _user_rows(dataset, users)
    items, scores = rank_items(model, dataset, uid, k, exclude)
    keep = items >= 0
    r, c = np.nonzero(keep)
    out = pd.DataFrame({"user": np.asarray(dataset.user_tokens)[uid][r].astype(str), "rank": c + 1,
                        "item": np.asarray(dataset.item_tokens)[items[keep]].astype(str),
                        "score": scores[keep]})
    if labels:
        lab = item_labels(dataset, data_dir or cfg.get("data_dir"))
        if lab is not None:
            out["label"] = lab[items[keep]]
    return out
