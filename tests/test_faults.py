"""The fault suite: bad inputs and faults a user is likely to meet, each through the real CLI.

Every case asserts the exit code, that the message is ONE line naming the culprit (no traceback reaches the
user: an uncaught exception would fail the test), and, where something was saved before, that nothing saved
was changed. The table of cases is `docs/reliability.md`; keep the two in step (a test checks the count).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from multikg4rec.cli import main

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures

def _write_tiny(src: Path, dst: Path, n_users: int = 120) -> Path:
    """A small real dataset folder in atomic files: the first ``n_users`` ml-100k users, their items' links and
    the KG triples touching those items' entities, and the item titles."""
    import pandas as pd
    dst.mkdir(parents=True)
    inter = pd.read_csv(src / "ml-100k.inter", sep="\t", dtype=str)
    users = sorted(inter.iloc[:, 0].unique(), key=int)[:n_users]
    inter = inter[inter.iloc[:, 0].isin(users)]
    inter.to_csv(dst / "tiny.inter", sep="\t", index=False)
    link = pd.read_csv(src / "ml-100k.link", sep="\t", dtype=str)
    link = link[link.iloc[:, 0].isin(set(inter.iloc[:, 1]))]
    link.to_csv(dst / "tiny.link", sep="\t", index=False)
    kg = pd.read_csv(src / "ml-100k.kg", sep="\t", dtype=str)
    ents = set(link.iloc[:, 1])
    kg = kg[kg.iloc[:, 0].isin(ents) | kg.iloc[:, 2].isin(ents)].head(3000)
    kg.to_csv(dst / "tiny.kg", sep="\t", index=False)
    return dst


@pytest.fixture(scope="module")
def world(data_dir, tmp_path_factory):
    """A tiny data folder and two finished runs on it (BPR-MF, and Multi-KG4Rec with random features)."""
    root = tmp_path_factory.mktemp("faults")
    data = root / "data"
    _write_tiny(data_dir / "ml-100k", data / "tiny")
    common = ["--dataset", "tiny", "--data-dir", str(data), "--cache-dir", str(root / "cache"), "--output-dir",
              str(root / "runs"), "--epochs", "2", "--quiet", "--embedding_size", "8", "--threads", "1"]
    assert main(["train", "--model", "bprmf", *common]) == 0
    assert main(["train", "--model", "multikg4rec", *common, "--features", "random", "--modalities", "[image,text]",
                 "--layers", "[8]", "--fusion_blocks", "1", "--fusion_heads", "2", "--fusion_ffn_dim", "8",
                 "--random_feature_dim", "16", "--seq_len", "4", "--fusion_items", "16",
                 "--kg_batch_size", "1024"]) == 0
    runs = {p.parent.parent.name: p.parent for p in (root / "runs").rglob("metrics.json")}
    return {"root": root, "data": data, "common": common, "bprmf": runs["bprmf"], "mkr": runs["multikg4rec"]}


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(Path(d).rglob("*")) if p.is_file() and p.name != ".lock"}


