#!/usr/bin/env python
"""Train and evaluate ONE RecBole 1.2.1 model on the EXACT split of one multikg4rec run directory.

Runs INSIDE the RecBole venv (``bench/.venv-recbole``, made by ``bench/recbole/setup.sh``); it never imports
multikg4rec. Usage::

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 bench/.venv-recbole/bin/python bench/recbole/run_recbole.py \\
        --run-dir runs/ml-100k/bprmf/seed2024-d7a0918e --model BPR --threads 1

What it does:

* links ``<run-dir>/split/D.{train,valid,test}.inter`` (and ``D.kg``, ``D.link`` for KG models) into a
  fresh RecBole ``data_path`` and sets ``benchmark_filename: [train, valid, test]``: RecBole's
  ``Dataset.build()`` then returns the three files as they are (``eval_args.split/order/group_by`` are
  never read), so both frameworks see the same train / valid / test pairs and the same candidate items;
* full-sort evaluation (``eval_args.mode: full``): valid excludes train items, test excludes train + valid
  items (RecBole's phase samplers), as ours;
* maps the hyper-parameters of OUR resolved ``config.yaml`` onto RecBole's (``COMMON`` and ``PER_MODEL``
  below; any of our keys with the same name as a key of RecBole's model YAML is passed through too);
  the JSON records every value passed and every RecBole model key left at RecBole's default;
* early stopping on valid NDCG@20 with RecBole's ``stopping_step = patience - 1`` (RecBole stops when
  ``cur_step > stopping_step``, we stop when ``bad_evals >= patience``: same stopping epoch);
* times each training epoch by wrapping the trainer's ``_train_epoch`` (the CF pass, and for KGAT the KG
  pass and the attention update: what our ``train_seconds`` covers), records the best valid epoch
  (1-based, as ours), test Recall/MRR/NDCG@20 of the best epoch and peak RSS (``ru_maxrss``);
* prints one JSON line on stdout and writes it to ``<out>/recbole_<model>_<dataset>_seed<S>.json``.

Runtime fixes for torch 2.13 (see bench/recbole/README.md): ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (RecBole
reloads its own pickled checkpoints with ``torch.load``), and DGL 2.1.0's graphbolt loader is told to skip its
missing ``libgraphbolt_pytorch_2.13.0.so`` (an import hook, ``skip_missing_graphbolt``; RecBole never uses
graphbolt).
"""
from __future__ import annotations

import os

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
os.environ.setdefault("DGLBACKEND", "pytorch")  # else DGL writes ~/.dgl/config.json on first import

import argparse  # noqa: E402
import importlib.abc  # noqa: E402
import importlib.machinery  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402


# --------------------------------------------------------------------------- DGL graphbolt
class _GraphboltLoader(importlib.abc.Loader):
    """Executes dgl/graphbolt/__init__.py with its final ``load_graphbolt()`` call wrapped in try/except."""

    def __init__(self, origin: str):
        self.origin = origin

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        src = Path(self.origin).read_text(encoding="utf-8")
        guarded = ("try:\n    load_graphbolt()\nexcept (FileNotFoundError, ImportError) as _e:\n"
                   "    import warnings as _w\n"
                   "    _w.warn(f'graphbolt skipped (run_recbole.py): {_e}', RuntimeWarning)\n")
        src, n = re.subn(r"^load_graphbolt\(\)[ \t]*$", guarded, src, flags=re.M)
        if n != 1:
            warnings.warn("dgl/graphbolt/__init__.py has no top-level load_graphbolt() call: loaded as is")
        exec(compile(src, self.origin, "exec"), module.__dict__)  # noqa: S102


class _GraphboltFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "dgl.graphbolt":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not spec.origin:
            return None
        spec.loader = _GraphboltLoader(spec.origin)
        return spec


