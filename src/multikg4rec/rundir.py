"""The run directory: where a run lives, how it is found again, its lock, and the files it
exports beside the trainer's checkpoints.

A run directory ``<output_dir>/<dataset>/<model>/seed<S>-<hash>/`` holds::

    config.yaml          the resolved config (the run's identity: runs are found by it)
    split/D.{train,valid,test}.inter   the split, ORIGINAL ids (RecBole benchmark_filename)
    split/D.kg, D.link   the KG as used (KG datasets only)
    log.jsonl            one line per epoch: loss, kg_loss, seconds, valid metrics
    checkpoint.pt        resume state (last epoch): model, optimiser, RNGs, early-stopping state, and an
                         epoch trained but not yet validated (an interrupted evaluation reruns alone)
    best_model.pt        weights of the best valid epoch and its valid metrics
    metrics.json         valid and test metrics of the best epoch, best_epoch, seconds per epoch, peak
                         memory, provenance (commit, versions, threads, machine); written last
    topk.tsv             per test user: original user id, then top-K original item ids in rank order
    per_user_test.npz    per-user test metrics (for paired significance tests)
    .lock                held (flock) by the process that trains the run

A run is identified by its config, not by its directory's name: :func:`find_run` looks for a
directory whose stored ``config.yaml`` equals the config asked for (up to the keys that do not
change a result, ``config.NON_SEMANTIC_KEYS``), so a directory named under an older hash
is still found, and a default that changes later asks for another run instead of renaming one.
"""
from __future__ import annotations

import fcntl
import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .config import config_hash, dump_config
from .data.atomic import write_atomic
from .errors import RunBusy, UserError

#: what a restart (``--restart``) deletes: the results and the resume state, not the lock or the split
RESULT_FILES = ("checkpoint.pt", "best_model.pt", "metrics.json", "log.jsonl", "topk.tsv", "per_user_test.npz")


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    model: object | None = None
    dataset: object | None = None


# --------------------------------------------------------------------------- finding a run

def default_run_dir(cfg: dict) -> Path:
    """Where a new run of ``cfg`` is made: ``<output_dir>/<dataset>/<model>/seed<S>-<hash>``."""
    root = Path(cfg.get("output_dir") or "runs")
    return root / cfg["dataset"] / cfg["model"] / f"seed{cfg['seed']}-{config_hash(cfg)}"


@functools.lru_cache(maxsize=8192)
def _stored_hash(config_file: str, mtime_ns: int) -> str | None:
    try:
        cfg = yaml.safe_load(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return config_hash(cfg) if isinstance(cfg, dict) else None


def stored_config_hash(run_dir: Path) -> str | None:
    """:func:`config.config_hash` of the config a run directory stores; None without a readable one."""
    f = Path(run_dir) / "config.yaml"
    try:
        return _stored_hash(str(f), f.stat().st_mtime_ns)
    except OSError:
        return None


def find_run(cfg: dict, root: Path | str | None = None) -> Path | None:
    """The directory under ``root`` (default ``cfg['output_dir']``) whose stored config is ``cfg``:
    the default name first, then any ``seed<S>-*`` sibling; None when there is none."""
    want = config_hash(cfg)
    base = Path(root if root is not None else (cfg.get("output_dir") or "runs")) / cfg["dataset"] / cfg["model"]
    first = base / f"seed{cfg['seed']}-{want}"
    if stored_config_hash(first) == want:
        return first
    for d in sorted(base.glob(f"seed{cfg['seed']}-*")):
        if d != first and stored_config_hash(d) == want:
            return d
    return None


def run_dir_for(cfg: dict) -> Path:
    """The run directory of ``cfg``: the existing one (:func:`find_run`), else a new default one."""
    return find_run(cfg) or default_run_dir(cfg)


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / "metrics.json").is_file()


# --------------------------------------------------------------------------- the lock

