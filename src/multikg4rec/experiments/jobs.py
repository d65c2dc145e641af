"""What a paper table runs: its jobs (model, dataset, seed, overrides), built from ``paper.yaml``.

A job is an ordinary run (``training.run``) found again by its config (``rundir.find_run``),
so a sweep is resumable for free. Identical configs (the full model in Tables 3 and 4) are
one run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources

import yaml

from ..config import load_config
from ..errors import UserError

log = logging.getLogger(__name__)

#: the paper's tables as data: models, recipes, the paper's numbers, the tuning grid
SPEC = yaml.safe_load((resources.files("multikg4rec") / "experiments" / "paper.yaml").read_text(encoding="utf-8"))
METRICS = ("recall@20", "mrr@20", "ndcg@20")
PAPER: dict = {table: {col: {k: tuple(v) for k, v in rows.items()} for col, rows in cols.items()}
               for table, cols in SPEC["paper"].items()}
PAPER_DATASET: dict[str, str] = SPEC["paper_dataset"]
TABLE2_MODELS: list[str] = SPEC["table2_models"]
KG_FREE: set[str] = set(SPEC["kg_free"])
DATASETS_WITH_KG: set[str] = set(SPEC["datasets_with_kg"])
TABLE_RECIPES: dict[str, dict] = SPEC["recipes"]
TABLES = ("table2", "table3", "table4", "coldstart", "popularity")
#: the cold-start table's rows (label, model, overrides) and the recipe every row adds
COLDSTART: dict = SPEC["coldstart"]


@dataclass
class Job:
    label: str
    model: str
    dataset: str
    seed: int
    overrides: dict = field(default_factory=dict)
    #: under ``common`` (the command line): a paper table's recipe (``TABLE_RECIPES``); ``overrides`` are above it
    defaults: dict = field(default_factory=dict)

    def config(self, common: dict) -> dict:
        return load_config(self.model, self.dataset, None,
                           {**self.defaults, **common, **self.overrides, "seed": self.seed})

def table_job(label: str, model: str, dataset: str, seed: int, overrides: dict | None = None) -> Job:
    """A job of a paper table (or Fig. 4): with the table's recipe for ``model`` (``TABLE_RECIPES``)."""
    return Job(label, model, dataset, seed, dict(overrides or {}), dict(TABLE_RECIPES.get(model, {})))

def _modalities(dataset: str, common: dict) -> list[str]:
    return list(load_config("multikg4rec", dataset, None, common)["modalities"])

def table_jobs(table: str, datasets: list[str], seeds: list[int], common: dict,
               models: list[str] | None = None) -> list[Job]:
    jobs = []
    for d in datasets:
        # a dataset without a KG (amazon-book here; a user's catalogue) runs only the collaborative models;
        # the datasets shipped with a KG are not loaded to ask
        kg = d in DATASETS_WITH_KG or _has_kg(d, common)
        if not kg and table in ("table3", "table4"):
            raise UserError(f"{table} compares Multi-KG4Rec variants, which need a knowledge graph; dataset {d!r} "
                            f"has none (put {d}.kg and {d}.link in its folder)")
        if not kg and table == "table2":
            log.warning("%s has no knowledge graph: table2 runs its collaborative models only (%s)", d,
                        ", ".join(m for m in models or TABLE2_MODELS if m in KG_FREE))
        for s in seeds:
            if table == "table2":
                for m in models or TABLE2_MODELS:
                    if kg or m in KG_FREE:
                        jobs.append(table_job(m, m, d, s))
            elif table == "table3":
                mods = _modalities(d, common)
                text = [m for m in mods if m == "text"]
                other = [m for m in mods if m != "text"]
                ab = "v" if other in ([], ["image"]) else "+".join(other)      # the paper's "v"; lastfm-2k: audio
                for label, ms in (("Multi-KG4Rec", mods), (f"w/o {ab}", text), ("w/o t", other), (f"w/o t&{ab}", [])):
                    jobs.append(table_job(label, "multikg4rec", d, s, {"modalities": ms}))
            elif table == "table4":
                for label, fusion in (("Multi-KG4Rec", "bi"), ("t2v", "t2v"), ("v2t", "v2t")):
                    jobs.append(table_job(label, "multikg4rec", d, s, {"fusion": fusion}))
                jobs.append(table_job("w/o t&v", "multikg4rec", d, s, {"modalities": []}))
            else:
                raise UserError(f"unknown table {table!r}; choose table2, table3, table4 or fig4")
    # identical configs (e.g. the full model in tables 3 and 4) share one run directory
    return jobs

def _has_kg(dataset: str, common: dict) -> bool:
    from ..data import load_dataset
    cfg = load_config("bprmf", dataset, None, common)
    return load_dataset(dataset, cfg, data_dir=cfg.get("data_dir"), cache_dir=cfg.get("cache_dir")).has_kg

def coldstart_jobs(datasets: list[str], seeds: list[int], models: list[str] | None = None) -> list[Job]:
    """The cold-start table's jobs: every row of ``paper.yaml``'s ``coldstart`` under its recipe (``split:
    cold_item``), for the seeds of ``seeds`` that its per-dataset plan (``coldstart.seeds``) keeps; ``models``
    keeps the rows whose label or model is named (a model name keeps all its rows)."""
    rows = [(lab, m, ov) for lab, m, ov in COLDSTART["rows"] if models is None or lab in models or m in models]
    if models is not None:
        known = {lab for lab, _, _ in COLDSTART["rows"]} | {m for _, m, _ in COLDSTART["rows"]}
        if unknown := [m for m in models if m not in known]:
            raise UserError(f"coldstart has no row {unknown[0]!r}; rows: {', '.join(lab for lab, _, _ in COLDSTART['rows'])}")
    plan = COLDSTART.get("seeds", {})
    return [Job(lab, m, d, s, dict(ov or {}), dict(COLDSTART["recipe"]))
            for d in datasets for s in seeds for lab, m, ov in rows
            if s < plan.get(d, {}).get(lab, plan.get(d, {}).get("default", len(seeds)))]


def jobs_for(table: str, datasets: list[str], seeds: list[int], common: dict,
             models: list[str] | None = None) -> list[Job]:
    """The jobs of any table ``reproduce`` knows."""
    if table == "coldstart":
        return coldstart_jobs(datasets, seeds, models)
    return table_jobs("table2" if table == "popularity" else table, datasets, seeds, common, models)


def _in_table_order(table: str, rows: list[dict], datasets: list[str], common: dict) -> list[dict]:
    """Rows sorted as the table lists its jobs (``datasets`` first, in that order, then any new ones; seed;
    model/variant); unknown labels last."""
    datasets = list(dict.fromkeys([*datasets, *(r["job"].dataset for r in rows)]))
    seeds = sorted({r["job"].seed for r in rows})
    order = {(j.label, j.dataset, j.seed): i for i, j in enumerate(jobs_for(table, datasets, seeds, common))}
    return sorted(rows, key=lambda r: order.get((r["job"].label, r["job"].dataset, r["job"].seed), len(order)))
