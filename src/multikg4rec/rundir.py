"""The run directory: where a run lives, how it is found again, its lock, and the files it
exports beside the trainer's checkpoints.

A run directory ``<output_dir>/<dataset>/<model>/seed<S>-<hash>/`` holds::

    config.yaml          the resolved config (the run's identity: runs are found by it)
    data.json            the data's fingerprint (``Dataset.fingerprint``) and sizes
    dataset.npz          the dataset exactly as the model saw it: ordered tokens, splits, KG (so the run
                         recommends and explains with no data folder, and a changed catalogue cannot shift ids)
    features.npz         the aligned content features of a model that uses them (rows with content only)
    split/D.{train,valid,test}.inter   the split, ORIGINAL ids (RecBole benchmark_filename)
    split/D.kg, D.link   the KG as used (KG datasets only)
    split/D.items        under ``split: cold_item``: each item's partition (warm, cold_valid, cold_test)
    log.jsonl            one line per epoch: loss, kg_loss, seconds, valid metrics
    checkpoint.pt        resume state (last epoch): model, optimiser, RNGs, early-stopping state, and an
                         epoch trained but not yet validated (an interrupted evaluation reruns alone)
    best_model.pt        weights of the best valid epoch and its valid metrics
    metrics.json         valid and test metrics of the best epoch, best_epoch, seconds per epoch, peak
                         memory, provenance (commit, versions, threads, machine); written last
    topk.tsv             per test user: original user id, then top-K original item ids in rank order
    per_user_test.npz    per-user test metrics (for paired significance tests)
    topk_hybrid.tsv, per_user_test_hybrid.npz   the same for the cold-item protocol's hybrid ranking
    .lock                held (flock) by the process that trains the run

A run is identified by its config, not by its directory's name: :func:`find_run` looks for a
directory whose stored ``config.yaml`` equals the config asked for (up to the keys that do not
change a result, ``config.NON_SEMANTIC_KEYS``), so a directory named under an older hash
is still found, and a default that changes later asks for another run instead of renaming one.
"""
from __future__ import annotations

import fcntl
import functools
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .config import config_hash
from .data.atomic import write_atomic
from .errors import RunBusy, UserError

#: what a restart (``--restart``) deletes: the results and the resume state, not the lock or the split
RESULT_FILES = ("checkpoint.pt", "best_model.pt", "metrics.json", "log.jsonl", "topk.tsv", "per_user_test.npz",
                "topk_hybrid.tsv", "per_user_test_hybrid.npz")


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


def prepare(run_dir: Path, cfg: dict, dataset, restart: bool, features: dict | None = None) -> None:
    """Make a locked run directory ready to train: a restart deletes its results; a run started on other
    data is an error (resuming it would mix two datasets); then the config, the data (``save_run_data``)
    and the split (original ids) are written."""
    if restart:
        for name in RESULT_FILES + RUN_DATA_FILES:
            (run_dir / name).unlink(missing_ok=True)
    else:
        check_same_data(run_dir, dataset, "resume")
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=True))
    save_run_data(run_dir, dataset, features)
    write_split(dataset, run_dir / "split")


# --------------------------------------------------------------------------- the run's own data

#: what ``save_run_data`` writes (a restart deletes them with the results)
RUN_DATA_FILES = ("data.json", "dataset.npz", "features.npz")


def save_run_data(run_dir: Path, dataset, features: dict | None = None) -> None:
    """The data a run needs to answer on its own: its fingerprint (``data.json``), the dataset as the model saw
    it (``dataset.npz``) and, for a model that uses content, its aligned features (``features.npz``)."""
    info = {"dataset": dataset.name, "fingerprint": dataset.fingerprint(), "users": dataset.n_users,
            "items": dataset.n_items, "entities": dataset.n_entities, "relations": dataset.n_relations}
    dataset.save(run_dir / "dataset.npz", compressed=True)
    if features:
        arrays = {}
        for m, (x, mask) in features.items():
            x, mask = np.asarray(x, dtype=np.float32), np.asarray(mask, dtype=bool)
            arrays[f"rows:{m}"], arrays[f"mask:{m}"] = x[mask], mask
        tmp = run_dir / "features.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, run_dir / "features.npz")
    atomic_write_text(run_dir / "data.json", json.dumps(info, indent=2))


