"""Command line: ``multikg4rec train | data | features | explain | models``.

Every user error is one line on stderr (exit 2), never a traceback; Ctrl-C
during training saves a resumable checkpoint (exit 130).
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import platform
import signal
import sys
from pathlib import Path

from .config import CONFIG_ROOT, load_config, parse_value
from . import __version__
from .errors import Interrupted, UserError

DATASETS_HELP = ("built-in layouts: ml-1m, lastfm-2k, amazon-book; any folder <data-dir>/<NAME>/ with RecBole atomic "
                 "files NAME.inter [.kg .link .item] (e.g. ml-100k)")


def _yaml_keys(path: Path) -> list[str]:
    """The key lines of a packaged YAML with their comments, and the indented lines that continue them
    (section comments at the start of a line dropped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln for ln in lines if ln.strip() and not ln.startswith("#")]


def _options_epilog(argv: list[str]) -> str:
    """The documented config keys (configs/default.yaml and, with ``--model M`` on the command line,
    configs/model/M.yaml), with their comments."""
    from .models import available_models
    model = argv[argv.index("--model") + 1] if "--model" in argv[:-1] else ""
    model_yaml = CONFIG_ROOT / "model" / f"{model}.yaml"
    extra = ""
    if model and model_yaml.is_file():
        extra = f"\n\n{model} keys (configs/model/{model}.yaml; they override the defaults above):\n  " + \
            "\n  ".join(_yaml_keys(model_yaml))
    return ("config keys (override any with --key value; a model's own keys: train --model M --help):\n  "
            + "\n  ".join(_yaml_keys(CONFIG_ROOT / "default.yaml")) + extra
            + f"\n\nmodels: {', '.join(available_models())}\ndatasets: {DATASETS_HELP}\n"
            "data root: --data-dir, else $MULTIKG4REC_DATA, else ./data\n\n"
            "example:\n  multikg4rec train --model lightgcn --dataset ml-100k --epochs 50 --learning_rate 0.002")


def _parse_overrides(rest: list[str]) -> dict:
    out, i = {}, 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--"):
            raise UserError(f"unexpected argument {tok!r} (options are --key value)")
        key = tok[2:].replace("-", "_")
        if "=" in key:
            key, val = key.split("=", 1)
            out[key] = parse_value(val)
            i += 1
            continue
        if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
            raise UserError(f"option --{key} needs a value")
        out[key] = parse_value(rest[i + 1])
        i += 2
    return out


def _launch(argv: list[str], nproc: int) -> int:
    """``multikg4rec train --nproc N``: the same command under torchrun's launcher, N processes on this machine."""
    keep, args = [], iter(argv)
    for a in args:                                        # the command without --nproc N / --nproc=N
        if a == "--nproc":
            next(args, None)
        elif not a.startswith("--nproc="):
            keep.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "multikg4rec", *keep]
    import subprocess
    return subprocess.call(cmd)