def skip_missing_graphbolt() -> None:
    """DGL 2.1.0 ships ``libgraphbolt_pytorch_<torch>.so`` only up to torch 2.2.1 and ``import dgl`` raises
    FileNotFoundError without it (dgl -> dgl.distributed -> dgl.graphbolt). Graphbolt is DGL's new data
    loader, which RecBole does not use: make its library load non-fatal, without editing site-packages."""
    if not any(isinstance(f, _GraphboltFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _GraphboltFinder())


skip_missing_graphbolt()


# --------------------------------------------------------------------------- config mapping
# ours -> RecBole, for every model (only keys present in our config.yaml are passed)
COMMON = {
    "learning_rate": "learning_rate",
    "batch_size": "train_batch_size",
    "embedding_size": "embedding_size",
    "weight_decay": "weight_decay",
    "seed": "seed",
    "epochs": "epochs",
    "eval_every": "eval_step",     # 1 for every model but ConvNCF (5: its full ranking is expensive)
}
# ours -> RecBole per RecBole model: a key name, or (key name, function of our value)
PER_MODEL = {
    # RecBole's BPR has no regulariser at all (loss = BPR only); ours adds reg_weight * L2 of the batch
    # embeddings (1e-5, negligible): not mappable, recorded under "unmapped".
    "BPR": {},
    # RecBole: reg_weight * EmbLoss(ego embeddings of the batch); with require_pow=True (FIXED below) that is
    # sum of squares / 2 / batch, exactly our l2_reg.
    "LightGCN": {"n_layers": "n_layers", "reg_weight": "reg_weight"},
    "SpectralCF": {"n_layers": "n_layers", "reg_weight": "reg_weight"},
    # RecBole's KGAT uses train_batch_size for the CF AND the KG pass (ours: batch_size, kg_batch_size).
    "KGAT": {"kg_embedding_size": "kg_embedding_size", "layers": "layers", "mess_dropout": "mess_dropout",
             "reg_weight": "reg_weight",
             "aggregator": ("aggregator_type", lambda v: {"bi-interaction": "bi", "bi": "bi", "gcn": "gcn",
                                                           "graphsage": "graphsage"}[str(v)])},
    # RecBole's CKE: reg_weights = [lambda on the CF embeddings, lambda on the TransR terms]
    "CKE": {"kg_embedding_size": "kg_embedding_size"},
    "KGCN": {"n_iter": "n_iter", "aggregator": "aggregator", "reg_weight": "reg_weight",
             "neighbor_sample_size": "neighbor_sample_size"},
    # ConvNCF: the CNN shape is mapped in DERIVED; RecBole's reg_weights multiply plain (unsquared) norms of
    # the WHOLE embedding tables and CNN weights, ours squared norms of the batch: no value corresponds, so
    # RecBole's default reg_weights are kept. RecBole's default trains from scratch (train_method: no_pretrain);
    # compare.py pretrains RecBole's BPR on the same split first and passes train_method: after_pretrain and
    # pre_model_path when our run starts from BPR-MF (pretrain_path), as the paper does.
    "ConvNCF": {"dropout": "dropout_prob", "dropout_prob": "dropout_prob"},
}
# derived RecBole keys that need several of our keys: model -> function(our cfg) -> dict
DERIVED = {
    "CKE": lambda c: ({"reg_weights": [float(c["reg_weight"]), float(c.get("kg_reg_weight", c["reg_weight"]))]}
                      if "reg_weight" in c else {}),
    # ours: `channels` per conv layer, each 2x2 kernel / stride 2 (64 -> 32 -> ... -> 1)
    "ConvNCF": lambda c: ({"cnn_channels": [1] + list(c["channels"]), "cnn_kernels": [2] * len(c["channels"]),
                           "cnn_strides": [2] * len(c["channels"])} if c.get("channels") else {}),
}
# settings we FIX for every model so both frameworks measure the same thing
FIXED = {
    "require_pow": True,          # EmbLoss = sum of squares / 2 / batch (our l2_reg), not the plain norm
    "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False,
                              "candidate_num": 0},
    "metrics": ["Recall", "MRR", "NDCG"],
    "topk": [20],
    "valid_metric": "NDCG@20",
    "valid_metric_bigger": True,
    "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]},  # ignored: benchmark_filename bypasses splitting
                  "group_by": "user", "order": "RO", "mode": "full"},
    "repeatable": False,
    "benchmark_filename": ["train", "valid", "test"],
    "gpu_id": "",                 # -> device cpu
    "use_gpu": False,
    "worker": 0,
    "reproducibility": True,
    "show_progress": False,
    "rm_dup_inter": None,
    "filter_inter_by_user_or_item": False,
    "user_inter_num_interval": "[0,inf)",
    "item_inter_num_interval": "[0,inf)",
    "entity_kg_num_interval": "[0,inf)",
    "relation_kg_num_interval": "[0,inf)",
    "val_interval": None,
    "threshold": None,
    "log_wandb": False,
    "metric_decimal_place": 8,    # RecBole rounds metrics to 4 places by default
}
# per-model settings we fix (not from our YAML) to make RecBole's model the same model as ours
MODEL_FIXED = {
    # ours (and the KGAT paper's release) propagate and train TransR over the CKG WITH inverse relations;
    # RecBole's default (kg_reverse_r: False) keeps only the given direction of each KG triple.
    "KGAT": {"kg_reverse_r": True},
}
KG_MODELS = {"KGAT", "CKE", "KGCN", "KGIN", "KGNNLS", "RippleNet", "MKR", "CFKG", "KTUP", "MCCLK"}


