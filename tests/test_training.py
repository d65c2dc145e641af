"""Trainer, samplers, config and CLI end to end on a small real slice."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from multikg4rec.cli import main
from multikg4rec.config import load_config
from multikg4rec.errors import UserError
from multikg4rec.sampling import BPRSampler, KGSampler
from multikg4rec.training import run


# ---------------------------------------------------------------- samplers

def test_bpr_negatives_never_train_positives():
    rng = np.random.default_rng(0)
    train = np.array([[u, i] for u in range(50) for i in range(0, 20, 1 + u % 3)])
    s = BPRSampler(train, 25, 64, rng)
    pos = {tuple(p) for p in train}
    seen = 0
    for b in s:
        for u, n in zip(b["users"].tolist(), b["neg_items"].tolist()):
            assert (u, n) not in pos and 0 <= n < 25
        seen += len(b["users"])
    assert seen == len(train) and len(s) == -(-len(train) // 64)


def test_kg_corrupted_tails_are_not_true_triples():
    rng = np.random.default_rng(1)
    triples = np.array([[h, r, t] for h in range(30) for r in range(2) for t in range(h % 5 + 1, 12)])
    s = KGSampler(triples, 12, 100, rng)
    true = {tuple(t) for t in triples}
    for b in s:
        for h, r, n in zip(b["heads"].tolist(), b["relations"].tolist(), b["neg_tails"].tolist()):
            assert (h, r, n) not in true


def test_kg_batches_are_sorted_by_relation_and_an_epoch_is_every_triple_once():
    rng = np.random.default_rng(2)
    triples = np.array([[h, r, t] for h in range(30) for r in range(3) for t in range(h % 5 + 1, 12)])
    seen = []
    for b in KGSampler(triples, 12, 64, rng):
        r = b["relations"]
        assert (r[1:] >= r[:-1]).all()                     # TransR's projection relies on it for speed
        seen += zip(b["heads"].tolist(), r.tolist(), b["pos_tails"].tolist())
    assert sorted(seen) == sorted(map(tuple, triples.tolist()))


def test_samplers_are_seeded():
    train = np.array([[u, i] for u in range(20) for i in range(u % 7, 30, 3)])
    a = [b["neg_items"] for b in BPRSampler(train, 40, 32, np.random.default_rng(5))]
    b = [b["neg_items"] for b in BPRSampler(train, 40, 32, np.random.default_rng(5))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------- config

def test_config_precedence_and_unknown_keys(tmp_path):
    cfg = load_config("lightgcn", "ml-100k")
    assert cfg["rating_threshold"] == 3 and cfg["n_layers"] == 3 and cfg["valid_metric"] == "ndcg@20"
    f = tmp_path / "c.yaml"
    f.write_text("n_layers: 2\nlearning_rate: 0.01\n")
    cfg = load_config("lightgcn", "ml-100k", str(f), {"learning_rate": 0.005})
    assert cfg["n_layers"] == 2 and cfg["learning_rate"] == 0.005
    with pytest.raises(UserError, match="learning_rte .did you mean learning_rate"):
        load_config("bprmf", "ml-100k", None, {"learning_rte": 0.1})


# ---------------------------------------------------------------- trainer

def _cfg(model, tmp_path, **kw):
    cfg = load_config(model, "ml-100k", None, {"epochs": 2, "seed": 7, "output_dir": str(tmp_path)} | kw)
    return cfg


def test_config_values_of_the_right_kind_pass_and_whole_floats_become_ints():
    from multikg4rec.config import config_hash
    a = load_config("kgat", "ml-100k", overrides={"epochs": 3.0, "reg_weight": 0, "threads": None,
                                                   "layers": [32, 16]})
    assert a["epochs"] == 3 and isinstance(a["epochs"], int) and a["reg_weight"] == 0 and a["layers"] == [32, 16]
    assert config_hash(a) == config_hash(load_config("kgat", "ml-100k", overrides={"epochs": 3, "reg_weight": 0,
                                                                                   "layers": [32, 16]}))
    # YAML 1.1 reads 1e-5 (no dot) as a string: on the command line and in config files it is the number
    b = load_config("kgat", "ml-100k", overrides={"reg_weight": "1e-5", "learning_rate": "5e-4", "epochs": "2e1"})
    assert (b["reg_weight"], b["learning_rate"], b["epochs"]) == (1e-5, 5e-4, 20) and isinstance(b["epochs"], int)
    with pytest.raises(UserError, match="topk: expected a list"):
        load_config("bprmf", "ml-100k", overrides={"topk": 20})
    with pytest.raises(UserError, match="batch_size: expected a number"):
        load_config("bprmf", "ml-100k", overrides={"batch_size": True})


def test_a_run_is_found_by_the_config_it_stores_not_by_its_directory_name(tmp_path):
    """Every key but the non-semantic ones names a run; a finished run whose directory has another name (an older
    hash) is found by its stored config.yaml, and a changed value asks for another run."""
    from multikg4rec import config as C
    from multikg4rec.rundir import default_run_dir, find_run, run_dir_for
    cfg = load_config("bprmf", "ml-100k", None, {"seed": 3, "output_dir": str(tmp_path)})
    before = C.config_hash(cfg)
    assert C.config_hash(cfg | {"seed": 4}) != before and C.config_hash(cfg | {"device": "cuda"}) != before
    assert C.config_hash(cfg | {"threads": 7}) == before        # non-semantic keys never count
    assert C.config_hash(cfg | {"tune_allocator": False}) == before
    assert find_run(cfg) is None and run_dir_for(cfg) == default_run_dir(cfg)
    old = default_run_dir(cfg).with_name("seed3-0ldhash0")
    old.mkdir(parents=True)
    C.dump_config(cfg | {"threads": 1}, old / "config.yaml")
    assert find_run(cfg) == old and run_dir_for(cfg) == old
    assert find_run(cfg | {"learning_rate": 0.5}) is None
    assert find_run(cfg | {"seed": 4}) is None


def test_convncf_trains_its_bprmf_initialisation_first(tmp_path, data_dir):
    """`train --model convncf` (pretrain_path: auto) finds or trains the BPR-MF run it starts from
    (Recommender.prerequisites, honoured by training.run), instead of stopping with an error."""
    from multikg4rec.models.pretrained import bprmf_config
    from multikg4rec.rundir import find_run
    small = {"epochs": 1, "embedding_size": 8, "channels": [4, 4, 4], "output_dir": str(tmp_path), "seed": 0,
             "data_dir": str(data_dir), "quiet": True, "threads": 1}
    cfg = load_config("convncf", "ml-100k", None, small)
    res = run(cfg, quiet=True)
    pre = find_run(bprmf_config(cfg))
    assert pre is not None and (pre / "best_model.pt").is_file() and (pre / "metrics.json").is_file()
    assert (res.run_dir / "metrics.json").is_file() and res.run_dir.parent.name == "convncf"


def test_tune_allocator_takes_effect_on_glibc_and_changes_no_result(ml100k_small, tmp_path):
    """runtime.configure raises glibc's malloc thresholds (CI and these machines are glibc Linux); a run's
    metrics do not depend on it (it only changes where buffers live)."""
    import platform

    from multikg4rec import runtime
    if platform.libc_ver()[0] == "glibc":
        assert runtime.tune_allocator() is True
    else:
        assert runtime.tune_allocator() is False
    if platform.libc_ver()[0] == "glibc":                       # freed memory goes back on release_memory
        import os
        rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20  # noqa
        x = torch.ones(64 * 2**20 // 4 * 4)                   # 256 MB, touched
        del x
        before = rss()
        runtime.release_memory()
        assert before - rss() > 128, (before, rss())
    a = run(_cfg("bprmf", tmp_path / "a", tune_allocator=True), dataset=ml100k_small, quiet=True).metrics
    b = run(_cfg("bprmf", tmp_path / "b", tune_allocator=False), dataset=ml100k_small, quiet=True).metrics
    assert a["test"] == b["test"]


def test_run_commit_says_when_the_package_code_is_uncommitted(tmp_path):
    """A run records the commit its code came from, marked +dirty when tracked files of the package differ
    from it (untracked files and files outside the package do not count); None outside a git checkout."""
    import subprocess

    from multikg4rec.rundir import git_commit as _git_commit
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,  # noqa
                                    check=True, capture_output=True)
    assert _git_commit(tmp_path) is None
    git("init", "-q")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("x = 1\n")
    (tmp_path / "README").write_text("r\n")
    git("add", "-A")
    git("commit", "-qm", "c")
    head = _git_commit(tmp_path / "pkg")
    assert head and "+" not in head
    (tmp_path / "pkg" / "new.py").write_text("")                     # untracked: not dirty
    (tmp_path / "README").write_text("changed\n")                    # outside the package: not dirty
    assert _git_commit(tmp_path / "pkg") == head
    (tmp_path / "pkg" / "m.py").write_text("x = 2\n")
    assert _git_commit(tmp_path / "pkg") == head + "+dirty"


def test_flush_denormal_is_set_per_run_and_keeps_the_run_name():
    """runtime.configure turns flush-to-zero on for a run with flush_denormal: true (ConvNCF's default) and
    off again for the next run without it (a sweep runs many in one process); like threads it is a process
    setting, so it does not rename a run."""
    import platform

    from multikg4rec import config as C
    from multikg4rec import runtime
    tiny = torch.tensor([1e-39], dtype=torch.float32)             # a denormal float32
    assert tiny.item() != 0
    cfg = load_config("convncf", "ml-100k", None, {"seed": 3})
    assert cfg["flush_denormal"] is True and load_config("bprmf", "ml-100k")["flush_denormal"] is False
    try:
        runtime.configure(cfg)
        if platform.machine() in ("x86_64", "AMD64"):
            assert (tiny * 1.0).item() == 0.0                      # DAZ: a denormal input counts as 0
        runtime.configure(cfg | {"flush_denormal": False})
        assert (tiny * 1.0).item() != 0.0
        if platform.machine() in ("x86_64", "AMD64"):              # every thread of a 2-thread op flushes
            threads = torch.get_num_threads()
            try:
                torch.set_num_threads(2)
                many = torch.full((1 << 22,), 1e-39)
                assert ((many * 1.0) != 0).all()                  # the pool exists and does not flush yet
                runtime.configure(cfg | {"threads": 2})
                assert ((many * 1.0) == 0).all()
                assert ((many.view(2048, 2048) @ many.view(2048, 2048).new_full((2048, 64), 1e20)) == 0).all()
                runtime.configure(cfg | {"threads": 1, "flush_denormal": False})   # a 1-thread run after it
                torch.set_num_threads(2)
                assert ((many * 1.0) != 0).all()                  # ... cleared the pool threads too
            finally:
                torch.set_num_threads(threads)
    finally:
        runtime.flush_denormal(False)                              # main thread and pool, for later tests
    assert C.config_hash(cfg | {"flush_denormal": False}) == C.config_hash(cfg)


@pytest.mark.parametrize("model", ["bprmf", "lightgcn"])
def test_one_model_trains_and_writes_artefacts(ml100k_small, tmp_path, model):
    res = run(_cfg(model, tmp_path), dataset=ml100k_small, quiet=True)
    d = res.run_dir
    for f in ("config.yaml", "log.jsonl", "checkpoint.pt", "best_model.pt", "metrics.json", "topk.tsv",
              "per_user_test.npz", "split/ml-100k.train.inter", "split/ml-100k.valid.inter",
              "split/ml-100k.test.inter", "split/ml-100k.kg", "split/ml-100k.link"):
        assert (d / f).is_file(), f
    m = json.loads((d / "metrics.json").read_text())
    assert set(m["test"]) >= {"recall@20", "mrr@20", "ndcg@20"} and m["best_epoch"] in (1, 2)
    assert len((d / "log.jsonl").read_text().splitlines()) == 2
    # split files use ORIGINAL ids and partition the data
    tr = pd.read_csv(d / "split/ml-100k.train.inter", sep="\t", dtype=str)
    te = pd.read_csv(d / "split/ml-100k.test.inter", sep="\t", dtype=str)
    assert list(tr.columns) == ["user_id:token", "item_id:token"]
    assert len(tr) == len(ml100k_small.train) and len(te) == len(ml100k_small.test)
    assert set(tr["user_id:token"]) <= set(ml100k_small.user_tokens)
    # topk.tsv: one line per test user, 50 original item ids, none of them a train item of that user
    lines = (d / "topk.tsv").read_text().splitlines()
    assert len(lines) == m["n_test_users"]
    train_pairs = set(zip(tr["user_id:token"], tr["item_id:token"]))
    for line in lines[:20]:
        user, *items = line.split("\t")
        assert len(items) == 50 and not any((user, i) in train_pairs for i in items)


def test_metrics_recomputable_from_topk(ml100k_small, tmp_path):
    """Anyone can recompute recall@20 from topk.tsv + the split, without our evaluator."""
    res = run(_cfg("bprmf", tmp_path), dataset=ml100k_small, quiet=True)
    d = res.run_dir
    te = pd.read_csv(d / "split/ml-100k.test.inter", sep="\t", dtype=str)
    rel = te.groupby("user_id:token")["item_id:token"].apply(set).to_dict()
    recalls = []
    for line in (d / "topk.tsv").read_text().splitlines():
        user, *items = line.split("\t")
        recalls.append(len(set(items[:20]) & rel[user]) / len(rel[user]))
    assert np.mean(recalls) == pytest.approx(res.metrics["test"]["recall@20"], abs=1e-9)


def test_same_seed_same_metrics_and_resume(ml100k_small, tmp_path):
    a = run(_cfg("bprmf", tmp_path / "a", epochs=3), dataset=ml100k_small, quiet=True)
    # interrupted after 2 epochs, then resumed to 3: identical to an uninterrupted run
    b_cfg = _cfg("bprmf", tmp_path / "b", epochs=3)
    b_dir = tmp_path / "b" / "run"
    run(_cfg("bprmf", tmp_path / "b", epochs=2) | {"epochs": 2}, run_dir=b_dir, dataset=ml100k_small, quiet=True)
    (b_dir / "metrics.json").unlink()  # as if stopped before finishing
    ckpt = torch.load(b_dir / "checkpoint.pt", weights_only=False)
    ckpt["config_hash"] = __import__("multikg4rec.config", fromlist=["x"]).config_hash(b_cfg)
    ckpt["commits"] = ["0000000"]                    # the first segment ran other code
    torch.save(ckpt, b_dir / "checkpoint.pt")
    b = run(b_cfg, run_dir=b_dir, dataset=ml100k_small, quiet=True)
    assert b.metrics["epochs_run"] == 3
    # provenance: the code of each segment, the last one as "commit" (the code this process ran, not a later HEAD)
    assert b.metrics["commits"][0] == "0000000" and b.metrics["commit"] == b.metrics["commits"][-1]
    assert a.metrics["commits"] == [a.metrics["commit"]]
    assert a.metrics["test"] == pytest.approx(b.metrics["test"], abs=1e-6)
    # a finished run is returned, not redone
    again = run(b_cfg, run_dir=b_dir, dataset=ml100k_small, quiet=True)
    assert again.model is None and again.metrics["test"] == b.metrics["test"]


def test_interrupted_validation_reruns_only_the_evaluation(ml100k_small, tmp_path, monkeypatch):
    """Ctrl-C during a validation keeps the epoch's training: the resumed run evaluates that epoch without
    training it again and ends where an uninterrupted run ends."""
    from multikg4rec import training
    from multikg4rec.errors import Interrupted
    cfg = _cfg("bprmf", tmp_path, epochs=3, eval_every=1)
    a = run(cfg, run_dir=tmp_path / "a", dataset=ml100k_small, quiet=True)
    real_evaluate, evals = training.Trainer.evaluate, []

    def interrupt_second_validation(self, split, **kw):
        evals.append(split)
        if evals.count("valid") == 2:
            raise KeyboardInterrupt
        return real_evaluate(self, split, **kw)

    monkeypatch.setattr(training.Trainer, "evaluate", interrupt_second_validation)
    with pytest.raises(Interrupted, match="after epoch 2"):
        run(cfg, run_dir=tmp_path / "b", dataset=ml100k_small, quiet=True)
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["pending_row"]["epoch"] == 2 and "valid" not in ckpt["pending_row"]
    passes = []
    real_pass = training.Trainer._pass
    monkeypatch.setattr(training.Trainer, "_pass", lambda self, *a, **k: passes.append(a[-1]) or real_pass(self, *a, **k))
    b = run(cfg, run_dir=tmp_path / "b", dataset=ml100k_small, quiet=True)
    assert passes == ["epoch 3 CF"]                                  # epoch 2 was not trained twice
    log = [json.loads(l) for l in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3] and all("valid" in r for r in log)
    assert b.metrics["best_epoch"] == a.metrics["best_epoch"]
    assert b.metrics["test"] == pytest.approx(a.metrics["test"], abs=1e-6)


def test_final_valid_metrics_are_the_best_epochs_own(ml100k_small, tmp_path):
    """finish() reports the validation computed when the best model was saved instead of re-running it; a fresh
    evaluation of the saved weights must give the same numbers (the assumption that saves the pass)."""
    from multikg4rec.models import build_model
    from multikg4rec.training import Trainer
    cfg = _cfg("lightgcn", tmp_path, epochs=3, eval_every=1, embedding_size=16)
    res = run(cfg, dataset=ml100k_small, quiet=True)
    best = torch.load(res.run_dir / "best_model.pt", weights_only=False)
    assert best["epoch"] == res.metrics["best_epoch"] and best["valid"] == res.metrics["valid"]
    model = build_model(cfg, ml100k_small)
    model.load_state_dict(best["model"])
    fresh = Trainer(model, ml100k_small, cfg, tmp_path / "re", quiet=True).evaluate("valid").metrics
    assert fresh == pytest.approx(res.metrics["valid"], abs=1e-9)


def test_early_stopping_uses_valid_only(ml100k_small, tmp_path):
    res = run(_cfg("bprmf", tmp_path, epochs=30, patience=2, learning_rate=0.05), dataset=ml100k_small, quiet=True)
    log = [json.loads(l) for l in (res.run_dir / "log.jsonl").read_text().splitlines()]
    best = max(log, key=lambda r: r["valid"]["ndcg@20"])
    assert res.metrics["best_epoch"] == best["epoch"]
    assert res.metrics["valid"]["ndcg@20"] == pytest.approx(best["valid"]["ndcg@20"], abs=1e-9)
    assert all("test" not in r for r in log)
    assert len(log) < 30 and len(log) - best["epoch"] == 2


# ---------------------------------------------------------------- CLI

def test_cli_train_end_to_end(data_dir, tmp_path, capsys):
    rc = main(["train", "--model", "bprmf", "--dataset", "ml-100k", "--data-dir", str(data_dir),
               "--cache-dir", str(tmp_path / "c"), "--output-dir", str(tmp_path / "runs"),
               "--epochs", "1", "--quiet", "--embedding_size", "16"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["test"]["recall@20"] < 1
    cfg = (tmp_path / "runs").rglob("config.yaml").__next__().read_text()
    assert "embedding_size: 16" in cfg


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "nope", "--dataset", "ml-100k"], "unknown model 'nope'; available: bprmf"),
    (["train", "--model", "kgatt", "--dataset", "ml-100k"], "unknown model 'kgatt' (did you mean kgat?)"),
    (["train", "--model", "bprmf", "--dataset", "ml-100k", "--lr", "0.1"], "unknown option"),
    (["train", "--model", "bprmf", "--dataset", "no-such-data"], "dataset 'no-such-data' not found"),
    (["train", "--model", "bprmf", "--dataset", "ml-100k", "--epochs"], "--epochs needs a value"),
    (["train", "--model", "kgat", "--dataset", "ml-100k", "--layers", "[64,32"],
     "layers: expected a list such as [64, 32, 16], got '[64,32'"),
    (["train", "--model", "kgat", "--dataset", "ml-100k", "--layers", "64"], "layers: expected a list"),
    (["train", "--model", "bprmf", "--dataset", "ml-100k", "--learning_rate", "fast"],
     "learning_rate: expected a number such as 0.001, got 'fast'"),
    (["train", "--model", "bprmf", "--dataset", "ml-100k", "--epochs", "2.5"], "epochs: expected a whole number"),
    (["train", "--model", "bprmf", "--dataset", "ml-100k", "--seed", "-1"], "seed: must be a whole number from 0"),
    (["train", "--model", "bprmf", "--dataset", "ml-100k", "--epochs", "0"], "epochs: must be at least 1, got 0"),
    (["train", "--model", "bprmf", "--dataset", "ml-100k", "--learning_rate", "0"], "learning_rate: must be greater"),
    (["train", "--model", "kgat", "--dataset", "ml-100k", "--mess_dropout", "1.5"], "mess_dropout: must be from 0 to 1"),
    (["train", "--model", "kgat", "--dataset", "ml-100k", "--aggregator", "max"],
     "kgat: unknown aggregator 'max'; choose one of"),
])
def test_cli_bad_input_is_one_line(data_dir, tmp_path, argv, message, capsys):
    rc = main(argv + ["--data-dir", str(data_dir), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not any(tmp_path.rglob("config.yaml"))  # nothing half-created


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "table2", "--seeds", "0"], "argument --seeds: must be at least 1, got 0"),
    (["tune", "--model", "bprmf", "--dataset", "ml-100k", "--budget", "0"], "argument --budget: must be at least 1"),
    (["train", "--model", "bprmf", "--dataset", "ml-100k", "--threads", "two"], "--threads: expected a whole number"),
])
def test_cli_counts_below_one_are_usage_errors(argv, message, capsys, tmp_path):
    """--seeds 0 used to plan an empty sweep and --budget 0 to end in 'no finished tuning runs'."""
    with pytest.raises(SystemExit) as e:
        main(argv + ["--output-dir", str(tmp_path)])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cli_kg_model_on_dataset_without_kg(data_dir, tmp_path, capsys):
    d = tmp_path / "nokg"
    d.mkdir()
    (d / "nokg.inter").write_text("user_id:token\titem_id:token\n" + "".join(
        f"{u}\t{(u + k) % 9}\n" for u in range(10) for k in range(4)))
    rc = main(["train", "--model", "kgat", "--dataset", "nokg", "--data-dir", str(tmp_path),
               "--cache-dir", str(tmp_path / "c"), "--output-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and ("needs a knowledge graph" in err or "unknown model" in err)


def test_cli_data_info(data_dir, tmp_path, capsys):
    assert main(["data", "info", "ml-1m", "--data-dir", str(data_dir), "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "users" in out and "6040" in out and "items linked to KG" in out and "2347" in out


def test_cli_help_lists_models_and_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "bprmf" in out and "lightgcn" in out and "valid_metric" in out and "--data-dir" in out
    assert "fusion_blocks" not in out                                  # a model's keys only with --model
    with pytest.raises(SystemExit):
        main(["train", "--model", "multikg4rec", "--help"])
    out = capsys.readouterr().out
    assert "valid_metric" in out and "multikg4rec keys" in out and "fusion_blocks: 3" in out
    assert "channel: a third, ID-only table" in out                   # continuation comment lines are kept


def test_peak_memory_is_per_run_not_per_process():
    """A sweep trains many runs in one process: each run's peak must start from a fresh window."""
    import numpy as np
    from multikg4rec.runtime import peak_rss_mb, reset_peak_rss
    reset_peak_rss()                             # earlier tests in this process may have peaked higher
    base = peak_rss_mb()
    big = np.ones(300 * 2 ** 20 // 8)           # ~300 MB touched
    high = peak_rss_mb()
    del big
    reset_peak_rss()
    after = peak_rss_mb()
    assert high > base + 250
    assert after < high - 200                    # the window restarted below the old peak


def test_output_piped_into_a_reader_that_left_ends_quietly(monkeypatch):
    """`multikg4rec ... | head`: once the reader has gone, exit 0 without a traceback."""
    import os
    import sys

    from multikg4rec.cli import main
    r, w = os.pipe()
    os.close(r)                                   # the reader (head) has already exited
    out = os.fdopen(w, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["models"]) == 0
    out.close()                                   # its fd now points at /dev/null: closing raises nothing


def test_recbole_compare_no_eval_trains_the_epochs_and_keeps_no_run(data_dir, tmp_path):
    """`bench/recbole/compare.py --no-eval` (timing rows: ConvNCF on ml-1m) times ours with
    `Trainer.train_epoch` alone: the epochs asked for, no evaluation, the split written for RecBole, and
    nothing left that a later real run would mistake for its own (no checkpoint, no metrics.json)."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "recbole_compare", Path(__file__).resolve().parents[1] / "bench" / "recbole" / "compare.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    cfg = load_config("bprmf", "ml-100k", overrides={
        "seed": 0, "epochs": 2, "threads": 1, "data_dir": str(data_dir), "cache_dir": str(tmp_path / "c"),
        "output_dir": str(tmp_path / "runs")})
    run_dir, m = compare._ours_timing(cfg)
    assert m["epochs_run"] == 2 and len(m["epoch_seconds"]) == 2 and min(m["epoch_seconds"]) > 0
    assert m["seconds_per_epoch"] == pytest.approx(sum(m["epoch_seconds"]) / 2, abs=1e-3)
    assert all(v is None for v in m["test"].values()) and m["best_epoch"] is None
    assert (run_dir / "split" / "ml-100k.train.inter").is_file() and (run_dir / "config.yaml").is_file()
    assert not any((run_dir / f).exists() for f in ("metrics.json", "checkpoint.pt", "best_model.pt", "log.jsonl"))
    line = compare.render("ml-100k", [{"ours": "bprmf", "recbole": "BPR", "seed": 0, "variant": "no evaluation",
                                       "ours_result": compare._slim(m), "recbole_result": None,
                                       "command": "c", "date": "d", "machine": "m"}])
    assert "| bprmf / BPR | no evaluation | 0 | ours | - | - | - | - / 2 |" in line


def test_cli_version(capsys):
    from multikg4rec import __version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(f"multikg4rec {__version__} (torch ")
