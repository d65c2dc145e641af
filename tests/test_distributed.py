"""Data-parallel training under torchrun with 2 CPU ranks (gloo): a real launch of `multikg4rec train --nproc 2`
on ml-100k; its sharded evaluation is one process's evaluation of the same checkpoint, to every digit; an
interrupted 2-rank run resumes to the uninterrupted result; gradients are averaged over the ranks that had a
batch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

SMALL = ["--embedding_size", "16", "--layers", "[16]", "--kg_embedding_size", "16", "--batch_size", "4096",
         "--kg_batch_size", "8192", "--quiet"]


def _train(tmp: Path, data_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "multikg4rec", "train", "--model", "kgat", "--dataset", "ml-100k", "--nproc", "2",
           "--data-dir", str(data_dir), "--cache-dir", str(tmp / "cache"), "--output-dir", str(tmp / "runs"),
           *SMALL, *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)


def _finish(p: subprocess.Popen, timeout: int = 600) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out.decode(), err.decode()


@pytest.fixture(scope="module")
def two_rank_run(data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    rc, out, err = _finish(_train(tmp, data_dir, "--epochs", "3"))
    assert rc == 0, err[-3000:]
    return tmp, Path(json.loads(out)["run_dir"])


def test_two_ranks_train_one_run_written_by_rank_0(two_rank_run):
    _, run = two_rank_run
    import yaml
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    m = json.loads((run / "metrics.json").read_text())
    assert cfg["world_size"] == 2 and m["world_size"] == 2 and len(m["peak_rss_mb_per_rank"]) == 2
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]                  # one log, not one per rank
    assert m["n_test_users"] > 900


def test_sharded_evaluation_is_one_process_evaluation_of_the_same_checkpoint(two_rank_run):
    from multikg4rec.evaluation import Evaluator
    from multikg4rec.rundir import load_run
    _, run = two_rank_run
    model, ds, cfg = load_run(run)                                  # the best epoch, in this one process
    model.eval()
    with torch.no_grad():
        model.prepare_eval()
        res = Evaluator(ds.n_items, ks=tuple(cfg["topk"]), batch_size=cfg["eval_batch_size"]).evaluate(
            model.full_sort_predict, ds.csr("test"), [ds.csr("train"), ds.csr("valid")], return_per_user=True)
    m = json.loads((run / "metrics.json").read_text())
    assert res.metrics == m["test"]                                 # every metric, every digit
    per = np.load(run / "per_user_test.npz")
    assert np.array_equal(per["ndcg_at_20"], res.per_user["ndcg@20"])


def test_an_interrupted_two_rank_run_resumes_to_the_uninterrupted_result(two_rank_run, data_dir, tmp_path):
    tmp, done = two_rank_run
    import shutil
    shutil.copytree(tmp / "cache", tmp_path / "cache")
    p = _train(tmp_path, data_dir, "--epochs", "3")
    log = None
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:               # stop it once epoch 1 is logged
        logs = list((tmp_path / "runs").glob("ml-100k/kgat/*/log.jsonl"))
        if logs and logs[0].read_text().strip():
            log = logs[0]
            break
        time.sleep(0.2)
    assert log is not None, "the run never logged an epoch"
    os.killpg(p.pid, signal.SIGINT)
    rc, _, err = _finish(p)
    assert rc != 0 and not (log.parent / "metrics.json").exists(), err[-2000:]
    assert (log.parent / "checkpoint.pt").is_file()
    rc, out, err = _finish(_train(tmp_path, data_dir, "--epochs", "3"))
    assert rc == 0, err[-3000:]
    a = json.loads((done / "metrics.json").read_text())
    b = json.loads((log.parent / "metrics.json").read_text())
    assert b["epochs_run"] == 3 and b["test"] == a["test"]


def _grad_worker(rank: int, port: int, out) -> None:
    import torch.distributed as dist
    from multikg4rec import distributed
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    used, unused, half = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    used.grad = torch.full((3,), 2.0 if rank == 0 else 4.0)            # both ranks: mean 3
    half.grad = torch.ones(3) if rank == 0 else None                   # one rank touched it: (1 + 0) / 2
    bad = distributed.average_gradients([used, unused, half], active=True, bad=rank == 1)
    out.put((rank, used.grad.tolist(), unused.grad, half.grad.tolist(), bad))
    used.grad = torch.full((3,), 2.0) if rank == 0 else None
    distributed.average_gradients([used], active=rank == 0)            # rank 1 had no batch in this step
    out.put((rank, used.grad.tolist()))
    dist.destroy_process_group()


def test_gradients_are_averaged_over_the_ranks_that_had_a_batch():
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_grad_worker, args=(r, port, q)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = [q.get(timeout=120) for _ in range(4)]
    for p in procs:
        p.join(timeout=60)
    first = sorted(g for g in got if len(g) == 5)
    assert all(g[1] == [3.0] * 3 and g[2] is None and g[3] == [0.5] * 3 and g[4] is True for g in first)
    assert sorted(g for g in got if len(g) == 2) == [(0, [2.0] * 3), (1, [2.0] * 3)]