def load_yaml(path: Path) -> dict:
    import yaml
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def recbole_model_keys(model: str) -> dict:
    import recbole
    p = Path(recbole.__file__).parent / "properties" / "model" / f"{model}.yaml"
    return load_yaml(p) if p.is_file() else {}


def map_config(model: str, ours: dict) -> tuple[dict, dict, list[str]]:
    """Returns (RecBole config from ours, {recbole key: our key}, RecBole model keys left at RecBole's default)."""
    out, origin = {}, {}
    for ok, rk in COMMON.items():
        if ok in ours and ours[ok] is not None:
            out[rk], origin[rk] = ours[ok], ok
    for ok, spec in PER_MODEL.get(model, {}).items():
        if ok in ours and ours[ok] is not None:
            rk, fn = (spec, None) if isinstance(spec, str) else spec
            out[rk], origin[rk] = (fn(ours[ok]) if fn else ours[ok]), ok
    for rk, v in DERIVED.get(model, lambda c: {})(ours).items():
        out[rk], origin[rk] = v, "derived"
    model_keys = recbole_model_keys(model)
    for k in model_keys:  # same name on both sides: pass through
        if k not in out and k in ours and ours[k] is not None:
            out[k], origin[k] = ours[k], k
    left_default = sorted(k for k in model_keys if k not in out)
    # the patience rule: ours stops when bad_evals >= patience, RecBole when cur_step > stopping_step
    if "patience" in ours:
        out["stopping_step"], origin["stopping_step"] = max(int(ours["patience"]) - 1, 0), "patience - 1"
    return out, origin, left_default


# --------------------------------------------------------------------------- run
def recbole_name(dataset: str) -> str:
    """The dataset's name inside RecBole. Not ours: RecBole hard-codes ``data_path`` of a dataset called
    ``ml-100k`` to its bundled example (Config._set_default_parameters) and loads its own
    properties/dataset/<name>.yaml for known names; a distinct name keeps both out."""
    return f"{dataset}-oursplit"


def build_data_path(split_dir: Path, dataset: str, kg: bool, root: Path) -> Path:
    data = root / "data"
    name = recbole_name(dataset)
    d = data / name
    d.mkdir(parents=True, exist_ok=True)
    suffixes = [f"{s}.inter" for s in ("train", "valid", "test")] + (["kg", "link"] if kg else [])
    for suf in suffixes:
        src = split_dir / f"{dataset}.{suf}"
        if not src.is_file():
            raise SystemExit(f"run_recbole: {src} is missing (KG models need split/D.kg and D.link)")
        os.symlink(src.resolve(), d / f"{name}.{suf}")
    return data


def dump_scores(net, ds, config, path: Path) -> None:
    """Scores of every real user (RecBole ids 1..) for every real item, with their ORIGINAL tokens."""
    import numpy as np
    import torch
    from recbole.data.interaction import Interaction
    uid = config["USER_ID_FIELD"]
    n_users, n_items = ds.user_num, ds.item_num
    net.eval()
    rows = []
    with torch.no_grad():
        for s in range(1, n_users, 256):
            u = torch.arange(s, min(s + 256, n_users), device=config["device"])
            rows.append(net.full_sort_predict(Interaction({uid: u})).view(len(u), n_items)[:, 1:].float().cpu())
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, scores=torch.cat(rows).numpy(),
                        users=np.asarray(ds.id2token(uid, np.arange(1, n_users)), dtype=str),
                        items=np.asarray(ds.id2token(config["ITEM_ID_FIELD"], np.arange(1, n_items)), dtype=str))