def lock(run_dir: Path):
    """Take the run's lock without waiting: an open file holding an exclusive ``flock``, released
    when this process closes it or ends. ``RunBusy`` when another live process holds it."""
    f = open(Path(run_dir) / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunBusy(f"{run_dir} is in use by another running process", run_dir) from None
    return f


def is_busy(run_dir: Path) -> bool:
    """Whether another live process holds ``run_dir``'s lock. A probe only: :func:`lock` takes it
    for real and raises ``RunBusy`` if it lost a race."""
    lock_file = Path(run_dir) / ".lock"
    if not lock_file.is_file():
        return False
    with open(lock_file, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def wait_until_free(run_dir: Path) -> None:
    """Block until no other process holds ``run_dir``'s lock."""
    with open(Path(run_dir) / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        fcntl.flock(f, fcntl.LOCK_UN)


def prepare(run_dir: Path, cfg: dict, dataset, restart: bool) -> None:
    """Make a locked run directory ready to train: a restart deletes its results, then the config
    and the split (original ids) are written."""
    if restart:
        for name in RESULT_FILES:
            (run_dir / name).unlink(missing_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    write_split(dataset, run_dir / "split")


# --------------------------------------------------------------------------- files

def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a reader never sees a half-written file."""
    import torch
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_split(dataset, out: Path) -> None:
    """The split as RecBole atomic files with ORIGINAL ids (usable as RecBole's benchmark_filename)."""
    out.mkdir(parents=True, exist_ok=True)
    types = {"user_id": "token", "item_id": "token"}
    for name in ("train", "valid", "test"):
        pairs = dataset.split(name)
        df = pd.DataFrame({"user_id": dataset.user_tokens[pairs[:, 0]], "item_id": dataset.item_tokens[pairs[:, 1]]})
        write_atomic(df, out / f"{dataset.name}.{name}.inter", types)
    if dataset.has_kg:
        ent = dataset.entity_tokens.copy()
        unlinked = np.flatnonzero(~dataset.item_linked)
        ent[unlinked] = np.array([f"item:{t}" for t in dataset.item_tokens[unlinked]], dtype=object)
        kg = pd.DataFrame({"head_id": ent[dataset.kg[:, 0]], "relation_id": dataset.relation_tokens[dataset.kg[:, 1]],
                           "tail_id": ent[dataset.kg[:, 2]]})
        write_atomic(kg, out / f"{dataset.name}.kg", {"head_id": "token", "relation_id": "token", "tail_id": "token"})
        linked = np.flatnonzero(dataset.item_linked)
        link = pd.DataFrame({"item_id": dataset.item_tokens[linked], "entity_id": ent[linked]})
        write_atomic(link, out / f"{dataset.name}.link", {"item_id": "token", "entity_id": "token"})


def write_test_exports(run_dir: Path, dataset, test) -> None:
    """``topk.tsv`` (each test user's top-K original item ids) and ``per_user_test.npz`` of a test
    evaluation (:meth:`Evaluator.evaluate` with ``return_per_user`` and ``topk``)."""
    with open(run_dir / "topk.tsv", "w", encoding="utf-8") as f:
        for u, row in zip(dataset.user_tokens[test.topk_users], test.topk):
            f.write(u + "\t" + "\t".join(dataset.item_tokens[row[row >= 0]]) + "\n")
    np.savez_compressed(run_dir / "per_user_test.npz",
                        **{k.replace("@", "_at_"): v for k, v in test.per_user.items()})


def git_commit(where: Path = Path(__file__).parent) -> str | None:
    """The short commit of the checkout the code runs from, with ``+dirty`` when tracked files under ``where``
    (the package) differ from it: a run started from uncommitted code says so. None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=where, timeout=5).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        if not head:
            return None
        return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ".") else "")
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------- loading a run

def load_run(run_dir: str | Path, dataset=None, features=None):
    """Rebuild the model of a run directory (``config.yaml`` + ``best_model.pt`` or
    ``checkpoint.pt``, state dict under ``"model"``). Returns ``(model, dataset, config)``.
    ``dataset``/``features`` may be passed in; otherwise they are loaded as the trainer does."""
    import torch

    from .data import load_dataset
    from .models import build_model

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
