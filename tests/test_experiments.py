"""Sweeps behind `multikg4rec reproduce` / `tune`: resumable, never redo finished runs, honest tables."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from multikg4rec.cli import main
from multikg4rec.errors import UserError
from multikg4rec.experiments import GRID, collect, paired_test, table_jobs


def test_a_dataset_without_kg_gets_the_collaborative_models_only(tmp_path, caplog):
    """A user's catalogue with interactions alone: Table 2 lists the four collaborative models (with a warning
    that says so), Tables 3 and 4 (Multi-KG4Rec variants) are a one-line error."""
    from multikg4rec.experiments import KG_FREE
    rows = "".join(f"u{u}\ti{(u * 7 + k) % 40}\n" for u in range(30) for k in range(6))
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "shop.inter").write_text("user_id:token\titem_id:token\n" + rows)
    common = {"data_dir": str(tmp_path), "cache_dir": str(tmp_path / "cache")}
    jobs = table_jobs("table2", ["shop"], [0, 1], common)
    assert {j.model for j in jobs} == KG_FREE and len(jobs) == 2 * len(KG_FREE)
    assert "shop has no knowledge graph: table2 runs its collaborative models only" in caplog.text
    with pytest.raises(UserError, match="table3 compares Multi-KG4Rec variants, which need a knowledge graph"):
        table_jobs("table3", ["shop"], [0], common)


def test_table_jobs_cover_the_paper_ablations():
    common = {}
    t3 = table_jobs("table3", ["ml-1m"], [0], common)
    assert [(j.label, j.overrides["modalities"]) for j in t3] == [
        ("Multi-KG4Rec", ["image", "text"]), ("w/o v", ["text"]), ("w/o t", ["image"]), ("w/o t&v", [])]
    t3 = table_jobs("table3", ["lastfm-2k"], [0], common)                   # modalities are not fixed to v/t
    assert [(j.label, j.overrides["modalities"]) for j in t3] == [
        ("Multi-KG4Rec", ["audio", "text"]), ("w/o audio", ["text"]), ("w/o t", ["audio"]), ("w/o t&audio", [])]
    t4 = table_jobs("table4", ["ml-1m"], [0, 1], common)
    assert {j.overrides.get("fusion") for j in t4} == {"bi", "t2v", "v2t", None} and len(t4) == 8
    assert GRID["learning_rate"] == [0.05, 0.01, 0.005, 0.001]


def test_paper_tables_keep_the_recipe_of_their_archived_runs_after_a_default_changed():
    """Multi-KG4Rec's kg_loss_triples default became `kg` after every Table 2-4 / Fig. 4 run had trained with
    `ckg`: a table's jobs keep `ckg` (and so the archived run directories' names), a plain train takes the new
    default, and the command line still chooses for a table (`--kg_loss_triples kg`)."""
    import yaml

    from multikg4rec.config import config_hash, load_config
    from multikg4rec.rundir import find_run
    assert load_config("multikg4rec", "ml-1m")["kg_loss_triples"] == "kg"
    assert load_config("kgat", "ml-1m")["kg_loss_triples"] == "ckg"           # KGAT keeps its release's
    for table in ("table2", "table3", "table4"):
        for j in table_jobs(table, ["ml-1m"], [0], {}):
            if j.model != "multikg4rec":                                      # the others keep their defaults
                assert j.config({}).get("kg_loss_triples") == load_config(j.model, "ml-1m").get("kg_loss_triples")
                continue
            assert j.config({})["kg_loss_triples"] == "ckg", (table, j.label)
            assert j.config({"kg_loss_triples": "kg"})["kg_loss_triples"] == "kg"
    # Table 2's Multi-KG4Rec ml-1m seed 0 is found in the archive by its config (its directory keeps the name
    # it was archived under), and a plain train asks for another run
    job = next(j for j in table_jobs("table2", ["ml-1m"], [0], {}) if j.model == "multikg4rec")
    cfg = job.config({})
    found = find_run(cfg, Path(__file__).parents[1] / "results" / "runs")
    assert found is not None and (found / "metrics.json").is_file()
    assert yaml.safe_load((found / "config.yaml").read_text())["kg_loss_triples"] == "ckg"
    assert find_run(cfg | {"kg_loss_triples": "kg"}, found.parents[2]) != found
    assert config_hash(cfg) != config_hash(load_config("multikg4rec", "ml-1m", overrides={"seed": 0}))


def test_paired_wilcoxon_on_per_user_ndcg(tmp_path):
    class J:  # minimal job stand-in
        def __init__(self, seed): self.seed = seed
    rng = np.random.default_rng(0)
    rows_a, rows_b = [], []
    for seed in (0, 1):
        users = np.arange(300)
        base = rng.random(300)
        for rows, shift, name in ((rows_a, 0.05, "a"), (rows_b, 0.0, "b")):
            d = tmp_path / f"{name}{seed}"
            d.mkdir()
            np.savez(d / "per_user_test.npz", users=users, ndcg_at_20=base + shift + rng.normal(0, 0.01, 300))
            rows.append({"job": J(seed), "run_dir": d})
    t = paired_test(rows_a, rows_b)
    assert t["n_pairs"] == 600 and t["mean_diff"] == pytest.approx(0.05, abs=0.005) and t["p_value"] < 1e-10


def test_reproduce_sweep_is_resumable_and_tabulates(data_dir, tmp_path, capsys):
    argv = ["reproduce", "table2", "--datasets", "ml-100k", "--seeds", "2", "--models", "bprmf", "lightgcn",
            "--results", str(tmp_path / "res"), "--output-dir", str(tmp_path / "runs"), "--data-dir", str(data_dir),
            "--cache-dir", str(tmp_path / "c"), "--epochs", "1", "--embedding_size", "16"]
    assert main(argv) == 0
    out = tmp_path / "res" / "table2"
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert b"\r" not in (out / "runs.csv").read_bytes()     # the last column (run_dir) is a clean path
    assert sorted((r["model"], r["seed"]) for r in rows) == [("bprmf", "0"), ("bprmf", "1"),
                                                              ("lightgcn", "0"), ("lightgcn", "1")]
    md = (out / "table2.md").read_text()
    assert "| lightgcn | 2 |" in md and (out / "table2_ml-100k.png").is_file()
    from multikg4rec.experiments import status
    assert status("table2", tmp_path / "res").startswith("table2: 4/4 runs done; finished ")
    # a second call trains nothing: every run dir keeps its finished metrics untouched
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("metrics.json")}
    assert len(stamps) == 4
    assert main(argv) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("metrics.json")}
    # different seeds, different splits (the per-user test users differ in their relevant sets)
    r0, r1 = (json.loads(p.read_text()) for p in sorted(stamps)[:2])
    assert r0["seed"] != r1["seed"]
    # a narrower call (one model, one seed) adds to the table, it does not replace it with its own subset
    narrow = argv[:]
    narrow[narrow.index("--seeds") + 1] = "1"
    i = narrow.index("--models")
    del narrow[i + 2]                                       # --models bprmf
    assert main(narrow) == 0
    again = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["model"], r["seed"]) for r in again] == [("bprmf", "0"), ("lightgcn", "0"),
                                                        ("bprmf", "1"), ("lightgcn", "1")]
    assert "| lightgcn | 2 |" in (out / "table2.md").read_text()
    # a table never hides what it lacks: asked-for runs that have not finished show as such
    wider = argv[:]
    wider[wider.index("--seeds") + 1] = "3"
    wider.insert(wider.index("lightgcn") + 1, "spectralcf")
    assert main(wider + ["--summarize"]) == 0
    md = (out / "table2.md").read_text()
    assert "| bprmf | 2 of 3 |" in md and "| spectralcf | 0 of 3 | not run yet |" in md
    assert "Not finished yet: bprmf (2 of 3 seeds), lightgcn (2 of 3 seeds), spectralcf (0 of 3 seeds)." in md
    assert len(list(csv.DictReader(open(out / "runs.csv")))) == 4    # nothing was trained by --summarize


def test_reproduce_jobs_trains_runs_side_by_side_each_once(data_dir, tmp_path, capfd, monkeypatch):
    """`reproduce --jobs 2`: a spawned worker and this process share one sweep through the run locks; every
    run is trained by exactly one of them (one epoch in its log, not two), the worker trains some, and the
    table is written once, after both are done."""
    from multikg4rec import experiments
    monkeypatch.setattr(experiments.scheduler, "WORKER_STAGGER_S", 0.5)    # these runs take seconds, not minutes
    argv = ["reproduce", "table2", "--datasets", "ml-100k", "--seeds", "2", "--models", "bprmf", "lightgcn",
            "--results", str(tmp_path / "res"), "--output-dir", str(tmp_path / "runs"), "--data-dir", str(data_dir),
            "--cache-dir", str(tmp_path / "c"), "--epochs", "1", "--embedding_size", "16", "--jobs", "2"]
    assert main(argv) == 0
    out = capfd.readouterr()
    text = out.out + out.err
    by_worker = [line for line in text.splitlines() if line.startswith("[worker 1] trained ")]
    assert 1 <= len(by_worker) <= 3, text                   # the worker took part, and did not take them all
    logs = sorted((tmp_path / "runs").rglob("log.jsonl"))
    assert len(logs) == 4
    for log in logs:                                         # trained once: one epoch, one validation
        assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1]
    rows = list(csv.DictReader(open(tmp_path / "res" / "table2" / "runs.csv")))
    assert sorted((r["model"], r["seed"]) for r in rows) == [("bprmf", "0"), ("bprmf", "1"),
                                                              ("lightgcn", "0"), ("lightgcn", "1")]
    worker_status = json.loads((tmp_path / "res" / "table2" / "status.w1.json").read_text())
    assert worker_status["finished"] and worker_status["done"] == 4
    from multikg4rec.experiments import status
    assert status("table2", tmp_path / "res").startswith("table2: 4/4 runs done; finished ")


def test_tune_visits_grid_points_in_parallel_and_chooses_on_valid(data_dir, tmp_path):
    argv = ["tune", "--model", "bprmf", "--dataset", "ml-100k", "--budget", "2", "--jobs", "2",
            "--results", str(tmp_path / "res"), "--output-dir", str(tmp_path / "runs"), "--data-dir", str(data_dir),
            "--cache-dir", str(tmp_path / "c"), "--epochs", "1", "--embedding_size", "16"]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "res" / "tune" / "bprmf_ml-100k.csv")))
    assert len(rows) == 2 and len({(r["batch_size"], r["learning_rate"], r["reg_weight"]) for r in rows}) == 2
    import yaml
    best = yaml.safe_load((tmp_path / "res" / "tune" / "bprmf_ml-100k.best.yaml").read_text())
    assert best["_valid_ndcg@20"] == max(float(r["valid_ndcg@20"]) for r in rows) and best["_points_tried"] == 2


def test_interrupt_stops_the_whole_sweep(monkeypatch, tmp_path):
    """Ctrl-C / SIGTERM in one run must stop the sweep (the run keeps its checkpoint), not skip to the next run;
    a plain UserError (bad config for one job) is skipped."""
    from multikg4rec import experiments, training
    from multikg4rec.errors import Interrupted, UserError
    from multikg4rec.experiments import Job, run_jobs

    calls = []

    def fake_run(cfg, quiet=True):
        calls.append(cfg["model"])
        if cfg["model"] == "lightgcn":
            raise UserError("bad job")
        raise Interrupted("interrupted after epoch 3")

    monkeypatch.setattr(training, "run", fake_run)
    jobs = [Job(m, m, "ml-100k", 0) for m in ("lightgcn", "bprmf", "spectralcf")]
    status = tmp_path / "status.json"           # = results/<table>/status.json with table = tmp_path.name
    with pytest.raises(Interrupted):
        run_jobs(jobs, {"output_dir": str(tmp_path)}, status_file=status)
    assert calls == ["lightgcn", "bprmf"]               # skipped the bad one, stopped at the interrupted one
    assert json.loads(status.read_text())["done"] == 1     # the skipped job is behind, the interrupted one not
    assert "interrupted after epoch 3" in experiments.status(tmp_path.name, tmp_path.parent)
    assert experiments.Interrupted is Interrupted


def test_reproduce_fig4_writes_the_case_study(data_dir, tmp_path):
    """fig4 trains (or reads) the seed-0 Multi-KG4Rec run, then writes per-user modality shares as CSV, markdown
    and a heatmap; every share is a distribution over the modalities."""
    argv = ["reproduce", "fig4", "--datasets", "ml-100k", "--results", str(tmp_path / "res"),
            "--output-dir", str(tmp_path / "runs"), "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "c"),
            "--epochs", "1", "--features", "random", "--random_feature_dim", "16", "--embedding_size", "16",
            "--layers", "[16]", "--fusion_blocks", "1", "--fusion_heads", "2", "--threads", "1"]
    assert main(argv) == 0
    out = tmp_path / "res" / "fig4"
    rows = list(csv.DictReader(open(out / "fig4_ml-100k.csv")))
    assert len(rows) == 8 and len({r["user"] for r in rows}) == 8
    for r in rows:
        for kind in ("fusion", "score", "modality"):
            assert float(r[f"{kind}:image"]) + float(r[f"{kind}:text"]) == pytest.approx(1.0, abs=1e-5)
            assert 0 <= float(r[f"{kind}:image"]) <= 1
    assert (out / "fig4_ml-100k.png").stat().st_size > 0 and "| user |" in (out / "fig4_ml-100k.md").read_text()


def test_tables_survive_without_the_run_directories(data_dir, tmp_path):
    """results/runs/ keeps each finished run's metrics, config and per-user metrics, so a new machine (no runs/)
    re-tabulates and resumes a sweep without retraining what finished."""
    import shutil
    argv = ["reproduce", "table2", "--datasets", "ml-100k", "--seeds", "1", "--models", "bprmf",
            "--results", str(tmp_path / "res"), "--output-dir", str(tmp_path / "runs"), "--data-dir", str(data_dir),
            "--cache-dir", str(tmp_path / "c"), "--epochs", "1", "--embedding_size", "8"]
    assert main(argv) == 0
    kept = list((tmp_path / "res" / "runs").rglob("metrics.json"))
    assert len(kept) == 1
    assert {p.name for p in kept[0].parent.iterdir()} == {"metrics.json", "config.yaml", "per_user_test.npz", "log.jsonl"}
    before = (tmp_path / "res" / "table2" / "runs.csv").read_text().splitlines()[1].split(",")
    assert before[-1] == str(kept[0].parent)              # runs.csv names the archive copy, not runs/ of this machine
    before = before[:7]
    shutil.rmtree(tmp_path / "runs")                      # a fresh machine: no run directories
    assert main(argv) == 0                                # the sweep finds the archived run ...
    assert not (tmp_path / "runs").exists()               # ... and trains nothing
    after = (tmp_path / "res" / "table2" / "runs.csv").read_text().splitlines()[1].split(",")[:7]
    assert after == before


def test_compare_cli_pairs_runs_by_seed(tmp_path, capsys):
    """`multikg4rec compare`: runs matched by the seed of their config.yaml, per-user differences A - B."""
    rng = np.random.default_rng(1)

    def fake_run(name, seed, ndcg):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(f"seed: {seed}\n")
        (d / "metrics.json").write_text(json.dumps({"test": {"ndcg@20": float(ndcg.mean())}}))
        np.savez(d / "per_user_test.npz", users=np.arange(len(ndcg)), ndcg_at_20=ndcg)
        return str(d)
    base = {s: rng.random(200) for s in (0, 1)}
    a = [fake_run(f"a{s}", s, base[s] + 0.02) for s in (1, 0)]          # order does not matter
    b = [fake_run(f"b{s}", s, base[s]) for s in (0, 1)] + [fake_run("b2", 2, rng.random(200))]  # seed 2: no pair
    assert main(["compare", "--a", *a, "--b", *b]) == 0
    out = json.loads(capsys.readouterr().out)
    t = out["paired_ndcg@20_a_minus_b"]
    assert t["n_pairs"] == 400 and t["mean_diff"] == pytest.approx(0.02) and t["p_value"] < 1e-10
    assert out["a_mean"] == pytest.approx(np.mean([base[0].mean(), base[1].mean()]) + 0.02)
    assert main(["compare", "--a", a[0], "--b", str(tmp_path / "missing")]) == 2        # one-line error
    assert "is not a finished run" in capsys.readouterr().err

    # same seed, another dataset or split: users' test items differ, so pairing them is refused
    other = fake_run("other", 0, base[0])
    (tmp_path / "other" / "config.yaml").write_text("seed: 0\ndataset: ml-1m\n")
    assert main(["compare", "--a", a[1], "--b", other]) == 2
    assert "not on the same split (dataset: None vs 'ml-1m')" in capsys.readouterr().err
    for name, test_file in (("a0", "1\t5\n"), ("b0", "1\t6\n")):              # the written splits, where kept
        (tmp_path / name / "split").mkdir()
        (tmp_path / name / "split" / "None.test.inter").write_text(test_file)
    assert main(["compare", "--a", a[1], "--b", b[0]]) == 2
    assert "the written test splits differ" in capsys.readouterr().err


def test_a_run_locked_by_another_sweep_is_waited_for_not_skipped(monkeypatch, tmp_path):
    """Tables 3 and 4 share runs (the full model, w/o t&v); two sweeps side by side must not train one run
    twice nor drop it: the second sweep defers the locked run, waits for the lock, then reads the result."""
    import fcntl

    from multikg4rec import rundir, training
    from multikg4rec.errors import RunBusy
    from multikg4rec.experiments import Job, run_jobs

    jobs = [Job(m, m, "ml-100k", 0) for m in ("lightgcn", "bprmf")]
    common = {"output_dir": str(tmp_path)}
    locked = rundir.default_run_dir(jobs[0].config(common))
    locked.mkdir(parents=True)
    calls = []

    def fake_run(cfg, quiet=True):
        rd = rundir.default_run_dir(cfg)
        rd.mkdir(parents=True, exist_ok=True)
        calls.append(cfg["model"])
        with open(rd / ".lock", "a") as f:              # the lock training.run takes
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunBusy(f"{rd} is in use") from None
        return rundir.RunResult(rd, {"model": cfg["model"]})

    monkeypatch.setattr(training, "run", fake_run)
    holder = open(locked / ".lock", "a")
    fcntl.flock(holder, fcntl.LOCK_EX)                  # "the other sweep" holds lightgcn's run
    import threading
    threading.Timer(0.5, holder.close).start()          # ... and finishes it half a second later
    rows = run_jobs(jobs, common)
    assert calls == ["bprmf", "lightgcn"]   # seen locked before loading anything, deferred; the free run first
    assert [r["metrics"]["model"] for r in rows] == ["bprmf", "lightgcn"]


def test_training_refuses_a_run_directory_in_use(data_dir, tmp_path):
    import fcntl

    from multikg4rec.config import load_config
    from multikg4rec.errors import RunBusy
    from multikg4rec.rundir import default_run_dir
    from multikg4rec.training import run

    cfg = load_config("bprmf", "ml-100k", None, {"output_dir": str(tmp_path), "data_dir": str(data_dir),
                                                 "epochs": 1})
    rd = default_run_dir(cfg)
    rd.mkdir(parents=True)
    with open(rd / ".lock", "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(RunBusy, match="in use"):
            run(cfg, quiet=True)
    assert not (rd / "metrics.json").exists()


def test_status_shows_the_live_runs_epoch_and_best_valid(tmp_path):
    import os
    import time

    from multikg4rec import experiments

    rd = tmp_path / "runs" / "ml-100k" / "kgat" / "seed3-abc"
    rd.mkdir(parents=True)
    rd.joinpath("log.jsonl").write_text("\n".join(json.dumps(e) for e in [
        {"epoch": 1, "valid": {"ndcg@20": 0.20}}, {"epoch": 2, "valid": {"ndcg@20": 0.25}},
        {"epoch": 3, "valid": {"ndcg@20": 0.24}}]) + "\n")
    (tmp_path / "table2").mkdir()
    (tmp_path / "table2" / "status.json").write_text(json.dumps(
        {"running": ["KGAT", "ml-100k", 3, str(rd)], "done": 7, "total": 9, "pid": os.getpid(),
         "time": time.time() - 600}))
    line = experiments.status("table2", tmp_path)
    assert "7/9 runs done; running KGAT on ml-100k seed 3 (epoch 3, best valid NDCG@20 0.2500 at epoch 2, 10 min)" \
        in line
    assert line.endswith("sweep process alive")
    # a --jobs worker's run is listed too; a finished worker's is not
    (tmp_path / "table2" / "status.w1.json").write_text(json.dumps(
        {"running": ["KGAT", "ml-100k", 3, str(rd)], "done": 2, "total": 9, "pid": os.getpid(), "time": time.time()}))
    (tmp_path / "table2" / "status.w2.json").write_text(json.dumps(
        {"running": None, "done": 9, "total": 9, "pid": os.getpid(), "time": time.time(), "finished": True}))
    line = experiments.status("table2", tmp_path)
    assert "; worker 1: running KGAT on ml-100k seed 3 (epoch 3," in line and "worker 2" not in line


def test_convncfs_prerequisite_is_its_bprmf_run_until_that_run_has_a_checkpoint_here(tmp_path):
    """ConvNCF starts from a BPR-MF checkpoint (pretrain_path: auto); results/runs/ archives no checkpoints, so on a
    fresh machine that BPR-MF run is a prerequisite (training.run trains it first) until its checkpoint exists."""
    from multikg4rec import rundir
    from multikg4rec.experiments import Job
    from multikg4rec.models.pretrained import bprmf_config, bprmf_prerequisites as prerequisites

    cfg = Job("convncf", "convncf", "ml-100k", 3).config({"output_dir": str(tmp_path)})
    assert [(p["model"], p["seed"]) for p in prerequisites(cfg)] == [("bprmf", 3)]
    pre = rundir.default_run_dir(bprmf_config(cfg))
    assert pre.parent.name == "bprmf" and pre.name.startswith("seed3-")
    pre.mkdir(parents=True)
    (pre / "best_model.pt").write_bytes(b"")
    assert prerequisites(cfg) == []                     # present here: nothing to train
    assert prerequisites({**cfg, "pretrain_path": None}) == []


def test_a_run_whose_prerequisite_is_locked_waits_on_the_prerequisite(monkeypatch, tmp_path):
    """ConvNCF's BPR-MF initialisation being trained by another worker: the sweep defers ConvNCF and waits on
    BPR-MF's lock (ConvNCF's own run directory does not exist yet), then trains ConvNCF."""
    import fcntl
    import threading

    from multikg4rec import rundir, training
    from multikg4rec.errors import RunBusy
    from multikg4rec.experiments import Job, run_jobs
    from multikg4rec.models.pretrained import bprmf_config, bprmf_prerequisites as prerequisites

    common = {"output_dir": str(tmp_path)}
    job = Job("convncf", "convncf", "ml-100k", 1)
    pre = rundir.default_run_dir(bprmf_config(job.config(common)))
    pre.mkdir(parents=True)
    calls = []

    def fake_run(cfg, quiet=True):
        for first in prerequisites(cfg):                # as training.run: the prerequisites first
            fake_run(first)
        rd = rundir.default_run_dir(cfg)
        rd.mkdir(parents=True, exist_ok=True)
        with open(rd / ".lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunBusy(f"{rd} is in use", rd) from None
            calls.append(cfg["model"])
            if cfg["model"] == "bprmf":
                (rd / "best_model.pt").write_bytes(b"")
        return rundir.RunResult(rd, {"model": cfg["model"]})

    monkeypatch.setattr(training, "run", fake_run)
    holder = open(pre / ".lock", "a")
    fcntl.flock(holder, fcntl.LOCK_EX)                   # "another worker" trains BPR-MF seed 1 ...
    def finish():
        (pre / "best_model.pt").write_bytes(b"")         # ... and finishes it
        holder.close()
    threading.Timer(0.5, finish).start()
    rows = run_jobs([job], common)
    assert calls == ["convncf"] and [r["metrics"]["model"] for r in rows] == ["convncf"]


def test_plan_lists_what_a_sweep_still_needs_and_estimates_it_from_finished_runs(tmp_path, capsys):
    """`reproduce --plan`: finished runs (here or archived), a half-done run's remaining share, no training."""
    from multikg4rec.config import dump_config
    from multikg4rec.experiments import Job, plan
    from multikg4rec.rundir import default_run_dir

    common = {"output_dir": str(tmp_path / "runs")}
    jobs = [Job("bprmf", "bprmf", "ml-100k", s) for s in (0, 1, 2)] + [Job("kgat", "kgat", "ml-100k", 0),
                                                                       Job("d32", "bprmf", "ml-100k", 0,
                                                                           {"embedding_size": 32})]
    archive = tmp_path / "results" / "runs"
    done = archive.joinpath(*default_run_dir(jobs[0].config(common)).parts[-3:])   # seed 0: archived only
    done.mkdir(parents=True)
    dump_config(jobs[0].config(common), done / "config.yaml")                       # a run is found by its config
    (done / "metrics.json").write_text(json.dumps({"train_seconds_total": 600.0, "epochs_run": 60}))
    half = default_run_dir(jobs[1].config(common))                                  # seed 1: 30 of ~60 epochs
    half.mkdir(parents=True)
    (half / "log.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(1, 31)))
    text = plan(jobs, common, archive)
    lines = text.splitlines()
    assert lines[0] == ("5 runs: 1 finished, 4 to do; about 0.4 h of training at the speed the finished runs of the "
                        "same kind recorded, or else at a part-done run's own pace (one run per core); 1 run(s) with no "
                        "finished run of their kind to estimate from")
    assert lines[1].split() == ["bprmf", "ml-100k", "seed", "0", "finished"]
    assert lines[2].split() == ["bprmf", "ml-100k", "seed", "1", "in", "progress", "(epoch", "30)", "~5", "min"]
    assert lines[3].split() == ["bprmf", "ml-100k", "seed", "2", "to", "train", "~10", "min"]
    assert lines[4].split() == ["kgat", "ml-100k", "seed", "0", "to", "train", "(no", "estimate)"]
    # a variant with no finished run of its own (a Table-4 t2v) is estimated from the model's other labels
    assert lines[5].split() == ["d32", "ml-100k", "seed", "0", "to", "train", "~10", "min", "(from", "other",
                                "variants", "of", "the", "model)"]
    assert not (tmp_path / "runs").joinpath(*default_run_dir(jobs[2].config(common)).parts[-3:]).exists()
    # two workers: 5, 10 and 10 min runs in list order end after 15 min (5 then 10 on one, 10 on the other)
    assert "; with --jobs 2: about 0.2 h of wall time;" in plan(jobs, common, archive, n_workers=2).splitlines()[0]
    from multikg4rec.experiments.plan import _makespan
    assert _makespan([300, 600, 600], 2) == 900 and _makespan([300, 600, 600], 1) == 1500
    assert _makespan([600, 60, 60, 60], 2) == 600 and _makespan([], 3) == 0
    # the CLI prints the same plan and trains nothing
    assert main(["reproduce", "table2", "--datasets", "ml-100k", "--seeds", "1", "--models", "bprmf", "--plan",
                 "--results", str(tmp_path / "results"), "--output-dir", str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["bprmf", "ml-100k", "seed", "0", "finished"]


def test_plan_bounds_a_part_done_run_of_a_new_kind_from_its_own_log(tmp_path):
    """The first run of a model on a dataset (ConvNCF on ml-1m), part-way: no finished run to copy, so the plan
    bounds what is left from the run's own epochs: epochs left to the cap x its mean epoch, plus, once it has
    validated, its mean validation x (validations left + the test pass)."""
    from multikg4rec.experiments import Job, plan
    from multikg4rec.rundir import default_run_dir

    common = {"output_dir": str(tmp_path / "runs")}
    job = Job("kgat", "kgat", "ml-100k", 0, {"epochs": 10, "eval_every": 5})
    rd = default_run_dir(job.config(common))
    rd.mkdir(parents=True)
    log = [{"epoch": 1, "train_seconds": 50.0}, {"epoch": 2, "train_seconds": 70.0}]
    (rd / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    line = plan([job], common).splitlines()[1]
    assert "<= ~8 min (its own epochs x 8 left to its cap; validations not timed yet" in line   # 8 x 60 s
    log += [{"epoch": e, "train_seconds": 60.0} for e in (3, 4)] + [{"epoch": 5, "train_seconds": 60.0,
                                                                     "eval_seconds": 120.0}]
    (rd / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    text = plan([job], common)
    # 5 epochs x 60 s + (the validation after epoch 10 + the test) x 120 s = 540 s
    assert "<= ~9 min (its own epochs and validations, 5 epochs left to its cap)" in text.splitlines()[1]
    assert "about 0.1 h of training" in text.splitlines()[0] and "no finished run" not in text
    # another seed of the same kind, not started: a whole run at that run's pace, 10 x 60 + (2 + 1) x 120 s
    text = plan([job, Job("kgat", "kgat", "ml-100k", 1, {"epochs": 10, "eval_every": 5})], common)
    assert text.splitlines()[2].split()[4:9] == ["to", "train", "<=", "~16", "min"]
    assert f"(at the pace of {rd.name}: its epochs and validations, 10 epochs left" in text.splitlines()[2]


def test_archived_result_wins_over_a_run_retrained_here_and_the_difference_is_reported(tmp_path, caplog):
    """A run re-trained under the same name (the RecBole check does this) must not change a committed table
    silently: the archive copy is read, a warning names both NDCG@20 values; without a difference, no warning;
    a run finished only here is read from here."""
    from multikg4rec.config import dump_config
    from multikg4rec.experiments import Job, collect
    from multikg4rec.rundir import default_run_dir

    common = {"output_dir": str(tmp_path / "runs")}
    jobs = [Job("bprmf", "bprmf", "ml-100k", s) for s in (0, 1, 2)]
    archive = tmp_path / "results" / "runs"

    def finish(d, ndcg, cfg):
        d.mkdir(parents=True)
        dump_config(cfg, d / "config.yaml")                # a run is found by the config it stores
        (d / "metrics.json").write_text(json.dumps({"test": {"ndcg@20": ndcg}}))

    cfgs = [j.config(common) for j in jobs]
    local = [default_run_dir(c) for c in cfgs]
    kept = [archive.joinpath(*d.parts[-3:-1], d.name + "-archived") for d in local]   # any name: found by config
    finish(local[0], 0.2506, cfgs[0]), finish(kept[0], 0.2467, cfgs[0])      # seed 0: re-trained here, differs
    finish(local[1], 0.30, cfgs[1]), finish(kept[1], 0.30, cfgs[1])          # seed 1: re-trained here, same result
    finish(local[2], 0.28, cfgs[2])                                          # seed 2: only here
    with caplog.at_level("WARNING", logger="multikg4rec.experiments"):
        rows = collect(jobs, common, archive)
    assert [r["run_dir"] for r in rows] == [kept[0], kept[1], local[2]]
    assert [r["metrics"]["test"]["ndcg@20"] for r in rows] == [0.2467, 0.30, 0.28]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "0.2506" in warnings[0] and "0.2467" in warnings[0] and str(kept[0]) in warnings[0]