class ResumeState:
    """Makes a RecBole run resumable (``--state-dir``). Before each epoch (so after the previous epoch's
    validation) it saves what RecBole's own checkpoint lacks to continue exactly: the model and optimizer, the
    plain tensor attributes of the model (KGAT's attention matrix), the epoch, RecBole's early-stopping state
    (``cur_step``, ``best_valid_score``, ``best_valid_result``) and the
    path of its best-model file, our timing and best-epoch records, and every random state an epoch draws
    from (torch's and numpy's global generators, Python's, and the train loader's own shuffling generator).
    A run restored from it continues as the uninterrupted run would (``bench/recbole/check_resume.py``
    checks that). A state written under another config is not used (the run starts afresh, with a warning).
    A resumed run's ``peak_rss_mb`` is its last process's; ``resumed_from_epoch`` (0-based) says it resumed."""

    def __init__(self, path: Path, cfg: dict, trainer, train_data, epoch_seconds: list, best: dict):
        self.path, self.trainer, self.train_data = path, trainer, train_data
        self.epoch_seconds, self.best = epoch_seconds, best
        # the run's identity: its RecBole config, less what changes between two calls of the same run
        skip = {"data_path", "checkpoint_dir", "pre_model_path"}
        self.key = json.dumps({k: v for k, v in cfg.items() if k not in skip}, sort_keys=True, default=str)
        self.first_epoch = 0
        self.resumed_from = None

    def save_before(self, epoch_idx: int) -> None:
        import random

        import numpy as np
        import torch
        if epoch_idx <= self.first_epoch:          # nothing new since the start (or the restore)
            return
        t = self.trainer
        state = {"key": self.key, "next_epoch": epoch_idx, "cur_step": t.cur_step,
                 "best_valid_score": t.best_valid_score, "best_valid_result": t.best_valid_result,
                 "saved_model_file": t.saved_model_file, "model": t.model.state_dict(),
                 # state RecBole models keep as plain tensor attributes (KGAT's attention matrix A_in)
                 "model_tensors": {k: v for k, v in vars(t.model).items() if isinstance(v, torch.Tensor)},
                 "optimizer": t.optimizer.state_dict(), "train_loss_dict": dict(t.train_loss_dict),
                 "epoch_seconds": list(self.epoch_seconds), "best_epoch": self.best.get("epoch"),
                 "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                         "loader": [g.get_state() for g in loader_generators(self.train_data)]}}
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def restore(self) -> None:
        import random

        import numpy as np
        import torch
        if not self.path.is_file():
            return
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("key") != self.key:
            print(f"run_recbole: {self.path} was saved under another config; starting afresh", file=sys.stderr)
            self.path.unlink()
            return
        t = self.trainer
        t.model.load_state_dict(state["model"])
        for k, v in state.get("model_tensors", {}).items():
            setattr(t.model, k, v.to(t.device) if hasattr(t, "device") else v)
        t.optimizer.load_state_dict(state["optimizer"])
        t.start_epoch = self.first_epoch = self.resumed_from = state["next_epoch"]
        t.cur_step, t.best_valid_score = state["cur_step"], state["best_valid_score"]
        t.best_valid_result, t.saved_model_file = state["best_valid_result"], state["saved_model_file"]
        t.train_loss_dict.update(state["train_loss_dict"])
        self.epoch_seconds[:] = state["epoch_seconds"]
        self.best["epoch"] = state["best_epoch"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        saved = state["rng"]["loader"]
        for g, st in zip(loader_generators(self.train_data), saved if isinstance(saved, list) else [saved]):
            g.set_state(st)
        print(f"run_recbole: resumed from {self.path} before epoch {state['next_epoch'] + 1} (1-based)",
              file=sys.stderr, flush=True)


def loader_generators(loader) -> list:
    """The torch generators that shuffle a RecBole train loader: its own, or for a
    knowledge-based model (KGAT, CKE, KGCN) those of its interaction and KG loaders."""
    if hasattr(loader, "generator"):
        return [loader.generator]
    return [part.generator for part in (loader.general_dataloader, loader.kg_dataloader)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True, help="one of OUR run directories (holds split/ and config.yaml)")
    ap.add_argument("--config", default=None, help="OUR resolved config to map (default <run-dir>/config.yaml); "
                    "e.g. a BPR-MF config on a ConvNCF run's split, to pretrain RecBole's ConvNCF")
    ap.add_argument("--model", required=True, help="RecBole model name: BPR, LightGCN, KGAT, CKE, KGCN, ...")
    ap.add_argument("--epochs", type=int, default=None, help="cap on epochs (default: our config's epochs)")
    ap.add_argument("--seed", type=int, default=None, help="default: our config's seed")
    ap.add_argument("--no-eval", action="store_true", help="train only (no validation, no test): seconds per "
                    "epoch and peak memory; the metrics are null")
    ap.add_argument("--stop-before-epoch", type=int, default=None, metavar="N",
                    help="with --state-dir: save the state before epoch N (1-based) and exit with status 3, as a "
                         "kill would (bench/recbole/check_resume.py)")
    ap.add_argument("--state-dir", default=None, help="a persistent work folder that makes the run resumable: "
                    "the training state is saved there before every epoch, and a killed run started again with "
                    "the same arguments continues from its last finished epoch (removed when the run ends)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--flush-denormal", action="store_true", help="treat denormal floats as zero (x86 FTZ/DAZ, "
                    "torch.set_flush_denormal): what our run does when its config has flush_denormal: true")
    ap.add_argument("--out", default="bench/out/recbole", help="folder for the JSON result")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                    help="extra RecBole config (wins over the mapping), e.g. --set train_batch_size=4096")
    ap.add_argument("--dump-scores", default=None, metavar="NPZ",
                    help="also save the best model's full score matrix (original user/item ids) for "
                         "bench/recbole/check_eval.py (our evaluator on RecBole's scores)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary RecBole work folder (its best "
                    "checkpoint's path is then in the JSON as saved_model_file)")
    ap.add_argument("--verbose", action="store_true", help="RecBole's INFO log on stderr")
    args = ap.parse_args(argv)

    import yaml
    run_dir = Path(args.run_dir).resolve()
    ours = load_yaml(Path(args.config).resolve() if args.config else run_dir / "config.yaml")
    dataset = ours["dataset"]
    model = args.model
    seed = int(args.seed if args.seed is not None else ours.get("seed", 2020))
    out_dir = Path(args.out).resolve()
    dump = Path(args.dump_scores).resolve() if args.dump_scores else None  # before the chdir below
    out_dir.mkdir(parents=True, exist_ok=True)

    import torch
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(args.flush_denormal)

    kg = model in KG_MODELS
    if args.state_dir:
        work = Path(args.state_dir).resolve()
        shutil.rmtree(work / "data", ignore_errors=True)      # the split links are made afresh each time
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix=f"recbole-{model}-{dataset}-"))
    data_path = build_data_path(run_dir / "split", dataset, kg, work)
    mapped, origin, left_default = map_config(model, ours)
    cfg = {"eval_step": 1}
    cfg.update(mapped)
    cfg.update(FIXED)
    cfg.update(MODEL_FIXED.get(model, {}))
    cfg["seed"] = seed
    if args.epochs is not None:
        cfg["epochs"] = args.epochs
    load_col = {"inter": ["user_id", "item_id"]}
    if kg:
        load_col.update({"kg": ["head_id", "relation_id", "tail_id"], "link": ["item_id", "entity_id"]})
    cfg.update({"data_path": str(data_path), "load_col": load_col, "checkpoint_dir": str(work / "saved"),
                "state": "INFO"})
    for kv in args.set:
        k, v = kv.split("=", 1)
        cfg[k] = yaml.safe_load(v)

    os.chdir(work)  # RecBole writes ./log and ./log_tensorboard under the cwd
    sys.argv = sys.argv[:1]  # RecBole's Config also parses --key=value from sys.argv: give it none of ours
    if not args.verbose:
        for cat, mod in ((FutureWarning, ""), (UserWarning, "recbole"), (UserWarning, "torch"),
                         (Warning, "recbole.data.dataset")):
            warnings.filterwarnings("ignore", category=cat, module=mod)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    t_start = time.perf_counter()
    config = Config(model=model, dataset=recbole_name(dataset), config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    log_files = []
    for h in logging.getLogger().handlers:  # RecBole's full INFO log goes to its file; stderr only with --verbose
        if isinstance(h, logging.FileHandler):
            log_files.append(Path(h.baseFilename))
        elif not args.verbose:
            h.setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    ds = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, ds)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)

    epoch_seconds: list[float] = []
    best = {"epoch": None}
    inner_train, inner_save = trainer._train_epoch, trainer._save_checkpoint

    resume = ResumeState(work / "resume.pt", cfg, trainer, train_data, epoch_seconds, best) if args.state_dir else None
    if resume is not None:
        resume.restore()

    def timed_train_epoch(train_data_, epoch_idx, *a, **kw):
        if resume is not None:
            resume.save_before(epoch_idx)
            if args.stop_before_epoch is not None and epoch_idx + 1 >= args.stop_before_epoch:
                print(f"run_recbole: stopped before epoch {epoch_idx + 1} (--stop-before-epoch)", file=sys.stderr)
                sys.exit(3)
        t0 = time.perf_counter()
        r = inner_train(train_data_, epoch_idx, *a, **kw)
        epoch_seconds.append(time.perf_counter() - t0)
        return r

    def tracked_save(epoch, *a, **kw):
        if epoch >= 0:
            best["epoch"] = epoch + 1  # 1-based, as ours
        return inner_save(epoch, *a, **kw)

    trainer._train_epoch, trainer._save_checkpoint = timed_train_epoch, tracked_save
    t_load = time.perf_counter() - t_start
    if args.no_eval:   # RecBole's fit skips validation without valid data; nothing is saved or tested
        trainer.fit(train_data, None, saved=False, show_progress=False, verbose=True)
        best_valid, test = {}, {}
    else:
        best_valid_score, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False,
                                                   verbose=True)
        test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    if dump:
        dump_scores(net, ds, config, dump)
    valid = {k.lower(): float(v) for k, v in (best_valid or {}).items()}
    test = {k.lower(): float(v) for k, v in test.items()}
    n_ep = len(epoch_seconds)
    result = {
        "framework": "recbole", "recbole_model": model, "our_model": ours.get("model"), "dataset": dataset,
        "seed": seed, "run_dir": str(run_dir),
        "test": {k: test.get(k) for k in ("recall@20", "mrr@20", "ndcg@20")},
        "valid": {k: valid.get(k) for k in ("recall@20", "mrr@20", "ndcg@20")},
        "best_epoch": best["epoch"], "epochs_run": n_ep,
        "seconds_per_epoch": round(sum(epoch_seconds) / n_ep, 3) if n_ep else None,
        "train_seconds_total": round(sum(epoch_seconds), 1),
        "load_seconds": round(t_load, 1),
        "resumed_from_epoch": resume.resumed_from if resume is not None else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "n_params": int(sum(p.numel() for p in net.parameters())),
        "n_users": int(ds.user_num - 1), "n_items": int(ds.item_num - 1),
        "n_train": len(train_data._dataset), "n_valid": len(valid_data._dataset), "n_test": len(test_data._dataset),
        "n_test_users": int(len(test_data.uid_list)) if hasattr(test_data, "uid_list") else None,
        "config": {k: cfg[k] for k in sorted(mapped)} | {"epochs": cfg.get("epochs")},
        "mapped_from": origin, "model_fixed": MODEL_FIXED.get(model, {}), "extra_set": args.set, "left_at_recbole_default": {k: config[k] for k in left_default},
        "threads": torch.get_num_threads(), "flush_denormal": args.flush_denormal, "torch": torch.__version__,
        "recbole": __import__("recbole").__version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "saved_model_file": str(Path(trainer.saved_model_file).resolve()) if args.keep else None,
        "work_dir": str(work) if args.keep else None,
    }
    line = json.dumps(result, default=str)
    stem = f"recbole_{model}_{dataset}_seed{seed}"
    (out_dir / f"{stem}.json").write_text(line + "\n", encoding="utf-8")
    for f in log_files[:1]:  # RecBole's own log (per-epoch loss, valid metrics), kept beside the JSON
        if f.is_file():
            shutil.copyfile(f, out_dir / f"{stem}.log")
    print(line, flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    elif resume is not None:
        resume.path.unlink(missing_ok=True)   # finished: a later call with the same arguments starts afresh
    return result


if __name__ == "__main__":
    main()
