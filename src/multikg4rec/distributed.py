"""Data-parallel training on torch.distributed (docs/distributed.md).

Launched the standard way, ``torchrun --nproc_per_node N -m multikg4rec train ...`` (or ``multikg4rec train
--nproc N``, which starts torchrun's launcher itself): one process per rank, gloo on CPU, NCCL on CUDA.

* Every rank holds the whole model and graph (full propagation, as one process does) and draws the same
  seeded epoch of BPR and KG batches; rank r trains batches r, r + N, r + 2N, ... of it, so the ranks see
  disjoint shards and an optimiser step covers N batches: the global batch is N x ``batch_size`` and an
  epoch has 1/N as many steps. Gradients are averaged over the ranks that had a batch in the step (a tail
  step may have fewer); a parameter no rank touched keeps no gradient, as in one process. The learning rate
  is not rescaled (``learning_rate`` applies to the global batch; Adam's step size does not grow with it).
* Every step ends with identical parameters on every rank; the torch RNG (dropout) is the same on all ranks
  and re-synchronised from rank 0 after each epoch, so a checkpoint written by rank 0 resumes every rank.
* Evaluation is sharded by user (rank r scores users r, r + N, ...); the per-user metrics are gathered and
  averaged in user order, which is exactly what one process computes (``tests/test_distributed.py``).
* Rank 0 alone writes the run directory (checkpoints atomically, logs, metrics); the others wait for it.

With one process (no launcher) none of this runs: a run is today's run to every digit.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_env(device: str | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment); a no-op otherwise.
    Returns (rank, world size)."""
    n = int(os.environ.get("WORLD_SIZE", "1"))
    if n > 1 and not dist.is_initialized():
        backend = "nccl" if (device or "").startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return world()


def local_device(device: str | None) -> str | None:
    """``cuda`` on a multi-GPU launch means this rank's GPU (``LOCAL_RANK``)."""
    if device == "cuda" and world()[1] > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def shutdown() -> None:
    """Leave the process group once every rank is done (exiting with it open can abort the process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    if world()[1] == 1:
        return [obj]
    out = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (they start equal from the seed; this makes sure)."""
    if world()[1] == 1:
        return
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)


def sync_rng() -> None:
    """Rank 0's torch RNG state on every rank."""
    if world()[1] == 1:
        return
    state = broadcast_object(torch.get_rng_state())
    torch.set_rng_state(state)


def average_gradients(params: list[torch.nn.Parameter], active: bool, bad: bool = False) -> bool:
    """All-reduce the gradients of ``params`` in one flat buffer: the mean over the ranks that had a batch
    (``active``); a parameter with no gradient on any rank keeps none. Returns True when some rank saw a
    non-finite loss (``bad``), so that every rank stops together."""
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                     + [torch.tensor([float(p.grad is not None) for p in params], device=params[0].device),
                        torch.tensor([float(active), float(bad)], device=params[0].device)])
    dist.all_reduce(flat)
    has, (n_active, n_bad) = flat[-2 - len(params):-2], flat[-2:].tolist()
    off = 0
    for p, h in zip(params, has.tolist()):
        n = p.numel()
        p.grad = flat[off:off + n].view_as(p).div_(max(n_active, 1.0)) if h > 0 else None
        off += n
    return n_bad > 0


def all_sum(values: list[float]) -> list[float]:
    if world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def merge_eval(parts: list):
    """One :class:`~multikg4rec.evaluation.EvalResult` from the ranks' results on their user shards (each with
    per-user values): per-user arrays concatenated in user order, metrics their means (one process's)."""
    from .evaluation import EvalResult
    users = np.concatenate([p.per_user["users"] for p in parts])
    order = np.argsort(users, kind="stable")
    keys = [k for k in parts[0].per_user if k != "users"]
    per = {k: np.concatenate([p.per_user[k] for p in parts])[order] for k in keys}
    n = len(users)
    res = EvalResult(metrics={k: (float(v.mean()) if n else float("nan")) for k, v in per.items()}, n_users=n,
                     per_user={"users": users[order], **per})
    if parts[0].topk is not None:
        res.topk = np.concatenate([p.topk for p in parts])[order]
        res.topk_users = users[order]
    return res