def _one_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def run_dataset(run_dir: Path):
    """The dataset a run saved (``dataset.npz``); None for a run from before runs kept their data."""
    from .data import Dataset
    f = Path(run_dir) / "dataset.npz"
    if not f.is_file():
        return None
    try:
        return Dataset.load(f)
    except Exception as e:                                # zip, npz, json or key errors: a damaged file
        raise UserError(f"{f}: damaged ({_one_line(e)}); delete it to fall back to the data folder "
                        f"(--data-dir), or retrain the run with --restart") from None


def run_features(run_dir: Path) -> dict | None:
    """The aligned features a run saved (``features.npz``): ``{m: (x (n_entities, d), mask)}``; None without."""
    f = Path(run_dir) / "features.npz"
    if not f.is_file():
        return None
    try:
        z = np.load(f, allow_pickle=False)
        out = {}
        for key in z.files:
            if key.startswith("mask:"):
                m = key[5:]
                mask, rows = z[key], z[f"rows:{m}"]
                x = np.zeros((len(mask), rows.shape[1]), dtype=np.float32)
                x[mask] = rows
                out[m] = (x, mask)
        return out
    except Exception as e:
        raise UserError(f"{f}: damaged ({_one_line(e)}); retrain the run with --restart") from None


def stored_fingerprint(run_dir: Path) -> str | None:
    f = Path(run_dir) / "data.json"
    if not f.is_file():
        return None
    return read_json(f).get("fingerprint")


def check_same_data(run_dir: Path, dataset, action: str) -> None:
    """A one-line error when ``dataset`` is not the data the run in ``run_dir`` was made on."""
    want = stored_fingerprint(run_dir)
    if want is None or want == dataset.fingerprint():
        return
    old = run_dataset(run_dir)
    change = dataset.describe_change(old) if old is not None else "its fingerprint differs"
    raise UserError(f"{run_dir} was made on other data than {dataset.name!r} now holds ({change}); cannot {action} "
                    + ("it: train with --restart to start over, or --output-dir for a new run" if action == "resume"
                       else "with it: leave out --data-dir (the run keeps its own copy of its data)"))


def _check_legacy_split(run_dir: Path, dataset) -> None:
    """A run without its own data copy (made before runs kept one) is rebuilt from the data folder: its written
    train split (original ids) must be the dataset's, or the rebuilt ids would name other items."""
    from .data.atomic import read_atomic
    f = Path(run_dir) / "split" / f"{dataset.name}.train.inter"
    if not f.is_file():
        return
    df = read_atomic(f)
    have = set(zip(dataset.user_tokens[dataset.train[:, 0]].astype(str), dataset.item_tokens[dataset.train[:, 1]].astype(str)))
    if len(df) != len(have) or set(zip(df["user_id"], df["item_id"])) != have:
        raise UserError(f"{run_dir} was trained on other data than the data folder now holds (its train split "
                        f"{f} has {len(df)} pairs, the data gives {len(have)}, not the same ones): its ids would name "
                        f"other items; point --data-dir at the data it was trained on, or retrain it")


# --------------------------------------------------------------------------- reading run files

def read_json(path: Path) -> dict:
    try:
        out = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: damaged, not JSON ({_one_line(e)}); restore it or retrain the run "
                        f"with --restart") from None
    if not isinstance(out, dict):
        raise UserError(f"{path}: damaged, not a JSON object; restore it or retrain the run with --restart")
    return out


