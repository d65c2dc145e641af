"""Case study of Multi-KG4Rec (the paper's Fig. 4): how much one user attends to each modality.

    report = explain(model, dataset, user)            # a trained MultiKG4Rec, an internal user id
    report = explain_run("runs/ml-1m/multikg4rec/...", "3238")   # a run directory, an ORIGINAL user id

The numbers come from ``MultiKG4Rec.attention_report`` (see its docstring): the
Bi-Transformer's attention mass on each modality at the rows of the user's items,
the knowledge-aware attention of the user's interact edges in each modality's
graph, and each modality's share of the user's scores. :func:`plot_report` draws
them as bar plots (per modality, and per item and modality).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import UserError

__all__ = ["explain", "plot_report", "load_run", "explain_run"]


def explain(model, dataset, user: int, k: int = 10, out: str | Path | None = None) -> dict:
    """Attention report of internal user ``user`` over (at most) ``k`` of their train items.

    With ``out`` (a directory), writes ``user<TOKEN>.json`` and ``user<TOKEN>.png`` there
    and adds their paths to the report under ``files``.
    """
    if not hasattr(model, "attention_report"):
        raise UserError(f"model {getattr(model, 'name', type(model).__name__)!r} has no attention report "
                        f"(only multikg4rec explains per-modality attention)")
    if not 0 <= int(user) < dataset.n_users:
        raise UserError(f"user {user} out of range: the dataset has {dataset.n_users} users")
    rep = model.attention_report(int(user), k=k)
    rep["user_token"] = str(dataset.user_tokens[int(user)])
    rep["item_tokens"] = [str(dataset.item_tokens[i]) for i in rep["items"]]
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"user{rep['user_token']}"
        png = plot_report(rep, out / f"{stem}.png")
        rep["files"] = {"json": str(out / f"{stem}.json"), "plot": str(png)}
        (out / f"{stem}.json").write_text(json.dumps(rep, indent=2), encoding="utf-8")
    return rep


def plot_report(rep: dict, path: str | Path) -> Path:
    """Bar plots of one report: left, the share of each modality (fusion attention,
    propagation attention, score, combined); right, the propagation attention of
    each of the user's items per modality (Fig. 4)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = rep["tables"]
    kinds = [k for k in ("fusion", "propagation", "score", "modality") if k in rep]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 2]})
    ax = axes[0]
    w = 0.8 / max(len(tables), 1)
    x = np.arange(len(kinds))
    for j, t in enumerate(tables):
        vals = [rep[k].get(t, 0.0) for k in kinds]
        ax.bar(x + (j - (len(tables) - 1) / 2) * w, vals, w, label=t)
    ax.set_xticks(x, ["combined" if k == "modality" else k for k in kinds])
    ax.set_ylabel("share")
    ax.set_ylim(0, 1)
    ax.set_title(f"user {rep.get('user_token', rep['user'])}: modality attention")
    ax.legend()
    ax = axes[1]
    items = rep.get("item_tokens") or [str(i) for i in rep["items"]]
    att = rep.get("item_attention", {})
    xi = np.arange(len(items))
    for j, t in enumerate(tables):
        if t in att:
            ax.bar(xi + (j - (len(tables) - 1) / 2) * w, att[t], w, label=t)
    ax.set_xticks(xi, items, rotation=45, ha="right")
    ax.set_xlabel("item")
    ax.set_ylabel("attention (user -> item)")
    ax.set_title("propagation attention per item and modality")
    if att:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def load_run(run_dir: str | Path, dataset=None, features=None):
    """Rebuild the model of a run directory (``config.yaml`` + ``best_model.pt`` or
    ``checkpoint.pt``, state dict under ``"model"``). Returns ``(model, dataset, config)``.
    ``dataset``/``features`` may be passed in; otherwise they are loaded as the trainer does."""
    import torch
    import yaml

    from .data import load_dataset
    from .training import build_model

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    ckpt = next((p for p in (run_dir / "best_model.pt", run_dir / "checkpoint.pt") if p.is_file()), None)
    if ckpt is None:
        raise UserError(f"{run_dir} holds no best_model.pt or checkpoint.pt: train the run first")
    if dataset is None:
        dataset = load_dataset(cfg["dataset"], cfg, data_dir=cfg.get("data_dir"), cache_dir=cfg.get("cache_dir"))
    model = build_model(cfg, dataset, features)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    model.eval()
    return model, dataset, cfg


def explain_run(run_dir: str | Path, user: str, out: str | Path | None = None, k: int = 10,
                dataset=None, features=None) -> dict:
    """:func:`explain` for ORIGINAL user id ``user`` of a run; writes to ``out``
    (default ``<run_dir>/explain``)."""
    model, dataset, _ = load_run(run_dir, dataset, features)
    tokens = np.asarray(dataset.user_tokens).astype(str)
    hit = np.flatnonzero(tokens == str(user))
    if len(hit) == 0:
        raise UserError(f"user {user!r} is not in dataset {dataset.name!r} (ids look like {list(tokens[:3])})")
    return explain(model, dataset, int(hit[0]), k=k, out=out if out is not None else Path(run_dir) / "explain")
