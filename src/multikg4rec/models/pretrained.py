"""A model that starts from a trained BPR-MF run (ConvNCF's initialisation, DropoutNet's preference inputs):
the matching BPR-MF config, the prerequisite it makes, and its embeddings.

``pretrain_path: auto`` names the default BPR-MF run of the same dataset, preprocessing (split included), seed,
embedding size and output root; ``training.run`` trains it first when it is not here
(``Recommender.prerequisites``). Any other value is a BPR-MF run directory or its ``best_model.pt``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError


def bprmf_config(config: dict) -> dict:
    """The config of the default BPR-MF run that matches ``config``'s dataset, data preprocessing, seed,
    embedding size and output root."""
    from ..config import load_config
    from ..data.dataset import DATA_KEYS
    keep = ("seed", "embedding_size", "output_dir", "data_dir", "cache_dir", "threads", *DATA_KEYS)
    return load_config("bprmf", config["dataset"], None, {k: config[k] for k in keep if k in config})


def bprmf_prerequisites(config: dict) -> list[dict]:
    """The BPR-MF run a ``pretrain_path: auto`` model needs, when its checkpoint is not here (an archived copy in
    ``results/runs/`` has none); [] otherwise."""
    from ..rundir import run_dir_for
    if str(config.get("pretrain_path")) != "auto":
        return []
    cfg = bprmf_config(config)
    return [] if (run_dir_for(cfg) / "best_model.pt").is_file() else [cfg]


def bprmf_run_dir(config: dict) -> Path:
    """The run directory of :func:`bprmf_config`'s run; an error if it has not finished here."""
    from ..rundir import run_dir_for
    run_dir = run_dir_for(bprmf_config(config))
    if not (run_dir / "best_model.pt").is_file():
        raise UserError(f"{config.get('model', 'this model')}: pretrain_path auto: no finished BPR-MF run at {run_dir}; train it "
                        f"first: multikg4rec train --model bprmf --dataset {config['dataset']} --seed {config['seed']} "
                        f"(or set pretrain_path to a BPR-MF run directory)")
    return run_dir


def bprmf_embeddings(config: dict, shape_users: tuple, shape_items: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """The user and item embeddings ``(n_users, d)``, ``(n_items, d)`` of the BPR-MF run ``config['pretrain_path']``
    names (``auto``: :func:`bprmf_run_dir`); a one-line error when they do not fit the shapes asked for."""
    from ..rundir import load_state
    path = config.get("pretrain_path")
    path = bprmf_run_dir(config) if str(path) == "auto" else Path(path)
    if path.is_dir():
        path = path / "best_model.pt"
    if not path.is_file():
        raise UserError(f"{config.get('model', 'this model')}: pretrain_path {path} is not a BPR-MF best_model.pt")
    state = load_state(path)["model"]
    out = []
    for name, shape in (("user_emb", shape_users), ("item_emb", shape_items)):
        w = state.get(f"{name}.weight")
        if w is None or tuple(w.shape) != tuple(shape):
            got = None if w is None else tuple(w.shape)
            raise UserError(f"{config.get('model', 'this model')}: {path} has {name}.weight of shape {got}, this model needs {tuple(shape)} "
                            f"(same dataset, split and embedding_size as the BPR-MF run)")
        out.append(w.detach().clone().float())
    return out[0], out[1]