def cmd_train(args, rest) -> int:
    from .training import run
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args.argv, args.nproc)
    overrides = _parse_overrides(rest)
    for key in ("seed", "data_dir", "cache_dir", "output_dir", "threads"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.quiet:
        overrides["quiet"] = True          # also the feature build's progress bars (not part of the run's hash)
    cfg = load_config(args.model.lower(), args.dataset, args.config, overrides)
    from .distributed import shutdown
    res = run(cfg, run_dir=args.run_dir, restart=args.restart, quiet=args.quiet)
    shutdown()                                            # torchrun: every rank done (no-op in one process)
    m = res.metrics
    if int(os.environ.get("RANK", "0")):                  # torchrun: rank 0 reports
        return 0
    print(json.dumps({"run_dir": str(res.run_dir), "best_epoch": m["best_epoch"],
                      "seconds_per_epoch": m["seconds_per_epoch"], "test": m["test"],
                      **({"test_hybrid": m["test_hybrid"]} if "test_hybrid" in m else {})}, indent=2))
    return 0


def cmd_data_info(args, rest) -> int:
    from .data import load_dataset
    from .data.sources import default_data_dir
    names = args.names or sorted(p.name for p in Path(args.data_dir or default_data_dir()).iterdir() if p.is_dir())
    for name in names:
        cfg = load_config("bprmf", name, None, {"seed": args.seed} | _parse_overrides(rest))
        ds = load_dataset(name, cfg, data_dir=args.data_dir, cache_dir=args.cache_dir)
        stats = ds.stats()
        try:
            from .features import content_coverage
            stats.update(content_coverage(name, args.data_dir, ds))
        except ImportError:
            pass
        except UserError as e:
            stats["content"] = f"unavailable ({e})"
        width = max(len(k) for k in stats)
        print(f"== {name}")
        for k, v in stats.items():
            print(f"  {k:<{width}}  {v}")
        for note in ds.meta.get("notes", []):
            print(f"  note: {note}")
    return 0


def cmd_data_download(args, rest) -> int:
    from .data.download import download
    download(args.name, args.data_dir, source=args.source)
    return 0


def cmd_models(args, rest) -> int:
    from .models import available_models, get_model_class
    for name in available_models():
        cls = get_model_class(name)
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        print(f"{name:<12} {doc[0] if doc else ''}")
    return 0


def cmd_explain(args, rest) -> int:
    from .explain import explain_run
    out = explain_run(args.run, args.user, out=args.out, data_dir=args.data_dir)
    print(json.dumps(out, indent=2, default=str))
    return 0


def cmd_recommend(args, rest) -> int:
    from .recommend import recommend
    if not args.users and not args.all_users:
        raise UserError("name the users: --users ID [ID ...] (original ids) or --all-users")
    recs = recommend(args.run, None if args.all_users else args.users, k=args.k, exclude=args.exclude,
                     labels=not args.no_labels, data_dir=args.data_dir)
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_file() and not out.is_dir():
            recs.to_csv(out, sep="\t", index=False)          # a device or a pipe: written as it is
        else:                                                   # a file: whole or not at all (temp + rename)
            tmp = out.with_name(out.name + ".tmp")
            try:
                recs.to_csv(tmp, sep="\t", index=False)
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
            if out.is_dir():
                tmp.unlink()
                raise IsADirectoryError(21, "Is a directory", str(out))
            os.replace(tmp, out)
        print(f"wrote {len(recs)} recommendations for {recs['user'].nunique()} users to {args.out}")
    else:
        print(recs.to_csv(sep="\t", index=False, float_format="%.6g"), end="")
    return 0


def cmd_export(args, rest) -> int:
    from .bundle import export
    out = export(args.run, args.out, data_dir=args.data_dir)
    print(f"wrote the bundle {out} (serve it: multikg4rec serve --bundle {out})")
    return 0


def cmd_serve(args, rest) -> int:
    from .serve import serve
    if args.run and args.bundle:
        raise UserError("serve takes --bundle or --run, not both")
    bundle = args.bundle
    if args.run:                                   # export next to the run once, then serve that
        from .bundle import export
        bundle = Path(args.run) / "bundle"
        if not (bundle / "manifest.json").is_file():
            export(args.run, bundle, data_dir=args.data_dir)
    if not bundle:
        raise UserError("name what to serve: --bundle BUNDLE (multikg4rec export) or --run RUN")
    serve(bundle, host=args.host, port=args.port)
    return 0


def _common_overrides(args, rest) -> dict:
    common = _parse_overrides(rest)
    for key in ("data_dir", "cache_dir", "output_dir", "threads"):
        if getattr(args, key, None) is not None:
            common[key] = getattr(args, key)
    return common


def _sweep_overrides(args, rest) -> dict:
    """_common_overrides of a sweep; with --jobs N and no --threads, each run gets cores // N threads."""
    common = _common_overrides(args, rest)
    if args.jobs > 1 and "threads" not in common:
        common["threads"] = max(1, (os.cpu_count() or 1) // args.jobs)
    return common


def _add_jobs_argument(p) -> None:
    p.add_argument("--jobs", type=_at_least_one, default=1,
                   help="train up to N runs at once, in N processes that share the sweep (a run is trained by "
                        "one of them; the others skip it); each run gets --threads (default: cores // N). "
                        "Default 1")


def cmd_reproduce(args, rest) -> int:
    from .experiments import launch_background, reproduce, status
    if args.table == "status":
        for t in args.datasets or ["table2", "table3", "table4", "coldstart", "popularity"]:
            print(status(t, Path(args.results)))
        return 0
    if args.background and not args.plan:
        argv = [a for a in (args.argv or []) if a != "--background"]
        return launch_background(argv, Path(args.results) / args.table)
    datasets = args.datasets or ["ml-100k", "ml-1m"]
    command = "multikg4rec " + " ".join(a for a in (args.argv or []) if a != "--background")
    common = _sweep_overrides(args, rest)
    reproduce(args.table, datasets, args.seeds, common, Path(args.results),
              models=args.models, only_summarize=args.summarize, command=command, only_plan=args.plan,
              jobs_at_once=args.jobs, archive=args.archive)
    return 0


def cmd_compare(args, rest) -> int:
    from .experiments import compare_runs
    print(json.dumps(compare_runs(args.a, args.b, args.metric), indent=2))
    return 0


def cmd_tune(args, rest) -> int:
    from .experiments import tune
    best = tune(args.model, args.dataset, args.budget, _sweep_overrides(args, rest), Path(args.results),
                seed=args.seed, jobs_at_once=args.jobs)
    print(json.dumps({"best (chosen on valid NDCG@20)": best}))
    return 0


def _torch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


def _at_least_one(text: str) -> int:
    """argparse type of counts (--seeds, --budget, --threads): a whole number >= 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="multikg4rec", description="Multi-KG4Rec and its baselines: knowledge graph + "
                                "multimodal recommendation under one full-ranking protocol.")
    p.add_argument("--version", action="version",
                   version=f"%(prog)s {__version__} (torch {_torch_version()}, Python {platform.python_version()})")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model, evaluate on valid each epoch, report test metrics",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_options_epilog(list(argv or [])),
                       description="Train MODEL on DATASET (early stopping on valid), then evaluate the best epoch "
                                   "on test. Re-running the same command resumes an interrupted run and returns a "
                                   "finished one at once.")
    t.add_argument("--model", required=True, help="model name (see `multikg4rec models`)")
    t.add_argument("--dataset", required=True, help="dataset name under the data root")
    t.add_argument("--config", help="YAML file with config keys (overrides the packaged defaults)")
    t.add_argument("--seed", type=int, help="seed for split, init, sampling (default 2024)")
    t.add_argument("--data-dir", help="data root (default $MULTIKG4REC_DATA or ./data)")
    t.add_argument("--cache-dir", help="processed-data cache (default $MULTIKG4REC_CACHE or ~/.cache/multikg4rec)")
    t.add_argument("--output-dir", help="root of run directories (default ./runs)")
    t.add_argument("--run-dir", help="exact run directory (default <output-dir>/<dataset>/<model>/seed<S>-<hash>)")
    t.add_argument("--threads", type=_at_least_one, help="torch threads")
    t.add_argument("--restart", action="store_true", help="discard an existing checkpoint/result and start over")
    t.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    t.add_argument("--nproc", type=_at_least_one, default=1,
                   help="data-parallel processes on this machine (starts torchrun's launcher; the same as "
                        "`torchrun --nproc_per_node N -m multikg4rec train ...`): each trains its shard of every "
                        "epoch's batches, the global batch is N x batch_size (docs/distributed.md). Default 1")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("data", help="dataset information and download")
    dsub = d.add_subparsers(dest="data_command", required=True)
    info = dsub.add_parser("info", help="Table-1 statistics of datasets (after preprocessing)",
                           description="Print users, items, interactions, entities, relations, triples, items "
                                       "linked to the KG and items with text/image. Extra --key value options "
                                       "change preprocessing (e.g. --rating_threshold 4).")
    info.add_argument("names", nargs="*", help="dataset names (default: every folder under the data root)")
    info.add_argument("--data-dir")
    info.add_argument("--cache-dir")
    info.add_argument("--seed", type=int, default=2024)
    info.set_defaults(func=cmd_data_info)
    dl = dsub.add_parser("download", help="fetch a dataset from its official source (or a local copy of it)")
    dl.add_argument("name")
    dl.add_argument("--data-dir")
    dl.add_argument("--source", help="local path or URL of the archive (default: the official URL)")
    dl.set_defaults(func=cmd_data_download)

    m = sub.add_parser("models", help="list the models")
    m.set_defaults(func=cmd_models)

    e = sub.add_parser("explain", help="per-user modality attention of a trained Multi-KG4Rec run (Fig. 4)")
    e.add_argument("--run", required=True, help="run directory")
    e.add_argument("--user", required=True, help="ORIGINAL user id")
    e.add_argument("--out", help="where to write the plot/data (default <run>/explain)")
    e.add_argument("--data-dir", help="data root, only for runs made before runs kept their own data")
    e.set_defaults(func=cmd_explain)

    rc = sub.add_parser("recommend", help="top-K items for users from a trained run (original ids)",
                        description="Score every item for the given users with a run's best model and print the "
                                    "top K as TSV (user, rank, item, score, label). Items the user already "
                                    "interacted with are left out (--exclude). Python API: "
                                    "multikg4rec.recommend.recommend(run_dir, users, k).")
    rc.add_argument("--run", required=True, help="run directory (runs/<dataset>/<model>/seed<S>-<hash>)")
    rc.add_argument("--users", nargs="+", help="ORIGINAL user ids")
    rc.add_argument("--all-users", action="store_true", help="every user of the run's dataset")
    rc.add_argument("--k", type=_at_least_one, default=10, help="items per user (default 10)")
    rc.add_argument("--exclude", default="all", choices=["all", "train+valid", "train", "none"],
                    help="known interactions left out: all (train+valid+test, default), train+valid (the test "
                         "protocol: reproduces the run's topk.tsv), train, none")
    rc.add_argument("--out", help="write a TSV file instead of printing")
    rc.add_argument("--no-labels", action="store_true", help="no item title column")
    rc.add_argument("--data-dir", help="data root: item titles (the run answers from its own copy of its data; "
                                       "runs made before runs kept one are rebuilt from here)")
    rc.set_defaults(func=cmd_recommend)

    ex = sub.add_parser("export", help="a self-contained bundle of a trained run, for serving",
                        description="Write a bundle folder: the scoring rows, weights (state dict only), the run's "
                                    "data, titles and posters, a manifest with checksums. It loads with no data "
                                    "folder and no pickle (docs/serving.md).")
    ex.add_argument("--run", required=True, help="a finished run directory")
    ex.add_argument("--out", required=True, help="the bundle folder to write (new or empty)")
    ex.add_argument("--data-dir", help="data root, for item titles and posters (default: the run's)")
    ex.set_defaults(func=cmd_export)

    sv = sub.add_parser("serve", help="serve a bundle over HTTP: recommend, explain, add items, a web page",
                        description="Start the HTTP API (FastAPI + uvicorn) and the web page at http://HOST:PORT/; "
                                    "API docs at /docs. Bound to 127.0.0.1 unless --host says otherwise.")
    sv.add_argument("--bundle", help="a bundle folder (multikg4rec export)")
    sv.add_argument("--run", help="a finished run: exported to RUN/bundle on first use, then served")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=_at_least_one, default=8000, help="port (default 8000)")
    sv.add_argument("--data-dir", help="with --run: data root for titles and posters")
    sv.set_defaults(func=cmd_serve)

    r = sub.add_parser("reproduce", help="the paper's tables/figure as resumable sweeps (results/<table>/)",
                       description="Run (or resume) every run a table needs, then write results/<table>/: runs.csv, "
                                   "<table>.md (mean ± std over seeds, the paper's numbers, gaps, Wilcoxon test) "
                                   "and PNG plots. Finished runs are never redone; rows of earlier calls for other "
                                   "datasets, models or seeds stay in the table. `reproduce status` shows progress "
                                   "of background sweeps. Extra --key value options apply to every run. A table's "
                                   "runs start from its recipe (experiments/paper.yaml: the settings the committed "
                                   "tables were trained with where a default has changed since; Multi-KG4Rec: "
                                   "kg_loss_triples ckg); an option on the command line wins.")
    r.add_argument("table", choices=["table2", "table3", "table4", "fig4", "coldstart", "popularity", "status"],
                   help="a paper table, fig4, coldstart (new items, every model: docs/coldstart.md), popularity "
                        "(Table 2's runs by item popularity; re-trains archived runs that lack the breakdown), "
                        "or status")
    r.add_argument("--datasets", nargs="+", help="default: ml-100k ml-1m")
    r.add_argument("--seeds", type=_at_least_one, default=5, help="seeds 0..N-1 (default 5)")
    r.add_argument("--models", nargs="+", help="table2, popularity and coldstart: a subset of their rows (coldstart: a label, or "
                   "a model name for all its rows; the table keeps the rows of earlier calls this one does not "
                   "cover; delete results/<table>/runs.csv to start afresh)")
    r.add_argument("--results", default="results", help="output root (default ./results)")
    r.add_argument("--archive", help="run archive: finished runs' small files, kept and read back by their config "
                                     "(default <results>/runs)")
    r.add_argument("--summarize", action="store_true", help="only tabulate finished runs, train nothing")
    r.add_argument("--plan", action="store_true",
                   help="list the runs the sweep needs (finished / in progress / to train) and the minutes each "
                        "should take, estimated from finished runs of the same kind; train nothing")
    r.add_argument("--background", action="store_true", help="run detached; log in results/<table>/sweep.log")
    _add_jobs_argument(r)
    r.add_argument("--data-dir")
    r.add_argument("--cache-dir")
    r.add_argument("--output-dir", help="root of run directories (default ./runs)")
    r.add_argument("--threads", type=_at_least_one)
    r.set_defaults(func=cmd_reproduce)

    c = sub.add_parser("compare", help="paired significance test between two sets of finished runs",
                       description="Test metric of every run, and a paired Wilcoxon signed-rank test on per-user "
                                   "test NDCG@20 of A - B over the (seed, user) pairs both have (runs are matched "
                                   "by the seed in their config.yaml; each seed is its own split). Works on run "
                                   "directories and on the archived copies in results/runs/.")
    c.add_argument("--a", nargs="+", required=True, help="run directories of A (one per seed)")
    c.add_argument("--b", nargs="+", required=True, help="run directories of B (one per seed)")
    c.add_argument("--metric", default="ndcg@20", help="test metric to list (default ndcg@20)")
    c.set_defaults(func=cmd_compare)

    tu = sub.add_parser("tune", help="grid search over the paper's space (batch, lr, lambda), chosen on valid",
                        description="Visit up to --budget points of the paper's grid (docs/model.md §6) in a seeded random order; each "
                                    "point is a resumable run; the best on valid NDCG@20 is written to "
                                    "results/tune/<model>_<dataset>.best.yaml (usable as --config).")
    tu.add_argument("--model", required=True)
    tu.add_argument("--dataset", required=True)
    tu.add_argument("--budget", type=_at_least_one, default=10,
                    help="grid points to visit (default 10)")
    tu.add_argument("--seed", type=int, default=0)
    tu.add_argument("--results", default="results")
    tu.add_argument("--data-dir")
    tu.add_argument("--cache-dir")
    tu.add_argument("--output-dir")
    tu.add_argument("--threads", type=_at_least_one)
    _add_jobs_argument(tu)
    tu.set_defaults(func=cmd_tune)

    try:
        from .features.cli import add_features_parser
        add_features_parser(sub)
    except ImportError:
        pass
    return p


def _os_hint(e: OSError) -> str:
    """What to do about an OS error, in a few words."""
    import errno
    return {errno.ENOSPC: " (the disk is full: free space or choose another --output-dir)",
            errno.EACCES: " (no permission: choose a folder you can write, e.g. --output-dir)",
            errno.EROFS: " (a read-only file system: choose another --output-dir)",
            errno.ENOTDIR: " (a file stands where a folder is expected: move it or choose another path)",
            errno.EEXIST: " (a file stands where a folder is expected: move it or choose another path)",
            errno.EISDIR: " (a folder stands where a file is expected)"}.get(e.errno, "")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    # SIGTERM (kill, a batch scheduler) stops like Ctrl-C: the last finished epoch is kept; SIGINT too when the
    # command was started in the background of a script (the shell hands it an ignored SIGINT, and Python
    # keeps it ignored)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args, rest = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if rest and args.func not in (cmd_train, cmd_data_info, cmd_reproduce, cmd_tune):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if len(inspect.signature(args.func).parameters) == 1:  # subcommands registered by features.cli
            return args.func(args) or 0
        return args.func(args, rest) or 0
    except Interrupted as e:                # Ctrl-C / SIGTERM: the state is saved, the same command resumes
        print(f"interrupted: {e}", file=sys.stderr)
        return 130
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:                 # `multikg4rec ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 0
    except OSError as e:                    # a path that cannot be written or read: full disk, no permission ...
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {where}{e.strerror or e}" + _os_hint(e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
