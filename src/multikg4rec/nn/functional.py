"""Small tensor functions shared by the layers and the models."""
from __future__ import annotations

import torch

__all__ = ["segment_softmax", "sum_of_squares"]


def sum_of_squares(t: torch.Tensor) -> torch.Tensor:
    """``||t||^2`` over all elements, for the L2 terms. ``vector_norm(t)^2`` is one pass over
    ``t`` forward and one backward (``t.pow(2).sum()``: four); the gradient at t = 0 is 0."""
    return torch.linalg.vector_norm(t).square()


def segment_softmax(src: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax of ``src`` within each group of equal ``index`` (plain torch scatter).

    src: (E,) float; index: (E,) int64 in [0, num_segments) -> (E,), summing to 1 per
    non-empty group. Same result as ``torch_geometric.utils.softmax(src, index)``.
    """
    mx = torch.full((num_segments,), float("-inf"), dtype=src.dtype, device=src.device)
    mx = mx.scatter_reduce(0, index, src, reduce="amax", include_self=True)
    ex = (src - mx.index_select(0, index)).exp()
    den = torch.zeros(num_segments, dtype=src.dtype, device=src.device).index_add(0, index, ex)
    return ex / den.index_select(0, index)
