"""Content fingerprints of input files, for cache keys.

Cache keys hash what a file *holds*, not where it lies or when it was written:
a data folder that is copied, re-mounted or moved (``../shared/data`` vs
an absolute path, fresh mtimes after every copy) keeps its cached
datasets and feature stores, while any change of content rebuilds them.
Digests are memoised per process on (path, size, mtime), so a file is read
once however often a key is computed.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


@functools.lru_cache(maxsize=65536)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return f"{size}:{h.hexdigest()}"


def file_digest(path: str | os.PathLike) -> str:
    """``"<size>:<sha1 of the bytes>"`` of ``path``, or ``"missing"`` when it cannot be read."""
    p = Path(path)
    try:
        st = p.stat()
        return _digest(str(p.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        return "missing"