def _run(argv, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return rc, err


def _one_line(err: str, *names: str) -> str:
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    assert "Traceback" not in err
    for n in names:
        assert n in lines[0], f"{n!r} not named in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def copy_of(world, tmp_path):
    """A copy of one of the world's runs, to damage."""
    def make(which: str) -> Path:
        dst = tmp_path / "runs" / which
        shutil.copytree(world[which], dst)
        return dst
    return make


# --------------------------------------------------------------------------- damaged run files

DAMAGE = {
    "empty": b"",
    "truncated": None,                    # the first half of the real file
    "random bytes": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    "text": b"this is not what you think it is\n",
}


def _damage(path: Path, how: str) -> None:
    data = DAMAGE[how]
    if data is None:
        data = path.read_bytes()[: max(1, path.stat().st_size // 2)]
    path.write_bytes(data)


@pytest.mark.parametrize("how", list(DAMAGE))
@pytest.mark.parametrize("name", ["best_model.pt", "config.yaml", "dataset.npz"])
def test_recommend_on_a_damaged_run_file_is_one_line_and_changes_nothing(name, how, copy_of, capsys):
    run = copy_of("bprmf")
    _damage(run / name, how)
    if name == "config.yaml" and how == "text":
        (run / name).write_text("just a sentence\n")       # valid YAML, but not a mapping
    before = _snapshot(run)
    rc, err = _run(["recommend", "--run", run, "--users", "1", "--k", "3"], capsys)
    assert rc == 2
    _one_line(err, name)
    assert _snapshot(run) == before


@pytest.mark.parametrize("how", list(DAMAGE))
def test_explain_on_a_damaged_features_file_is_one_line(how, copy_of, capsys):
    run = copy_of("mkr")
    np.savez(run / "features.npz", **{"mask:text": np.ones(3, bool), "rows:text": np.ones((3, 4), np.float32)})
    _damage(run / "features.npz", how)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("features: random", "features: null"))
    before = _snapshot(run)
    rc, err = _run(["explain", "--run", run, "--user", "1"], capsys)
    assert rc == 2
    _one_line(err, "features.npz")
    assert _snapshot(run) == before


@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_finished_run_with_damaged_metrics_is_one_line(how, world, copy_of, capsys):
    run = copy_of("bprmf")
    _damage(run / "metrics.json", how)
    before = _snapshot(run)
    rc, err = _run(["train", "--model", "bprmf", *world["common"], "--run-dir", run], capsys)
    assert rc == 2
    _one_line(err, "metrics.json")
    assert _snapshot(run) == before
    rc, err = _run(["compare", "--a", run, "--b", world["bprmf"]], capsys)
    assert rc == 2
    _one_line(err, "metrics.json")


@pytest.mark.parametrize("how", list(DAMAGE))
def test_resuming_from_a_damaged_checkpoint_is_one_line_and_keeps_the_best_model(how, world, copy_of, capsys):
    run = copy_of("bprmf")
    (run / "metrics.json").unlink()                      # unfinished: the next train resumes from checkpoint.pt
    _damage(run / "checkpoint.pt", how)
    before = _snapshot(run)
    rc, err = _run(["train", "--model", "bprmf", *world["common"], "--run-dir", run], capsys)
    assert rc == 2
    _one_line(err, "checkpoint.pt", "--restart")
    assert _snapshot(run) == before


def test_a_directory_where_the_best_model_should_be_is_one_line(copy_of, capsys):
    run = copy_of("bprmf")
    (run / "best_model.pt").unlink()
    (run / "best_model.pt").mkdir()
    rc, err = _run(["recommend", "--run", run, "--users", "1"], capsys)
    assert rc == 2
    _one_line(err, "best_model.pt")


def test_a_run_without_weights_and_a_folder_that_is_no_run(copy_of, tmp_path, capsys):
    run = copy_of("bprmf")
    (run / "best_model.pt").unlink()
    (run / "checkpoint.pt").unlink()
    rc, err = _run(["recommend", "--run", run, "--users", "1"], capsys)
    assert rc == 2 and "train the run first" in _one_line(err, str(run))
    rc, err = _run(["recommend", "--run", tmp_path, "--users", "1"], capsys)
    assert rc == 2 and "not a run directory" in _one_line(err, str(tmp_path))
    (tmp_path / "afile").write_text("x")
    rc, err = _run(["explain", "--run", tmp_path / "afile", "--user", "1"], capsys)
    assert rc == 2 and "is a file" in _one_line(err, "afile")


# --------------------------------------------------------------------------- a run knows its data

def test_a_copied_run_recommends_and_explains_with_its_data_folder_gone(world, tmp_path, capsys):
    """The run keeps its own data (dataset.npz): copied elsewhere, the data folder moved away, it still answers,
    and the same items as in place."""
    want_rc, _ = _run(["recommend", "--run", world["bprmf"], "--users", "1", "7", "--k", "5", "--no-labels"], capsys)
    assert want_rc == 0
    rc = main(["recommend", "--run", str(world["bprmf"]), "--users", "1", "7", "--k", "5", "--no-labels"])
    want = capsys.readouterr().out
    data = world["data"]
    moved = tmp_path / "moved-data"
    shutil.move(str(data), str(moved))
    try:
        for which in ("bprmf", "mkr"):
            dst = tmp_path / "elsewhere" / which
            shutil.copytree(world[which], dst)
            assert main(["recommend", "--run", str(dst), "--users", "1", "7", "--k", "5", "--no-labels"]) == 0
            out = capsys.readouterr().out
            if which == "bprmf":
                assert out == want and rc == 0
        assert main(["explain", "--run", str(tmp_path / "elsewhere" / "mkr"), "--user", "7",
                     "--out", str(tmp_path / "x")]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["user_token"] == "7" and abs(sum(rep["modality"].values()) - 1) < 1e-6
    finally:
        shutil.move(str(moved), str(data))


def _changed_copy(world, tmp_path, change: str) -> Path:
    """A copy of the world's data folder with one change a catalogue sees: an item renamed, rows added/removed."""
    dst = tmp_path / "changed"
    shutil.copytree(world["data"], dst)
    f = dst / "tiny" / "tiny.inter"
    lines = f.read_text().splitlines()
    if change == "item renamed":
        item = lines[1].split("\t")[1]
        lines = [ln if ln.split("\t")[1] != item else "\t".join([ln.split("\t")[0], "renamed-" + item,
                                                                 *ln.split("\t")[2:]]) for ln in lines]
    elif change == "rows added":
        lines += ["\t".join(["9999", lines[1].split("\t")[1], "5", "1"])] * 1 + \
                 ["\t".join(["9999", lines[k].split("\t")[1], "5", "1"]) for k in (2, 3, 4)]
    else:                                                 # rows removed
        lines = lines[:1] + lines[40:]
    f.write_text("\n".join(lines) + "\n")
    return dst


@pytest.mark.parametrize("change", ["item renamed", "rows added", "rows removed"])
def test_a_run_never_answers_from_a_changed_catalogue(change, world, tmp_path, capsys):
    """After the catalogue changes, a run's answers do not move (it uses its own data copy), a run made before
    runs kept their data is refused with one line instead of shifted ids, and resuming onto it is refused."""
    changed = _changed_copy(world, tmp_path, change)
    main(["recommend", "--run", str(world["bprmf"]), "--users", "7", "--k", "5", "--no-labels"])
    want = capsys.readouterr().out
    assert main(["recommend", "--run", str(world["bprmf"]), "--users", "7", "--k", "5", "--no-labels",
                 "--data-dir", str(changed)]) == 0
    assert capsys.readouterr().out == want
    legacy = tmp_path / "legacy"
    shutil.copytree(world["bprmf"], legacy)
    for f in ("dataset.npz", "data.json"):
        (legacy / f).unlink()                             # as a run from before runs kept their data
    before = _snapshot(legacy)
    rc, err = _run(["recommend", "--run", legacy, "--users", "7", "--data-dir", changed], capsys)
    assert rc == 2 and "other data" in _one_line(err, str(legacy))
    assert _snapshot(legacy) == before
    unfinished = tmp_path / "unfinished"
    shutil.copytree(world["bprmf"], unfinished)
    (unfinished / "metrics.json").unlink()
    before = _snapshot(unfinished)
    argv = ["train", "--model", "bprmf", *world["common"], "--run-dir", unfinished]
    argv[argv.index("--data-dir") + 1] = str(changed)
    rc, err = _run(argv, capsys)
    assert rc == 2 and "--restart" in _one_line(err, str(unfinished), "other data")
    assert _snapshot(unfinished) == before


def test_a_dataset_passed_to_the_python_api_must_be_the_runs(world, tmp_path):
    from multikg4rec.data import load_dataset
    from multikg4rec.errors import UserError
    from multikg4rec.rundir import load_run
    changed = _changed_copy(world, tmp_path, "item renamed")
    ds = load_dataset("tiny", {"rating_threshold": 3, "seed": 2024}, data_dir=changed, cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="other data.*items: .*gone"):
        load_run(world["bprmf"], dataset=ds)


# --------------------------------------------------------------------------- output paths

def test_output_paths_that_cannot_be_written_are_one_line(world, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    rec = ["recommend", "--run", world["bprmf"], "--users", "1", "--k", "3"]
    cases = [
        (rec + ["--out", tmp_path / "missing" / "recs.tsv"], 1, "missing"),       # parent missing
        (rec + ["--out", a_file / "recs.tsv"], 1, "a-file"),                      # parent is a file
        (rec + ["--out", tmp_path], 1, str(tmp_path)),                            # a folder where a file goes
        (rec + ["--out", "/dev/full"], 1, "disk is full"),                        # the disk is full
        (["train", "--model", "bprmf", *world["common"][:-9], "--output-dir", a_file, "--epochs", "1", "--quiet"],
         1, "a-file"),                                                             # output root is a file
        (["train", "--model", "bprmf", *world["common"], "--run-dir", a_file], 2, "a-file"),
        (["explain", "--run", world["mkr"], "--user", "1", "--out", a_file], 1, "a-file"),
        (["reproduce", "table2", "--datasets", "tiny", "--seeds", "1", "--summarize", "--results", a_file], 1,
         "a-file"),
    ]
    for argv, code, name in cases:
        rc, err = _run(argv, capsys)
        assert rc == code, (argv, err)
        _one_line(err, name)
    assert a_file.read_text() == "x"


# --------------------------------------------------------------------------- bad data

def _dataset_folder(tmp_path, inter: bytes | str, kg: str | None = None, link: str | None = None) -> Path:
    d = tmp_path / "bad" / "mine"
    d.mkdir(parents=True)
    (d / "mine.inter").write_bytes(inter if isinstance(inter, bytes) else inter.encode())
    if kg is not None:
        (d / "mine.kg").write_text(kg)
    if link is not None:
        (d / "mine.link").write_text(link)
    return d.parent


def _inter(n_users=6, n_items=8) -> str:
    rows = [f"u{u}\ti{(u + k) % n_items}" for u in range(n_users) for k in range(5)]
    return "user_id:token\titem_id:token\n" + "\n".join(rows) + "\n"


@pytest.mark.parametrize("content, needle", [
    (b"user_id:token\titem_id:token\nu1\ti1\nu2\t\xe9t\xe9\n", "mine.inter:3: not UTF-8"),
    (b"\xff\xfeuser_id:token\titem_id:token\n", "mine.inter:1: not UTF-8"),
    ("user item\nu1 i1\n", "header field"),
    ("user_id:token\titem_id:token\nu1\ti1\tEXTRA\n", "mine.inter:2: malformed line"),
    ("", "empty file"),
    ("user_id:token\tthing:token\nu1\ti1\n", "missing required column"),
    ("user_id:token\titem_id:token\nu1\ti1\nu2\ti2\n", "nothing to validate or test on"),
], ids=["non-utf8 line 3", "utf16 bom", "no types in header", "extra field", "empty", "no item column",
        "too few interactions"])
def test_bad_interaction_files_are_one_line_naming_file_and_line(content, needle, tmp_path, capsys):
    root = _dataset_folder(tmp_path, content)
    rc, err = _run(["train", "--model", "bprmf", "--dataset", "mine", "--data-dir", root, "--cache-dir",
                    tmp_path / "c", "--output-dir", tmp_path / "runs", "--epochs", "1", "--quiet"], capsys)
    assert rc == 2
    _one_line(err, needle)
    assert not (tmp_path / "runs").exists()              # nothing made before the input was checked


def test_a_kg_that_touches_no_item_and_links_to_missing_items_are_warned(tmp_path, caplog):
    from multikg4rec.data import load_dataset
    kg = "head_id:token\trelation_id:token\ttail_id:token\ne1\tr\te2\ne2\tr\te3\n"
    link = "item_id:token\tentity_id:token\ni0\tx0\ni1\tx1\nnope\tx9\n"
    root = _dataset_folder(tmp_path, _inter(), kg, link)
    with caplog.at_level("WARNING"):
        ds = load_dataset("mine", {"seed": 0}, data_dir=root, cache_dir=tmp_path / "c")
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "none of the KG's 2 triples touches an item" in text
    assert "1 of 3 item->entity links name items absent" in text
    assert ds.stats()["items in a KG triple"] == 0


@pytest.mark.parametrize("argv, needle", [
    (["--dataset", "no-such-dataset"], "no-such-dataset"),
    (["--dataset", "empty"], "empty"),
])
def test_missing_datasets_are_one_line(argv, needle, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, err = _run(["train", "--model", "bprmf", *argv, "--data-dir", tmp_path, "--output-dir", tmp_path / "r"],
                   capsys)
    assert rc == 2
    _one_line(err, needle)


# --------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("extra, needle", [
    (["--split_ratio", "[0.8,0.2]"], "split_ratio"),
    (["--split_ratio", "[0.8,0.3,0.1]"], "split_ratio"),
    (["--split_ratio", "[1.2,-0.1,-0.1]"], "split_ratio"),
    (["--split_ratio", "[0,0.5,0.5]"], "split_ratio"),
    (["--valid_metric", "auc@20"], "valid_metric"),
    (["--valid_metric", "ndcg@30"], "valid_metric"),
    (["--valid_metric", "ndcg"], "valid_metric"),
    (["--topk", "[]"], "topk"),
    (["--topk", "[10,x]"], "topk"),
    (["--layers", "[64,0]"], "layers"),
    (["--learning_rate", "0"], "learning_rate"),
    (["--learning_rate", "fast"], "learning_rate"),
    (["--epochs", "0"], "epochs"),
    (["--batch_size", "2.5"], "batch_size"),
    (["--seed", "-1"], "seed"),
    (["--mess_dropout", "1.5"], "mess_dropout"),
    (["--no_such_key", "1"], "no_such_key"),
    (["--layer", "[64]"], "did you mean layers"),
    (["--device", "gpu0"], "device"),
    (["--modalities", "[1,2]"], "unknown option"),       # KGAT has no modalities
    (["--kg_loss_triples", "some"], "kg_loss_triples"),
    (["--epochs"], "--epochs needs a value"),
], ids=lambda v: v if isinstance(v, str) else "_".join(v))
def test_bad_configuration_fails_at_start_up_naming_the_key(extra, needle, world, tmp_path, capsys):
    common = [a for a in world["common"] if a != "--quiet"]
    common = common[:common.index("--output-dir") + 1] + [str(tmp_path / "runs")]
    rc, err = _run(["train", "--model", "kgat", *common, *extra], capsys)
    assert rc == 2
    _one_line(err, needle)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content, needle", [
    (None, "no such config file"),
    ("epochs: [1, 2\n", "invalid YAML"),
    ("- a list\n- not a mapping\n", "mapping"),
])
def test_bad_config_files_are_one_line(content, needle, world, tmp_path, capsys):
    f = tmp_path / "my.yaml"
    if content is not None:
        f.write_text(content)
    rc, err = _run(["train", "--model", "bprmf", *world["common"], "--config", f], capsys)
    assert rc == 2
    _one_line(err, needle, "my.yaml")


# --------------------------------------------------------------------------- command line

@pytest.mark.parametrize("argv, code, needle", [
    (["recommend", "--run", "RUN"], 2, "--users"),
    (["recommend", "--run", "RUN", "--users", "no-such-user"], 2, "no-such-user"),
    (["recommend", "--run", "RUN", "--users", "1", "--k", "0"], 2, "--k"),
    (["recommend", "--run", "RUN", "--users", "1", "--exclude", "some"], 2, "--exclude"),
    (["explain", "--run", "RUN", "--user", "1"], 2, "multikg4rec"),
    (["explain", "--run", "MKR", "--user", "no-such-user"], 2, "no-such-user"),
    (["compare", "--a", "RUN", "--b", "NOWHERE"], 2, "NOWHERE"),
    (["reproduce", "table9"], 2, "table9"),
    (["train", "--dataset", "tiny"], 2, "--model"),
    (["train", "--model", "nosuchmodel", "--dataset", "tiny"], 2, "nosuchmodel"),
    (["train", "--model", "bprmf", "--dataset", "tiny", "stray"], 2, "stray"),
    (["features", "build", "--dataset", "tiny", "--encoder", "nope"], 2, "nope"),
], ids=lambda v: "_".join(v) if isinstance(v, list) else str(v))
def test_command_line_mistakes_are_one_line(argv, code, needle, world, tmp_path, capsys):
    sub = {"RUN": str(world["bprmf"]), "MKR": str(world["mkr"]), "NOWHERE": str(tmp_path / "nowhere")}
    argv = [sub.get(a, a) for a in argv]
    needle = sub.get(needle, needle)
    try:
        rc = main(argv)
    except SystemExit as e:                                # argparse: usage line + one error line, exit 2
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    lines = [ln for ln in err.splitlines() if not ln.startswith(("usage:", " "))]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


# --------------------------------------------------------------------------- signals

def _train_cmd(world, out: Path, epochs: int = 6) -> list[str]:
    common = list(world["common"])
    common[common.index("--output-dir") + 1] = str(out)
    common[common.index("--epochs") + 1] = str(epochs)
    return [sys.executable, "-m", "multikg4rec.cli", "train", "--model", "bprmf", *common, "--eval_every", "1"]


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_ctrl_c_exits_130_after_saving_and_the_same_command_resumes(world, tmp_path):
    # a run that cannot end by itself before the signal (a tiny epoch takes milliseconds; on a loaded machine
    # 40 of them finished before the test got to send it)
    cmd = _train_cmd(world, tmp_path / "runs", epochs=100000) + ["--patience", "100000"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "runs").rglob("log.jsonl")):
        time.sleep(0.2)
    log = next((tmp_path / "runs").rglob("log.jsonl"))
    while time.time() < deadline and len(log.read_text().splitlines()) < 2:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("interrupted:") and "resume" in lines[-1] and "Traceback" not in err
    assert (log.parent / "checkpoint.pt").is_file() and not (log.parent / "metrics.json").exists()


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(world, tmp_path):
    """Killed with SIGKILL (no handler runs) at seeded random moments, then resumed by the same command until it
    finishes: the test metrics equal an uninterrupted run's to every digit."""
    t0 = time.time()
    ref = subprocess.run(_train_cmd(world, tmp_path / "ref", epochs=30), capture_output=True, text=True, env=_env())
    assert ref.returncode == 0, ref.stderr
    took = time.time() - t0
    want = json.loads(next((tmp_path / "ref").rglob("metrics.json")).read_text())
    rng = np.random.default_rng(7)
    cmd = _train_cmd(world, tmp_path / "killed", epochs=30)
    kills = 0
    for _ in range(4):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
        try:                                              # somewhere in start-up, an epoch, a save or a validation
            p.wait(timeout=float(rng.uniform(0.3, 0.8)) * took)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            kills += 1
            continue
        assert p.returncode == 0
        break
    last = subprocess.run(cmd, capture_output=True, text=True, env=_env())      # then to the end
    assert last.returncode == 0, last.stderr
    got = json.loads(next((tmp_path / "killed").rglob("metrics.json")).read_text())
    assert kills >= 1
    assert got["test"] == want["test"] and got["valid"] == want["valid"] and got["best_epoch"] == want["best_epoch"]


def test_the_fault_table_in_the_docs_counts_the_cases_here():
    """docs/reliability.md lists the suite's cases as a table: at least 50 rows (the issue's floor)."""
    doc = (REPO / "docs" / "reliability.md").read_text()
    rows = [ln for ln in doc.splitlines() if ln.startswith("| ") and not ln.startswith("| input")
            and not ln.startswith("| ---")]
    assert len(rows) >= 50


def test_a_failed_recommend_write_leaves_the_earlier_file_whole(world, tmp_path, capsys, monkeypatch):
    """--out is written to a temporary file and renamed: a write that fails midway keeps the earlier file."""
    import pandas as pd
    out = tmp_path / "recs.tsv"
    out.write_text("the earlier recommendations\n")

    def full_disk(self, path, *a, **kw):
        Path(path).write_text("half a fi")
        raise OSError(28, "No space left on device", str(path))
    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    rc, err = _run(["recommend", "--run", world["bprmf"], "--users", "1", "--out", out], capsys)
    assert rc == 1 and "disk is full" in _one_line(err, "recs.tsv")
    assert out.read_text() == "the earlier recommendations\n" and not (tmp_path / "recs.tsv.tmp").exists()
