"""Shared fixtures. Tests that need the real data read it from ../shared/data
(or $MULTIKG4REC_DATA) and skip, with the reason, when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MULTIKG4REC_DATA", REPO.parent / "shared" / "data"))

# one thread: deterministic, and 2 threads on a shared 2-core machine are several times slower
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (SHARED_DATA / "ml-100k" / "ml-100k.inter").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"real data not found at {SHARED_DATA}: CI must have ../shared/data")
        pytest.skip(f"real data not found at {SHARED_DATA} (set MULTIKG4REC_DATA or place ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def ml100k(data_dir, cache_dir):
    """ml-100k, ratings >= 3, as the experiments use it."""
    from multikg4rec.data import load_dataset
    return load_dataset("ml-100k", {"rating_threshold": 3, "seed": 2024}, data_dir=data_dir, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def ml100k_small(data_dir, cache_dir, tmp_path_factory):
    """A small real slice: the first 150 ml-100k users (by id) with their KG, for one-epoch model tests."""
    from multikg4rec.data import build_dataset, read_raw
    raw = read_raw("ml-100k", data_dir)
    users = sorted(raw.inter["user"].unique(), key=int)[:150]
    raw.inter = raw.inter[raw.inter["user"].isin(users)]
    return build_dataset(raw, {"rating_threshold": 3, "seed": 2024, "kg_hops": 1})
