"""The one trainer: BPR (+ an alternating KG pass for KG models, docs/model.md §6),
evaluation on valid every n epochs, early stopping on a valid metric (never on test),
the best checkpoint kept, resume after interruption.

:class:`Trainer` is the loop; :func:`run` is the Python API behind ``multikg4rec train``
(config -> dataset -> model -> run directory -> trainer). What a run directory holds, and how
a run is found again, is :mod:`multikg4rec.rundir`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__, distributed, rundir, runtime
from .config import config_hash
from .data import Dataset, load_dataset
from .data.dataset import COLD_TEST, COLD_VALID, WARM
from .errors import Interrupted, UserError
from .evaluation import Evaluator, format_metrics, metrics_by_popularity
from .models import Recommender, build_model, get_model_class, model_features
from .rundir import RunResult, atomic_save
from .runtime import peak_rss_mb, reset_peak_rss, seed_everything
from .sampling import BPRSampler, KGSampler

log = logging.getLogger(__name__)


class Trainer:
    """Fits one model on one dataset; see the module docstring for what it writes."""

    def __init__(self, model: Recommender, dataset: Dataset, config: dict, run_dir: Path, quiet: bool = False):
        self.model, self.dataset, self.config, self.run_dir, self.quiet = model, dataset, config, run_dir, quiet
        # the code this process runs (HEAD can move while a long run trains); a resumed run lists each segment's commit
        self.commits: list[str | None] = [rundir.git_commit()]
        # device (config ``device``): the model with every graph it holds moves there (Recommender._apply);
        # batches are moved per step; model code runs under torch's default-device context there
        self.device = torch.device(distributed.local_device(config.get("device")) or "cpu")
        model.to(self.device)
        # data parallel (torchrun): every rank trains its shard of each epoch's batches (multikg4rec.distributed)
        self.rank, self.world = distributed.world()
        distributed.broadcast_parameters(model)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.evaluator = Evaluator(dataset.n_items, ks=tuple(config["topk"]), batch_size=config["eval_batch_size"],
                                   device=self.device)
        # fused Adam: one kernel per parameter instead of ~10 elementwise passes over it; KG models update
        # their whole node table at every step (bench/results/kgat_step.md)
        # a model with no parameters (content-KNN) trains nothing: its epochs only validate
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"],
                                          weight_decay=config["weight_decay"], fused=True) \
            if any(p.requires_grad for p in model.parameters()) else None
        self.rng = np.random.default_rng(config["seed"])
        self.train_csr = dataset.csr("train")
        self.valid_csr = dataset.csr("valid")
        self.metric = config["valid_metric"]
        # early-stopping state (restored on resume)
        self.epoch = 0
        self.best = -np.inf
        self.best_epoch = -1
        self.bad_evals = 0
        self.train_seconds: list[float] = []
        self.pending_row: dict | None = None      # an epoch trained but not yet validated (see _end_epoch)
        self.kg_sampler = None
        if model.uses_kg_loss:
            triples, n_nodes = model.kg_train_triples()
            self.kg_sampler = KGSampler(triples, n_nodes, config["kg_batch_size"], self.rng)
        # the cold-item protocol: negatives among the warm items only (a new item does not exist while the model
        # trains); valid and test rank the new items (COLD_VALID, COLD_TEST) alone, and test also the catalogue
        # of warm + new items (hybrid)
        self.cf_sampler = BPRSampler(dataset.train, dataset.n_items, config["batch_size"], self.rng,
                                     neg_pool=np.flatnonzero(dataset.items_in(WARM)) if dataset.is_cold else None)
        self.candidates = {"valid": dataset.items_in(COLD_VALID), "test": dataset.items_in(COLD_TEST),
                           "test_hybrid": dataset.items_in(WARM, COLD_TEST)} if dataset.is_cold else {}

    # ---- state
    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        if self.rank:                                    # rank 0 writes the run directory
            return
        atomic_save({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "epoch": self.epoch, "best": self.best, "best_epoch": self.best_epoch, "bad_evals": self.bad_evals,
            "train_seconds": self.train_seconds, "pending_row": self.pending_row, "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(), "config_hash": config_hash(self.config), "commits": self.commits,
            **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
        }, self.ckpt_path)

    def load_checkpoint(self) -> bool:
        if not self.ckpt_path.is_file():
            return False
        state = rundir.load_state(self.ckpt_path)                    # damaged: a one-line error, nothing lost
        if state.get("config_hash") != config_hash(self.config):
            raise UserError(f"{self.ckpt_path} was written with a different config; use --restart to start over")
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state["best_epoch"]
        self.bad_evals, self.train_seconds = state["bad_evals"], state["train_seconds"]
        self.pending_row = state.get("pending_row")                 # absent in checkpoints from before it
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        earlier = state.get("commits") or [None]                    # None: a checkpoint from before this field
        self.commits = earlier + [c for c in self.commits if c != earlier[-1]]
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        return True

    def on_device(self):
        """Context for model code: factory calls without ``device=`` land on the run's device (a no-op on
        CPU, where torch's default-device mode would only add per-call overhead)."""
        return self.device if self.device.type != "cpu" else contextlib.nullcontext()

    def _to_device(self, batch: dict) -> dict:
        if self.device.type == "cpu":
            return batch
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # ---- one epoch
    def _pass(self, sampler, loss_fn, desc: str) -> float | None:
        if self.optimizer is None:                       # nothing to train (content-KNN)
            return None
        if self.world > 1:
            return self._sharded_pass(sampler, loss_fn, desc)
        total, n = 0.0, 0
        bar = tqdm(sampler, total=len(sampler), desc=desc, leave=False, disable=True if self.quiet else None,
                   dynamic_ncols=True)   # None: no bar when stderr is not a terminal (a log file)
        for batch in bar:
            self.optimizer.zero_grad(set_to_none=True)
            with self.on_device():
                loss = loss_fn(self._to_device(batch))
            if not torch.isfinite(loss):
                raise UserError(f"{desc}: the loss became {loss.item()} (try a lower learning_rate)")
            loss.backward()
            self.optimizer.step()
            total += loss.item()
            n += 1
            bar.set_postfix(loss=f"{total / n:.4f}", refresh=False)
        return total / max(n, 1)

    def _sharded_pass(self, sampler, loss_fn, desc: str) -> float:
        """One pass under torchrun: rank r trains batches r, r + N, ... of the epoch every rank draws alike;
        one optimiser step per N batches, on the gradients averaged over the ranks (multikg4rec.distributed)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        total, n = 0.0, 0
        batches = iter(sampler)
        steps = (len(sampler) + self.world - 1) // self.world
        bar = tqdm(range(steps), desc=desc, leave=False, disable=True if (self.quiet or self.rank) else None,
                   dynamic_ncols=True)
        for _ in bar:
            group = [b for _, b in zip(range(self.world), batches)]
            self.optimizer.zero_grad(set_to_none=True)
            mine = group[self.rank] if self.rank < len(group) else None
            bad = False
            if mine is not None:
                with self.on_device():
                    loss = loss_fn(self._to_device(mine))
                bad = not bool(torch.isfinite(loss))
                if not bad:
                    loss.backward()
                    total += loss.item()
                    n += 1
            if distributed.average_gradients(params, mine is not None, bad):
                raise UserError(f"{desc}: the loss became non-finite on a rank (try a lower learning_rate)")
            self.optimizer.step()
        total, n = distributed.all_sum([total, float(n)])
        return total / max(n, 1)

    def evaluate(self, split: str, **kw):
        if self.world > 1:                               # users sharded over the ranks, merged in user order
            shard = np.arange(self.dataset.n_users)[self.rank::self.world]
            part = self._evaluate(split, users=shard, **{**kw, "return_per_user": True})
            return distributed.merge_eval(distributed.all_gather_object(part))
        return self._evaluate(split, **kw)

    def _evaluate(self, split: str, **kw):
        self.model.eval()

        def score(users):
            with self.on_device():
                return self.model.full_sort_predict(users)

        with torch.no_grad():
            with self.on_device():
                self.model.prepare_eval()
            cand = self.candidates.get(split)
            if split == "valid":
                res = self.evaluator.evaluate(score, self.valid_csr, [self.train_csr], candidates=cand, **kw)
            else:                                        # "test", or the cold protocol's "test_hybrid"
                res = self.evaluator.evaluate(score, self.dataset.csr("test"), [self.train_csr, self.valid_csr],
                                              candidates=cand, **kw)
        self.model.train()
        return res

    def fit(self) -> None:
        cfg = self.config
        resumed = self.load_checkpoint()
        if resumed:
            self._say(f"resumed from {self.ckpt_path} after epoch {self.epoch} (best {self.metric} "
                      f"{self.best:.4f} at epoch {self.best_epoch})")
        log_path = self.run_dir / "log.jsonl" if self.rank == 0 else Path(os.devnull)   # rank 0 writes
        with open(log_path, "a" if resumed else "w", encoding="utf-8") as logf:
            # interrupted during a validation: its epoch's training is in the checkpoint, only the evaluation reruns
            if self.pending_row is not None and self._end_epoch(self.pending_row, logf):
                return
            if self.bad_evals >= cfg["patience"]:
                return
            while self.epoch < cfg["epochs"]:
                if self._end_epoch(self.train_epoch(), logf):
                    break

    def train_epoch(self) -> dict:
        """One training epoch (CF pass, KG pass if the model has one, the model's epoch-end update), no
        evaluation: its log row (losses, diagnostics, seconds). ``fit`` validates and checkpoints after it;
        ``bench/recbole/compare.py --no-eval`` times epochs with it alone."""
        self.model.train()
        epoch = self.epoch + 1
        t0 = time.perf_counter()
        row = {"epoch": epoch, "loss": self._pass(self.cf_sampler, self.model.calculate_loss, f"epoch {epoch} CF")}
        if self.kg_sampler is not None:
            row["kg_loss"] = self._pass(self.kg_sampler, self.model.calculate_kg_loss, f"epoch {epoch} KG")
        with self.on_device():
            self.model.on_epoch_end(epoch)
        distributed.sync_rng()                           # every rank draws alike in the next epoch
        diag = self.model.diagnostics()
        if diag:
            row["diag"] = diag
        row["train_seconds"] = round(time.perf_counter() - t0, 3)
        self.train_seconds.append(row["train_seconds"])
        self.epoch = epoch
        return row

    def _end_epoch(self, row: dict, logf) -> bool:
        """Validate if due, keep the best model, checkpoint, log; True when early stopping says stop.

        Before a validation the checkpoint already holds the epoch's training (``pending_row``), so
        an interruption during a long full-ranking evaluation (ConvNCF's on ml-1m takes most of an
        hour on one core: bench/results/convncf_eval.md) loses only that evaluation; the evaluation uses no random numbers, so the resumed run
        is the uninterrupted one."""
        cfg, epoch = self.config, row["epoch"]
        stop = False
        if epoch % cfg["eval_every"] == 0 or epoch == cfg["epochs"]:
            self.pending_row = row
            self.save_checkpoint()
            t1 = time.perf_counter()
            valid = self.evaluate("valid").metrics
            row["eval_seconds"] = round(time.perf_counter() - t1, 3)
            row["valid"] = valid
            score = valid[self.metric]
            if score > self.best:
                self.best, self.best_epoch, self.bad_evals = score, epoch, 0
                if self.rank == 0:
                    atomic_save({"model": self.model.state_dict(), "epoch": epoch, "valid": valid},
                                 self.run_dir / "best_model.pt")
            else:
                self.bad_evals += 1
                stop = self.bad_evals >= cfg["patience"]
            self.pending_row = None
        self.save_checkpoint()
        logf.write(json.dumps(row) + "\n")
        logf.flush()
        msg = f"epoch {epoch:3d}  loss {row['loss']:.4f}" if row["loss"] is not None else f"epoch {epoch:3d}  (nothing to train)"
        if "kg_loss" in row:
            msg += f"  kg {row['kg_loss']:.4f}"
        msg += f"  {row['train_seconds']:.1f}s"
        if "valid" in row:
            msg += f"  valid {self.metric} {row['valid'][self.metric]:.4f}" + (
                " *" if self.best_epoch == epoch else "")
        self._say(msg)
        if stop:
            self._say(f"early stop: no {self.metric} improvement on valid for {cfg['patience']} evaluations")
        return stop

    def _say(self, msg: str) -> None:
        if not self.quiet and self.rank == 0:
            tqdm.write(msg)

    def finish(self) -> dict:
        """Reload the best epoch, evaluate test once, write the artefacts.

        The valid metrics are the best epoch's, as computed when it was saved (the same weights and data, so
        the same numbers: ``tests/test_training.py`` re-evaluates to check); that spares one full-ranking pass. A best model saved before it carried them is
        re-evaluated."""
        distributed.barrier()                            # rank 0 has written best_model.pt
        best = self.run_dir / "best_model.pt"
        best_state = rundir.load_state(best) if best.is_file() else {}
        if best_state:
            self.model.load_state_dict(best_state["model"])
        valid_metrics = best_state.get("valid")
        if valid_metrics is None:
            valid_metrics = self.evaluate("valid").metrics
        test = self.evaluate("test", return_per_user=True, topk=int(self.config["save_topk"]))
        ds = self.dataset
        main = self.rank == 0                            # rank 0 writes the run directory
        if main:
            rundir.write_test_exports(self.run_dir, ds, test)
        # the sparse-item breakdown: test NDCG@20 / Recall@20 by the train popularity of the relevant items
        extra = {"test_by_popularity": metrics_by_popularity(
            test.topk, test.topk_users, ds.csr("test"), np.bincount(ds.train[:, 1], minlength=ds.n_items))} \
            if not ds.is_cold and int(self.config["save_topk"]) >= 20 else {}
        if ds.is_cold:                                   # the new items among the warm ones
            hybrid = self.evaluate("test_hybrid", return_per_user=True, topk=int(self.config["save_topk"]))
            if main:
                rundir.write_test_exports(self.run_dir, ds, hybrid, suffix="_hybrid")
            extra = {"test_hybrid": hybrid.metrics, "n_test_users_hybrid": hybrid.n_users,
                     "protocol": "cold_item: test = the cold-test items alone, test_hybrid = warm + cold-test items"}
        secs = self.train_seconds
        metrics = {
            "model": self.config["model"], "dataset": ds.name, "seed": self.config["seed"],
            "valid": valid_metrics, "test": test.metrics, **extra,
            "best_epoch": self.best_epoch, "epochs_run": self.epoch,
            # the median: one epoch slowed by a shared or paused machine does not move it
            "seconds_per_epoch": round(float(np.median(secs)), 3) if secs else None,
            "train_seconds_total": round(float(np.sum(secs)), 1),
            "peak_rss_mb": round(peak_rss_mb(), 1), "device": str(self.device),
            **({"peak_gpu_mb": round(torch.cuda.max_memory_allocated(self.device) / 2 ** 20, 1)}
               if self.device.type == "cuda" else {}),
            "n_params": int(sum(p.numel() for p in self.model.parameters())),
            "n_test_users": test.n_users, "config_hash": config_hash(self.config),
            "data_fingerprint": ds.fingerprint(),
            "encoder": self.config.get("encoder") if self.model.uses_features else None,
            "commit": self.commits[-1], "commits": self.commits, "version": __version__, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **({"world_size": self.world, "peak_rss_mb_per_rank": distributed.all_gather_object(round(peak_rss_mb(), 1))}
               if self.world > 1 else {}),
        }
        if main:
            rundir.atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2))
        distributed.barrier()
        return metrics


def run(cfg: dict, run_dir: str | Path | None = None, restart: bool = False, quiet: bool = False,
        dataset: Dataset | None = None, features=None) -> RunResult:
    """Train ``cfg['model']`` on ``cfg['dataset']`` and evaluate it: the Python API behind ``multikg4rec train``.

    A finished run (``metrics.json`` present) is not redone unless ``restart``; an unfinished one
    resumes from its checkpoint. The runs the model needs first (``Recommender.prerequisites``, e.g.
    ConvNCF's BPR-MF initialisation) are found, or trained, before it.
    """
    runtime.configure(cfg)                                          # threads, allocator
    rank, world = distributed.init_from_env(cfg.get("device"))      # torchrun: join its process group
    if "world_size" in cfg and int(cfg["world_size"]) != world:
        raise UserError(f"world_size is the number of processes torchrun starts ({world} here), not an option: "
                        f"launch with torchrun --nproc_per_node N or multikg4rec train --nproc N")
    if world > 1:                                                   # a data-parallel run is another run
        cfg = {**cfg, "world_size": world}
    run_dir = Path(run_dir) if run_dir else rundir.run_dir_for(cfg)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file; a run directory goes there (move the file, or pass --run-dir)")
    if rundir.is_finished(run_dir) and not restart:
        return RunResult(run_dir, rundir.read_json(run_dir / "metrics.json"))
    for pre in get_model_class(cfg["model"]).prerequisites(cfg):
        if not quiet:
            tqdm.write(f"{cfg['model']} needs a finished {pre['model']} run first: training it")
        run(pre, quiet=quiet)
        runtime.configure(cfg)
    # everything that can fail on bad input happens before the run directory is touched
    reset_peak_rss()
    seed_everything(cfg["seed"])
    if rank:
        distributed.barrier()                                       # rank 0 fills the dataset / feature caches
    if dataset is None:
        dataset = load_dataset(cfg["dataset"], cfg, data_dir=cfg.get("data_dir"), cache_dir=cfg.get("cache_dir"))
    if features is None:
        features = model_features(cfg, dataset)
    if world > 1 and not rank:
        distributed.barrier()
    model = build_model(cfg, dataset, features)
    lock, done = None, None
    if rank == 0:                                                   # rank 0 alone writes the run directory
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = rundir.lock(run_dir)                                 # held until this process ends
        done = rundir.is_finished(run_dir) and not restart          # finished by that process meanwhile
        if not done:
            rundir.prepare(run_dir, cfg, dataset, restart, features)
    if distributed.broadcast_object(done):
        if lock:
            lock.close()
        return RunResult(run_dir, rundir.read_json(run_dir / "metrics.json"))
    trainer = Trainer(model, dataset, cfg, run_dir, quiet=quiet)
    try:
        trainer.fit()
        metrics = trainer.finish()
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted after epoch {trainer.epoch}: state saved in {trainer.ckpt_path}; "
                          f"run the same command again to resume") from None
    finally:
        if lock:
            lock.close()
    if not quiet and rank == 0:
        tqdm.write(f"best epoch {metrics['best_epoch']}  test: " + format_metrics(metrics["test"]))
    return RunResult(run_dir, metrics, model, dataset)
