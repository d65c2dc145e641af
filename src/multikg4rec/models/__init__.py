"""Model registry: models are found by name; each model's defaults live in
``configs/model/<name>.yaml``."""
from __future__ import annotations

import importlib

from ..errors import UserError
from .base import KnowledgeRecommender, Recommender

# name -> module under multikg4rec.models (imported lazily so a broken optional
# model never breaks the others)
MODELS = {
    "bprmf": "bprmf",
    "lightgcn": "lightgcn",
    "kgat": "kgat",
    "cke": "cke",
    "kgcn": "kgcn",
    "spectralcf": "spectralcf",
    "convncf": "convncf",
    "mkgat": "mkgat",
    "multikg4rec": "multikg4rec",
    "content_knn": "content_knn",
    "dropoutnet": "dropoutnet",
}


def available_models() -> list[str]:
    out = []
    for name, mod in MODELS.items():
        if importlib.util.find_spec(f"{__name__}.{mod}") is not None:
            out.append(name)
    return out


def get_model_class(name: str) -> type[Recommender]:
    key = name.lower()
    if key not in available_models():
        import difflib
        hint = difflib.get_close_matches(key, available_models(), 1)
        raise UserError(f"unknown model {name!r}" + (f" (did you mean {hint[0]}?)" if hint else "")
                        + f"; available: {', '.join(available_models())}")
    module = importlib.import_module(f"{__name__}.{MODELS[key]}")
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, Recommender) and obj.name == key:
            return obj
    raise UserError(f"module {module.__name__} defines no Recommender named {key!r}")


def model_features(cfg: dict, dataset):
    """The content features the model of ``cfg`` is built with, from the feature store: ``{m: (x, mask)}``;
    None for a model without features (or ``features: random``, built inside the model). Checks first that
    the dataset has what the model needs."""
    cls = get_model_class(cfg["model"])
    if cls.requires_kg and not dataset.has_kg:
        raise UserError(f"model {cfg['model']!r} needs a knowledge graph; dataset {dataset.name!r} has none")
    if not cls.uses_features or cfg.get("features") == "random":
        return None
    from ..features import load_model_features
    return load_model_features(dataset, cfg)


def build_model(cfg: dict, dataset, features=None, **inputs) -> Recommender:
    """The model of ``cfg`` on ``dataset``; its features loaded (:func:`model_features`) when it uses them
    and none are given. ``inputs``: further constructor arguments (fold-in: ``fold_in_inputs``)."""
    cls = get_model_class(cfg["model"])
    if features is None:
        features = model_features(cfg, dataset)
    try:
        return cls(dataset, cfg, features=features, **inputs) if cls.uses_features else cls(dataset, cfg, **inputs)
    except ValueError as e:        # the layers check their arguments: from a config, that is bad input
        raise UserError(f"{cfg['model']}: {e}") from None


__all__ = ["Recommender", "KnowledgeRecommender", "available_models", "build_model", "get_model_class",
           "model_features"]