def read_config(run_dir: Path, keys: tuple[str, ...] = ("model", "dataset")) -> dict:
    """A run directory's ``config.yaml`` (a mapping holding ``keys``); one-line errors for a missing or
    damaged file."""
    f = Path(run_dir) / "config.yaml"
    if Path(run_dir).is_file():
        raise UserError(f"{run_dir} is a file, not a run directory")
    if not f.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    try:
        cfg = yaml.safe_load(f.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{f}: damaged, not YAML ({_one_line(e)}); restore it or retrain the run") from None
    if not isinstance(cfg, dict) or any(k not in cfg for k in keys):
        raise UserError(f"{f}: damaged, not a run config (no {'/'.join(keys)} keys); restore it or retrain the run")
    return cfg


def load_state(path: Path) -> dict:
    """A checkpoint (``best_model.pt`` / ``checkpoint.pt``): a dict with ``"model"``; one-line errors."""
    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except Exception as e:                                # pickle, zip, EOF: truncated or random bytes
        raise UserError(f"{path}: damaged, not a checkpoint ({_one_line(e)}); retrain the run with --restart "
                        f"(a damaged checkpoint.pt can also just be deleted to resume from scratch)") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path}: not a checkpoint of this project (no model state); retrain with --restart")
    return state


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
    if dataset.is_cold:                                   # which items are new: the cold metrics recompute from it
        names = np.array(["warm", "cold_valid", "cold_test"], dtype=object)
        part = pd.DataFrame({"item_id": dataset.item_tokens, "partition": names[dataset.item_partition]})
        write_atomic(part, out / f"{dataset.name}.items", {"item_id": "token", "partition": "token"})


def write_test_exports(run_dir: Path, dataset, test, suffix: str = "") -> None:
    """``topk<suffix>.tsv`` (each test user's top-K original item ids) and ``per_user_test<suffix>.npz`` of a
    test evaluation (:meth:`Evaluator.evaluate` with ``return_per_user`` and ``topk``); the cold-item
    protocol's hybrid evaluation writes them with ``suffix="_hybrid"``."""
    with open(run_dir / f"topk{suffix}.tsv", "w", encoding="utf-8") as f:
        for u, row in zip(dataset.user_tokens[test.topk_users], test.topk):
            f.write(u + "\t" + "\t".join(dataset.item_tokens[row[row >= 0]]) + "\n")
    np.savez_compressed(run_dir / f"per_user_test{suffix}.npz",
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

def load_run(run_dir: str | Path, dataset=None, features=None, data_dir=None):
    """Rebuild the model of a run directory (``config.yaml`` + ``best_model.pt`` or ``checkpoint.pt``).
    Returns ``(model, dataset, config)``.

    The dataset and features are the run's own copies (``dataset.npz``, ``features.npz``): no data folder is
    read, and a catalogue changed since cannot shift its ids. A run from before runs kept them is rebuilt from
    the data folder (``data_dir``, else the run's), checked against the split it wrote. A ``dataset`` passed in
    must be the one the run was made on (its fingerprint), else a one-line error."""
    from .models import build_model, get_model_class

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    # the best epoch's weights when the run has them (a damaged file is an error, never a silent fall-back to
    # the last epoch's), else the last checkpoint of an unfinished run
    ckpt = next((p for p in (run_dir / "best_model.pt", run_dir / "checkpoint.pt") if p.exists()), None)
    if ckpt is None:
        raise UserError(f"{run_dir} holds no best_model.pt or checkpoint.pt: train the run first")
    cls = get_model_class(cfg["model"])
    if dataset is not None:
        check_same_data(run_dir, dataset, "load the run")
    else:
        dataset = run_dataset(run_dir)
    if dataset is None:                                   # a run from before runs kept their data
        from .data import load_dataset
        dataset = load_dataset(cfg["dataset"], cfg, data_dir=data_dir or cfg.get("data_dir"),
                               cache_dir=cfg.get("cache_dir"))
        _check_legacy_split(run_dir, dataset)
    if features is None and cls.uses_features:
        features = run_features(run_dir)
    if features is None and cls.uses_features and cfg.get("features") != "random" and data_dir:
        cfg = {**cfg, "data_dir": str(data_dir)}          # a legacy run's features come from the data folder
    model = build_model(cfg, dataset, features)
    state = load_state(ckpt)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:                             # size mismatch: other data, or another code version
        raise UserError(f"{ckpt} does not fit the model rebuilt from {run_dir} ({_one_line(e)[:160]}): the run was "
                        f"trained on other data or code; retrain it with --restart") from None
    model.eval()
    return model, dataset, cfg
