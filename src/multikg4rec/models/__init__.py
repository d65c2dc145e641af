"""Model registry: models are found by name; each model's defaults live in
``configs/model/<name>.yaml``."""
from __future__ import annotations

import importlib

from ..errors import UserError
from .base import Recommender

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


__all__ = ["Recommender", "available_models", "get_model_class"]
