"""The committed tables are what the code makes of the committed runs.

Every `results/**/table*/table*.md` names the command that wrote it ("Generated ... by `multikg4rec reproduce ...`").
Here that command runs again, `--summarize` (no training), on a fresh output folder that holds only the table's
`runs.csv` and the one run archive `results/runs/` (each run's metrics.json and per-user test NDCG), and the table it
writes must be the committed one, line for line (the date line aside): every mean, std, gap, seconds per epoch
and Wilcoxon p-value is recomputed from the runs' own files. A number edited by hand, a table not regenerated
after its runs changed, or a change to how tables are computed fails here. Needs no dataset: tables are built
from the archive alone, as on a fresh checkout.
"""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from multikg4rec.cli import main

REPO = Path(__file__).resolve().parents[1]
#: every committed table: results/<table>/<table>.md, and those of the side studies (results/studies/<study>/<table>/)
TABLES = sorted(str(p.relative_to(REPO)) for pattern in ("**/table*/table*.md", "**/coldstart/coldstart.md", "**/popularity/popularity.md")
                for p in (REPO / "results").glob(pattern) if p.stem == p.parent.name)


def _generated_by(md: str) -> list[str]:
    m = re.search(r"^Generated .*? by `(multikg4rec reproduce [^`]*)`", md, flags=re.M)
    assert m, "the table does not say which command generated it"
    argv = shlex.split(m.group(1))[1:]
    assert "--summarize" in argv, f"a committed table should be written by a --summarize call: {m.group(1)}"
    return argv


def _body(md: str) -> list[str]:
    return [line for line in md.splitlines() if not line.startswith("Generated ")]


def test_every_main_table_is_checked():
    assert {"results/table2/table2.md", "results/table3/table3.md", "results/table4/table4.md"} <= set(TABLES)


@pytest.mark.parametrize("path", TABLES)
def test_committed_table_is_regenerated_by_its_own_command_from_the_archive(path, tmp_path, monkeypatch):
    committed = REPO / path
    table, root = committed.stem, committed.parent.parent                  # root/<table>/<table>.md
    md = committed.read_text()
    argv = _generated_by(md)
    out = tmp_path / "results"
    (out / table).mkdir(parents=True)
    shutil.copy(root / table / "runs.csv", out / table / "runs.csv")       # earlier calls' rows
    (out / "runs").symlink_to(REPO / "results" / "runs")                   # the archive, read only
    monkeypatch.chdir(REPO)                        # runs.csv names archived runs relative to the repository
    monkeypatch.delenv("MULTIKG4REC_DATA", raising=False)
    rc = main([*argv, "--results", str(out), "--output-dir", str(tmp_path / "no-local-runs"),
               "--data-dir", str(tmp_path / "no-data")])
    assert rc == 0
    fresh = (out / table / f"{table}.md").read_text()
    assert _body(fresh) == _body(md), (f"{path} differs from what its command writes from the archive; "
                                       f"regenerate it with: multikg4rec {' '.join(argv)}")
    rows = (out / table / "runs.csv").read_text().replace(f"{out}/", "results/")
    assert rows == (root / table / "runs.csv").read_text()                 # run_dir: repository-relative


def _load_compare():
    import importlib.util
    spec = importlib.util.spec_from_file_location("recbole_compare", REPO / "bench" / "recbole" / "compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "bench" / "results").glob("recbole_*.md")))
def test_recbole_comparison_tables_are_rendered_from_their_recorded_runs(path):
    """bench/results/recbole_<dataset>.md embeds every comparison run it reports (both frameworks' test metrics,
    epochs, seconds, memory, the command and the machine) as JSON; the tables, means and footnotes above it
    must be exactly what `bench/recbole/compare.py` renders from those records."""
    compare = _load_compare()
    md = REPO / path
    rows = compare.read_rows(md)
    assert rows, f"{path} holds no recorded runs"
    assert compare.render(md.stem.split("_", 1)[1], rows) == md.read_text()


def test_every_archived_run_config_still_loads_and_names_the_same_run():
    """The config checks (types, ranges) must not reject an archived run, and every option the code knows must be
    stated in each archived config.yaml: loaded back with its own keys as overrides, it is the same run (same
    config_hash), so sweeps keep finding it by content. Adding an option fails here until the archive's configs
    state the value their runs were trained with (the value that reproduces the behaviour before the option)."""
    import yaml

    from multikg4rec.config import config_hash, load_config
    checked = 0
    for path in sorted((REPO / "results").rglob("config.yaml")):
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        again = load_config(cfg["model"], cfg["dataset"],
                            overrides={k: v for k, v in cfg.items() if k not in ("model", "dataset")})
        assert config_hash(again) == config_hash(cfg), (path, sorted(set(again) ^ set(cfg)))
        checked += 1
    assert checked > 100


def test_the_archive_holds_one_run_per_config():
    """A table's job finds its run by config; two archived runs of one config would make that choice arbitrary."""
    import yaml

    from multikg4rec.config import config_hash
    seen: dict[str, Path] = {}
    for path in sorted((REPO / "results" / "runs").rglob("config.yaml")):
        h = config_hash(yaml.safe_load(path.read_text(encoding="utf-8")))
        assert h not in seen, f"{path.parent} and {seen[h]} archive the same config"
        seen[h] = path.parent
