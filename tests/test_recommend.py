"""`multikg4rec recommend`: top-K from a trained run, by original ids."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from multikg4rec.cli import main


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    """A BPR-MF run trained for one epoch on the real ml-100k (its topk.tsv is the trainer's test ranking)."""
    tmp = tmp_path_factory.mktemp("rec")
    assert main(["train", "--model", "bprmf", "--dataset", "ml-100k", "--data-dir", str(data_dir),
                 "--cache-dir", str(tmp / "c"), "--output-dir", str(tmp / "runs"), "--epochs", "1", "--quiet",
                 "--embedding_size", "16"]) == 0
    return next((tmp / "runs").rglob("metrics.json")).parent


def test_test_protocol_reproduces_the_trainers_topk(run_dir):
    """exclude=train+valid is the evaluator's test ranking: every test user's list equals topk.tsv's head."""
    from multikg4rec.recommend import recommend
    topk = {}
    for line in (run_dir / "topk.tsv").read_text().splitlines():
        user, *items = line.split("\t")
        topk[user] = items[:10]
    recs = recommend(run_dir, users=list(topk), k=10, exclude="train+valid", labels=False)
    got = recs.groupby("user", sort=False)["item"].apply(list).to_dict()
    assert len(got) == len(topk) > 900
    assert all(got[u] == topk[u] for u in topk)
    assert (recs.groupby("user")["rank"].apply(list) == [list(range(1, 11))] * len(got)).all()


def test_default_leaves_out_every_known_item_and_ranks_like_a_plain_argsort(run_dir):
    from multikg4rec.rundir import load_run
    from multikg4rec.recommend import recommend
    model, ds, _ = load_run(run_dir)
    users = [str(t) for t in ds.user_tokens[[0, 5, 99]]]
    recs = recommend(run_dir, users=users, k=20, dataset=ds)
    assert "label" in recs.columns and recs["label"].str.contains(r"\(\d{4}\)").all()   # "Title (1995). Genres..."
    seen = (ds.csr("train") + ds.csr("valid") + ds.csr("test")).toarray() > 0
    model.eval()
    model.prepare_eval()
    for u in (0, 5, 99):
        s = model.full_sort_predict(torch.tensor([u]))[0].detach().double().numpy()
        s[seen[u]] = -np.inf
        want = np.lexsort((np.arange(len(s)), -s))[:20]              # score descending, ties to the lower id
        mine = recs[recs.user == str(ds.user_tokens[u])]
        assert mine["item"].tolist() == [str(t) for t in ds.item_tokens[want]]
        assert np.allclose(mine["score"].to_numpy(), s[want], rtol=1e-6)
        assert not seen[u][want].any()


def test_cli_prints_tsv_and_bad_users_are_one_line(run_dir, capsys):
    assert main(["recommend", "--run", str(run_dir), "--users", "1", "42", "--k", "3", "--no-labels"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["user", "rank", "item", "score"]
    assert [ln.split("\t")[:2] for ln in lines[1:]] == [["1", "1"], ["1", "2"], ["1", "3"],
                                                         ["42", "1"], ["42", "2"], ["42", "3"]]
    for argv, message in ((["--users", "1", "no-such-user"], "1 user id(s) not in dataset 'ml-100k'"),
                          ([], "name the users")):
        assert main(["recommend", "--run", str(run_dir), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
