"""Configuration: plain dicts merged from YAML files and command-line overrides.

Precedence (later wins)::

    configs/default.yaml
    configs/dataset/<dataset>.yaml
    configs/model/<model>.yaml            (minus its `datasets:` section)
    configs/model/<model>.yaml `datasets: {<dataset>: {...}}`
    --config FILE                          (user file, any keys)
    --key value                            (command line)

Unknown keys are an error (a typo must not silently do nothing).
"""
from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path

import yaml

from .errors import UserError

CONFIG_ROOT = resources.files("multikg4rec") / "configs"

#: keys that describe where/how a run happens, not what it computes (excluded from the run hash)
NON_SEMANTIC_KEYS = {"threads", "tune_allocator", "flush_denormal", "output_dir", "data_dir", "cache_dir",
                     "eval_batch_size", "quiet"}


def _read_yaml(path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8") if not hasattr(path, "read_text") else path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of key: value")
    return data


def _packaged(kind: str, name: str) -> dict:
    f = CONFIG_ROOT / kind / f"{name}.yaml"
    return _read_yaml(f) if f.is_file() else {}


def parse_value(text: str):
    """Command-line values are YAML scalars/lists: '0.01' -> 0.01, '[64,32]' -> [64, 32], 'null' -> None."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def known_keys(model: str | None = None) -> set[str]:
    keys = set(_read_yaml(CONFIG_ROOT / "default.yaml"))
    keys |= {"model", "dataset", "output_dir", "data_dir", "cache_dir", "quiet", "features"}
    if model:
        keys |= set(_packaged("model", model)) - {"datasets"}
    return keys


def load_config(model: str, dataset: str, config_file: str | None = None,
                overrides: dict | None = None) -> dict:
    """The resolved config of one run (a plain dict)."""
    cfg = _read_yaml(CONFIG_ROOT / "default.yaml")
    cfg.update(_packaged("dataset", dataset))
    model_cfg = _packaged("model", model)
    per_dataset = model_cfg.pop("datasets", {}) or {}
    cfg.update(model_cfg)
    cfg.update(per_dataset.get(dataset, {}) or {})
    user = {}
    if config_file:
        user = _read_yaml(config_file)
        user.pop("datasets", None)
        user = {k: v for k, v in user.items() if not str(k).startswith("_")}  # "_key": annotations
    user.update(overrides or {})
    allowed = known_keys(model)
    unknown = sorted(set(user) - allowed)
    if unknown:
        import difflib
        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, allowed, 1)) else k
                 for k in unknown]
        raise UserError(f"unknown option(s) for model {model!r}: {', '.join(hints)}")
    check_types(cfg, user)
    cfg.update(user)
    check_ranges(cfg)
    check_values(cfg)
    cfg["model"], cfg["dataset"] = model, dataset
    cfg["device"] = resolve_device(cfg.get("device"))
    return cfg


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def check_types(defaults: dict, user: dict) -> None:
    """A value of the wrong kind for its key is a one-line error, not a traceback deep in a model: where the
    packaged default is a list, the value must be a list (``--layers [64,32`` is a broken list, not a string);
    where it is a number, a number (an integer where it is an integer). ``null`` is always accepted (it means
    "off" or "default" for the keys that allow it); booleans are not checked (some keys take a word besides)."""
    for key, value in user.items():
        default = defaults.get(key)
        if default is None or value is None or isinstance(default, bool):
            continue
        if isinstance(default, list) and not isinstance(value, list):
            raise UserError(f"{key}: expected a list such as {yaml.safe_dump(default, default_flow_style=True).strip()}, "
                            f"got {value!r}")
        if isinstance(default, (int, float)):
            if isinstance(value, str) and _NUMBER.match(value.strip()):
                value = user[key] = float(value)       # YAML 1.1 reads 1e-5 (no dot) as a string
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{key}: expected a number such as {default}, got {value!r}")
            if isinstance(default, int) and isinstance(value, float):
                if not value.is_integer():
                    raise UserError(f"{key}: expected a whole number such as {default}, got {value!r}")
                user[key] = int(value)                 # --epochs 3.0 is --epochs 3 (and the same run)


#: key -> (smallest allowed value, largest or None, what to say); keys absent or null are not checked
RANGES: dict[str, tuple[float, float | None, str]] = {
    "seed": (0, 2 ** 32 - 1, "a whole number from 0 to 2**32 - 1 (numpy's seed range)"),
    "split_seed": (0, 2 ** 32 - 1, "a whole number from 0 to 2**32 - 1 (numpy's seed range)"),
    "epochs": (1, None, "at least 1"), "batch_size": (1, None, "at least 1"), "kg_batch_size": (1, None, "at least 1"),
    "eval_batch_size": (1, None, "at least 1"), "eval_every": (1, None, "at least 1"),
    "patience": (1, None, "at least 1"), "save_topk": (1, None, "at least 1"), "threads": (1, None, "at least 1"),
    "embedding_size": (1, None, "at least 1"),
    "learning_rate": (float.fromhex("0x1p-1074"), None, "greater than 0"),
    "reg_weight": (0, None, "0 or more"), "kg_reg_weight": (0, None, "0 or more"), "weight_decay": (0, None, "0 or more"),
    "mess_dropout": (0, 1, "from 0 to 1"), "fusion_dropout": (0, 1, "from 0 to 1"),
}


def check_ranges(cfg: dict) -> None:
    """Values outside what their key means (a negative seed, zero epochs, a learning rate of 0) are a one-line
    error here, before a run directory is made, not a traceback from numpy or an empty run."""
    for key, (lo, hi, what) in RANGES.items():
        v = cfg.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (v < lo or (hi is not None and v > hi)):
            raise UserError(f"{key}: must be {what}, got {v!r}")


#: keys with a fixed set of values (checked where the resolved config has the key)
CHOICES: dict[str, tuple] = {
    "split": ("warm", "cold_item"),
    "kg_loss_triples": ("ckg", "kg"),
    "precision": ("fp32", "bf16"),
    "encoder": ("clip", "minilm+efficientnet", "minilm", "efficientnet", "precomputed"),
    "feature_fill": ("other_modality", "zeros"),
    "fusion": ("bi", "t2v", "v2t", "self", "none"),
    "item_id_embedding": (False, True, "fused", "channel"),
}
#: list keys whose elements must be whole numbers >= 1, or strings
INT_LISTS = ("topk", "layers", "channels")
STR_LISTS = ("modalities",)


def check_values(cfg: dict) -> None:
    """Keys with constrained values fail here, at start-up, with the key's name (not after an epoch): the split
    ratios, the validation metric (one the evaluator computes, at a K it computes), and list elements."""
    from .evaluation import METRICS
    for key, allowed in CHOICES.items():
        if key in cfg and cfg[key] is not None and cfg[key] not in allowed:
            raise UserError(f"{key}: must be one of {', '.join(str(a).lower() for a in allowed)}, got {cfg[key]!r}")
    ratio = cfg.get("split_ratio")
    if ratio is not None:
        if (not isinstance(ratio, list) or len(ratio) != 3
                or not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in ratio)):
            raise UserError(f"split_ratio: expected three numbers [train, valid, test] such as [0.8, 0.1, 0.1], "
                            f"got {ratio!r}")
        if any(r < 0 or r > 1 for r in ratio) or ratio[0] <= 0 or abs(sum(ratio) - 1) > 1e-6:
            raise UserError(f"split_ratio: each ratio must be in [0, 1], train above 0, and they must sum to 1; "
                            f"got {ratio!r} (sum {sum(ratio):g})")
    for key in INT_LISTS:
        v = cfg.get(key)
        if isinstance(v, list) and not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v):
            raise UserError(f"{key}: every element must be a whole number >= 1, got {v!r}")
    for key in STR_LISTS:
        v = cfg.get(key)
        if isinstance(v, list) and not all(isinstance(x, str) and x for x in v):
            raise UserError(f"{key}: every element must be a name such as image or text, got {v!r}")
        if isinstance(v, list) and len(set(v)) != len(v):
            raise UserError(f"{key}: {v!r} names a modality twice")
    topk = cfg.get("topk")
    if "topk" in cfg and (not isinstance(topk, list) or not topk):
        raise UserError(f"topk: expected a non-empty list of cut-offs such as [10, 20, 50], got {topk!r}")
    vm = cfg.get("valid_metric")
    if vm is not None:
        name, _, k = str(vm).partition("@")
        if name not in METRICS or not k.isdigit():
            raise UserError(f"valid_metric: expected <metric>@<K> with metric one of {', '.join(METRICS)}, "
                            f"e.g. ndcg@20; got {vm!r}")
        if isinstance(topk, list) and int(k) not in topk:
            raise UserError(f"valid_metric: {vm!r} needs K = {k} among topk {topk} (the cut-offs the evaluator "
                            f"computes); add it, e.g. --topk [{', '.join(map(str, sorted(set(topk) | {int(k)})))}]")


def resolve_device(device) -> str:
    """``device`` of a config as a torch device string: ``auto`` -> ``cuda`` when torch sees a GPU, else
    ``cpu``; a device torch cannot use is a one-line error (before any run directory is made)."""
    import torch
    name = "cpu" if device in (None, "") else str(device).strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"device: {device!r} is not a torch device (cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device: {name}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu "
                            f"(a CUDA build of torch==2.13.0 and a GPU are needed for cuda)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device: {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type != "cpu":
        raise UserError(f"device: {name}: only cpu and cuda are supported")
    return name


def config_hash(cfg: dict) -> str:
    """Hash of everything that changes a run's result: every key but ``NON_SEMANTIC_KEYS``. Two
    configs with the same hash describe the same run (``rundir.find_run`` matches stored configs
    by it); a new directory is named after it."""
    sem = {k: v for k, v in cfg.items() if k not in NON_SEMANTIC_KEYS}
    return hashlib.sha1(json.dumps(sem, sort_keys=True, default=str).encode()).hexdigest()[:8]


def dump_config(cfg: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg, sort_keys=True), encoding="utf-8")
