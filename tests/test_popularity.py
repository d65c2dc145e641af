"""The sparse-item table: a re-trained run lends its breakdown to the archived run only when the two agree on
every test metric, and the archived breakdowns recompute from the archived ranking and the split."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from multikg4rec.config import load_config
from multikg4rec.experiments.jobs import table_job
from multikg4rec.experiments.popularity import KEY, adopt, missing, summarize_popularity
from multikg4rec.rundir import default_run_dir

REPO = Path(__file__).resolve().parents[1]
BREAKDOWN = {"1-5": {"ndcg@20": 0.1, "recall@20": 0.2, "users": 3, "items": 4},
             ">100": {"ndcg@20": 0.5, "recall@20": 0.6, "users": 9, "items": 2}}


def _run(root: Path, cfg: dict, test: dict, breakdown: dict | None = None) -> Path:
    d = default_run_dir({**cfg, "output_dir": str(root)})
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "metrics.json").write_text(json.dumps({"test": test, **({KEY: breakdown} if breakdown else {})}))
    return d


@pytest.fixture
def setting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = table_job("bprmf", "bprmf", "ml-100k", 0)
    common = {"output_dir": str(tmp_path / "runs")}
    cfg = job.config(common)
    return job, common, cfg, tmp_path / "archive", tmp_path / "runs"


def test_a_rerun_with_equal_test_metrics_adds_its_breakdown_to_the_archived_run(setting):
    job, common, cfg, archive, local = setting
    kept = _run(archive, cfg, {"ndcg@20": 0.25})
    assert missing([job], common, archive) == [job]                 # archived without the breakdown
    _run(local, cfg, {"ndcg@20": 0.25}, BREAKDOWN)
    assert missing([job], common, archive) == []                    # the local re-run has it
    assert adopt([job], common, archive) == []
    assert json.loads((kept / "metrics.json").read_text())[KEY] == BREAKDOWN


def test_a_rerun_that_differs_lends_nothing_and_is_reported(setting):
    job, common, cfg, archive, local = setting
    kept = _run(archive, cfg, {"ndcg@20": 0.25})
    _run(local, cfg, {"ndcg@20": 0.2500001}, BREAKDOWN)
    problems = adopt([job], common, archive)
    assert len(problems) == 1 and "differs" in problems[0] and "0.2500001" in problems[0]
    assert KEY not in json.loads((kept / "metrics.json").read_text())


def test_the_table_bolds_the_best_model_per_bucket_and_lists_bucket_sizes(setting, tmp_path):
    job, *_ = setting
    other = table_job("lightgcn", "lightgcn", "ml-100k", 0)
    better = {b: {**v, "ndcg@20": v["ndcg@20"] + 0.1, "recall@20": v["recall@20"] + 0.1} for b, v in BREAKDOWN.items()}
    rows = [{"job": job, "metrics": {KEY: BREAKDOWN}}, {"job": other, "metrics": {KEY: better}}]
    md = summarize_popularity(rows, tmp_path / "out")
    assert "1-5: 4 items, 3 users" in md
    ndcg, recall = [x for x in md.splitlines() if x.startswith("| lightgcn |")]
    assert ndcg == "| lightgcn | 1 | **0.2000** |  |  | **0.6000** |"
    assert recall == "| lightgcn | 1 | **0.3000** |  |  | **0.7000** |"
    assert not any("**" in x for x in md.splitlines() if x.startswith("| bprmf |"))


ARCHIVED = sorted(p.parent for p in (REPO / "results" / "runs").glob("*/*/*/topk.tsv")
                  if KEY in json.loads(p.with_name("metrics.json").read_text()))


@pytest.mark.parametrize("run_dir", ARCHIVED[:3], ids=lambda p: "/".join(p.parts[-3:]))
def test_an_archived_breakdown_recomputes_from_its_ranking_and_the_split(run_dir, data_dir):
    from multikg4rec.data import load_dataset
    from multikg4rec.evaluation import metrics_by_popularity
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg = load_config(cfg["model"], cfg["dataset"], None, {k: v for k, v in cfg.items() if k not in ("model", "dataset")})
    ds = load_dataset(cfg["dataset"], cfg, data_dir=data_dir)
    item = {t: k for k, t in enumerate(ds.item_tokens)}
    user = {t: k for k, t in enumerate(ds.user_tokens)}
    lines = [ln.split("\t") for ln in (run_dir / "topk.tsv").read_text().splitlines()]
    users = np.array([user[ln[0]] for ln in lines])
    topk = np.full((len(lines), 20), -1)
    for r, ln in enumerate(lines):
        ids = [item[t] for t in ln[1:21]]
        topk[r, :len(ids)] = ids
    got = metrics_by_popularity(topk, users, sp.csr_matrix(ds.csr("test")), np.bincount(ds.train[:, 1], minlength=ds.n_items))
    want = json.loads((run_dir / "metrics.json").read_text())[KEY]
    assert got.keys() == want.keys()
    for b in want:
        assert got[b]["ndcg@20"] == pytest.approx(want[b]["ndcg@20"], abs=1e-12)
        assert got[b]["recall@20"] == pytest.approx(want[b]["recall@20"], abs=1e-12)
