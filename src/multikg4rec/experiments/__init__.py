"""The paper's tables and figure as sweeps (``multikg4rec reproduce``), the run archive, paired
tests and tuning. One concern per module:

* :mod:`.jobs` -- what a table runs (``paper.yaml``: models, recipes, the paper's numbers);
* :mod:`.scheduler` -- running jobs: one process or ``--jobs N``, background sweeps, ``status``;
* :mod:`.plan` -- ``--plan``: what is left and how long it should take;
* :mod:`.archive` -- the run archive and a table's ``runs.csv``;
* :mod:`.stats` -- paired Wilcoxon tests (``compare``);
* :mod:`.reports` -- a table as Markdown and PNG;
* :mod:`.figure4` -- the case study;
* :mod:`.tune` -- the paper's grid, chosen on valid;
* :mod:`.reproduce` -- the entry point that ties them together.
"""
from ..errors import Interrupted
from .archive import collect
from .jobs import KG_FREE, PAPER, TABLE2_MODELS, Job, table_jobs
from .plan import plan
from .reports import summarize
from .reproduce import reproduce
from .scheduler import launch_background, run_jobs, run_jobs_parallel, status
from .stats import compare_runs, paired_test
from .tune import GRID, tune

__all__ = ["Interrupted", "collect", "KG_FREE", "PAPER", "TABLE2_MODELS", "Job", "table_jobs", "plan", "summarize",
           "reproduce", "launch_background", "run_jobs", "run_jobs_parallel", "status", "compare_runs",
           "paired_test", "GRID", "tune"]
