"""Process-level settings of a run: torch threads, the C allocator, flush-to-zero, the seeds,
and the process's peak memory.

Why the allocator (bench/results/allocator.md): a graph model's training step
allocates and frees dozens of (n_nodes, d) tensors, each a few MB. glibc's malloc
serves blocks above its mmap threshold with fresh ``mmap`` pages and returns freed
heap tops to the system, so every step page-faults those tensors in again.
:func:`tune_allocator` raises glibc's mmap and trim thresholds to 1 GiB with
``mallopt`` so freed blocks are reused: fewer page faults and a shorter step. It
changes no number a run computes, only where its buffers live. It is a no-op where
the C library is not glibc. The same for any process, RecBole included:
``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import random
import resource

import numpy as np
import torch

log = logging.getLogger(__name__)

#: glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: both thresholds, bytes: 1 GiB (a (n_nodes, d) float tensor of the CKGs here is 4-10 MB)
THRESHOLD = 1 << 30

_tuned = False


@functools.cache
def _libc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring). Returns
    whether it took effect (False on a non-glibc C library)."""
    global _tuned
    if _tuned:
        return True
    libc = _libc()
    if libc is None:
        return False
    try:
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD))
    except AttributeError:
        return False
    _tuned = ok
    log.debug("glibc malloc thresholds raised to %d bytes: %s", THRESHOLD, ok)
    return ok


#: the largest torch thread count this process has used (torch's default, or a run's ``threads``): torch's
#: OpenMP pool may hold that many threads, each with its own flush-to-zero flag
_pool_threads = torch.get_num_threads()


def flush_denormal(on: bool) -> bool:
    """Treat denormal floats (|x| < 1.2e-38 in float32) as zero in CPU arithmetic (x86 FTZ/DAZ through
    ``torch.set_flush_denormal``), or stop. Arithmetic on denormals takes a slow path on x86 CPUs, and training
    can fill a step with them (ConvNCF; why: ``bench/results/convncf_memory.md``, docs/baselines.md). Like
    ``threads`` it is a process setting, not in the run hash: like the thread count it moves results in their
    last bits only (it zeroes values below 1.2e-38). Returns whether the CPU supports it.
    ``torch.set_flush_denormal`` sets it for the calling thread only; with ``threads`` > 1
    it is also set on each thread of torch's OpenMP pool (:func:`_on_each_omp_thread`), which computes the
    other threads' shares of every op (without that, half of a 2-thread op stayed unflushed; tested)."""
    global _pool_threads
    ok = bool(torch.set_flush_denormal(on))
    _pool_threads = max(_pool_threads, torch.get_num_threads())
    # every pool thread, also when this run uses 1 thread: an earlier run's setting must not linger there
    if ok and _pool_threads > 1 and not _on_each_omp_thread(lambda: torch.set_flush_denormal(on), _pool_threads):
        log.warning("flush_denormal: torch's OpenMP library not found; only the main thread flushes "
                    "denormals (use threads: 1)")
    return ok


def _on_each_omp_thread(fn, n: int) -> bool:
    """Run ``fn()`` once on each of ``n`` threads of torch's GNU OpenMP pool (``GOMP_parallel`` through
    ctypes), e.g. to set a per-thread CPU flag. False where torch's libgomp is not loaded."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = sorted({line.split()[-1] for line in f if "libgomp" in line.rsplit("/", 1)[-1]})
    except OSError:
        return False
    torch_dir = os.path.dirname(torch.__file__) + os.sep            # other wheels (scikit-learn, ...) bring
    paths = [p for p in paths if p.startswith(torch_dir)] or paths  # their own libgomp with its own pool
    if len(paths) != 1:
        return False
    gomp = ctypes.CDLL(paths[0])                                    # the library torch loaded (same handle)
    callback_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    callback = callback_type(lambda _: fn())
    gomp.GOMP_parallel.argtypes = [callback_type, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    gomp.GOMP_parallel.restype = None
    gomp.GOMP_parallel(callback, None, n, 0)
    return True


def release_memory() -> None:
    """Give the memory freed so far back to the system (``gc.collect`` + glibc ``malloc_trim``), e.g. between
    two runs of a sweep, so that the next run's peak RSS is its own and not the previous run's leftovers."""
    import gc
    gc.collect()
    libc = _libc()
    if libc is not None:
        try:
            libc.malloc_trim(0)
        except AttributeError:
            pass


def configure(cfg: dict) -> None:
    """Apply a run config's process settings: ``threads`` (torch intra-op threads,
    null = torch's default), ``tune_allocator`` (default true) and ``flush_denormal`` (default false; set for
    every run, so a sweep's earlier run does not leave it on for the next)."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    flush_denormal(bool(cfg.get("flush_denormal", False)))
    if cfg.get("tune_allocator", True):
        tune_allocator()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_rss_mb() -> float:
    """Peak resident memory of this process since the last :func:`reset_peak_rss` (Linux
    ``VmHWM``), else since it started (``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start a new peak-memory window (Linux: ``clear_refs`` 5 resets ``VmHWM``), so that
    several runs in one process (a sweep) each report their own peak; the memory the previous
    run freed is first handed back to the system (:func:`runtime.release_memory`)."""
    release_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
