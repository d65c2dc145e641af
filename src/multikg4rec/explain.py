"""Case study of Multi-KG4Rec (the paper's Fig. 4): how much one user attends to each modality.

    report = explain(model, dataset, user)            # a trained MultiKG4Rec, an internal user id
    report = explain_run("runs/ml-1m/multikg4rec/...", "3238")   # a run directory, an ORIGINAL user id

The numbers come from :func:`modality_report` (see its docstring): the
Bi-Transformer's attention mass on each modality at the rows of the user's items,
the knowledge-aware attention of the user's interact edges in each modality's
graph, and each modality's share of the user's scores. :func:`plot_report` draws
them as bar plots (per modality, and per item and modality).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .rundir import load_run

__all__ = ["explain", "modality_report", "plot_report", "explain_run"]

#: relation id of user -> item in ``Dataset.ckg()``
INTERACT = 0


def explain(model, dataset, user: int, k: int = 10, out: str | Path | None = None) -> dict:
    """Attention report of internal user ``user`` over (at most) ``k`` of their train items.

    With ``out`` (a directory), writes ``user<TOKEN>.json`` and ``user<TOKEN>.png`` there
    and adds their paths to the report under ``files``.
    """
    if getattr(model, "name", "") != "multikg4rec":
        raise UserError(f"model {getattr(model, 'name', type(model).__name__)!r} has no attention report "
                        f"(only multikg4rec explains per-modality attention)")
    if not 0 <= int(user) < dataset.n_users:
        raise UserError(f"user {user} out of range: the dataset has {dataset.n_users} users")
    rep = modality_report(model, int(user), k=k)
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


@torch.no_grad()
def modality_report(model, user: int, k: int = 10) -> dict:
    """How much user ``user`` (internal id) of a trained Multi-KG4Rec ``model`` attends to each
    modality (the case study, Fig. 4).

    Over the user's train items (the ``k`` with the highest score when there are more):

    * ``fusion[m]``: attention mass the items' own rows put on modality m's keys in
      the Bi-Transformer (mean over items, blocks, heads and query modalities);
    * ``propagation[t]``: softmax over modalities of the mean knowledge-aware
      attention logit pi(u, interact, i) of table t (docs/model.md §4). Reported, but NOT
      used in ``modality``: each table's logits live in their own TransR space
      (measured on ml-100k: this softmax gives the image table 0.98-0.998 for every
      user, a scale effect, not a preference);
    * ``score[t]``: share of |sum over items of the score part e_u^{t*}.e_i^{t*}|:
      how much of the user's scores for these items each modality's embeddings carry;
    * ``modality[t]``: mean of ``fusion`` (when the fusion runs) and ``score``;
    * per item: ``item_attention[t]`` (softmax of pi over the user's train items,
      table t), ``item_fusion[m]``, ``item_scores[t]``.

    Each of ``fusion``, ``propagation``, ``score``, ``modality`` sums to 1.
    """
    was = model.training
    model.eval()
    try:
        train = model.dataset.train_csr
        dev = model.id_emb[model.tables[0]].weight.device
        all_items = torch.from_numpy(train.indices[train.indptr[user]:train.indptr[user + 1]].astype(np.int64))
        all_items = all_items.to(dev)                                     # sorted (canonical CSR)
        items = all_items
        pre = model.pre_tables()
        l0 = model.exact_layer0()
        outs = {t: model.propagation[t](l0[t], model.adjacency(t)) for t in model.tables}
        u_node = model.n_entities + int(user)
        parts = {t: outs[t][items] @ outs[t][u_node] for t in model.tables}  # (n_items_u,)
        if len(items) > k:
            top = torch.topk(sum(parts.values()), k).indices
            items, parts = items[top], {t: v[top] for t, v in parts.items()}
        rep = {"user": int(user), "items": items.tolist(), "tables": list(model.tables)}
        if len(items) == 0:
            share = {t: 1.0 / len(model.tables) for t in model.tables}
            return rep | {"modality": share, "propagation": share, "score": share}
        # propagation: pi(u, interact, i) per table
        logits, item_att = {}, {}
        r = torch.full((len(all_items),), INTERACT, dtype=torch.long, device=dev)
        for t in model.tables:
            tr = model.transr[t]
            eh = tr.project(l0[t][u_node].expand(len(all_items), -1), r)                 # W_r e_u
            et = tr.project(l0[t][all_items], r)                                          # W_r e_i
            pi = (et * torch.tanh(eh + tr.relation_emb[INTERACT])).sum(-1)    # pi(h, r, t), docs/model.md §4
            sel = torch.searchsorted(all_items, items)
            logits[t] = pi[sel].mean()
            item_att[t] = torch.softmax(pi, 0)[sel].tolist()
        prop = torch.softmax(torch.stack([logits[t] for t in model.tables]), 0)
        rep["propagation"] = {t: float(p) for t, p in zip(model.tables, prop)}
        tot = torch.stack([parts[t].sum() for t in model.tables])
        sc = tot.abs() / tot.abs().sum().clamp_min(1e-12)
        rep["score"] = {t: float(s) for t, s in zip(model.tables, sc)}
        rep["item_attention"] = item_att
        rep["item_scores"] = {t: parts[t].tolist() for t in model.tables}
        if model.use_fusion:
            x = {m: pre[m][model.seq[items]] for m in model.modalities}
            per_item = model.fusion.modality_attention(x, model.seq_mask[items])  # m -> (k,)
            rep["item_fusion"] = {m: v.tolist() for m, v in per_item.items()}
            rep["fusion"] = {m: float(v.mean()) for m, v in per_item.items()}
            rep["modality"] = {t: (rep["fusion"].get(t, 0.0) + rep["score"][t]) / 2 for t in model.tables}
        else:
            rep["modality"] = dict(rep["score"])
        return rep
    finally:
        model.train(was)


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


def explain_run(run_dir: str | Path, user: str, out: str | Path | None = None, k: int = 10,
                dataset=None, features=None, data_dir=None) -> dict:
    """:func:`explain` for ORIGINAL user id ``user`` of a run; writes to ``out``
    (default ``<run_dir>/explain``). The run answers from its own copy of its data."""
    model, dataset, _ = load_run(run_dir, dataset, features, data_dir=data_dir)
    tokens = np.asarray(dataset.user_tokens).astype(str)
    hit = np.flatnonzero(tokens == str(user))
    if len(hit) == 0:
        raise UserError(f"user {user!r} is not in dataset {dataset.name!r} (ids look like {list(tokens[:3])})")
    return explain(model, dataset, int(hit[0]), k=k, out=out if out is not None else Path(run_dir) / "explain")
