"""TransR (Lin et al., AAAI 2015): relation embeddings, projections, the plausibility
score and the pairwise KG loss (docs/model.md §2.3, equations (4)-(5); KGAT Eq. 1-2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .functional import sum_of_squares

__all__ = ["TransR"]


class TransR(nn.Module):
    """TransR (Lin et al., AAAI 2015) as used by KGAT and docs/model.md §2.

    Holds the relation embeddings ``e_r`` (``relation_emb``, (R, relation_dim)) and the
    projection matrices ``W_r`` (``W``, (R, entity_dim, relation_dim)); the entity
    embeddings are passed in, the caller owns them. Projection uses row vectors:
    ``W_r e`` of docs/model.md §2 is ``e @ W[r]`` here.

    ``g(h, r, t) = || W_r e_h + e_r - W_r e_t ||_2^2`` (docs/model.md (4); KGAT Eq. 1);
    lower is more plausible.
    """

    def __init__(self, n_relations: int, entity_dim: int, relation_dim: int):
        super().__init__()
        self.n_relations, self.entity_dim, self.relation_dim = n_relations, entity_dim, relation_dim
        self.relation_emb = nn.Parameter(torch.empty(n_relations, relation_dim))
        self.W = nn.Parameter(torch.empty(n_relations, entity_dim, relation_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.relation_emb)
        for w in self.W:  # xavier per relation matrix (fan_in = entity_dim, fan_out = relation_dim)
            nn.init.xavier_uniform_(w)

    def project_rows(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """``W_r e`` for k rows per relation: x (B, k, entity_dim), r (B,) int64 -> (B, k, relation_dim).

        Rows are grouped by relation and each group is one (k B_r, d_e) @ (d_e, d_r) matmul:
        no (B, d_e, d_r) gather of ``W``, and a deterministic
        backward (``bmm`` over gathered matrices accumulates its gradient in a
        thread-dependent order on CPU). When ``r`` is already sorted (``KGSampler``'s
        batches are) the groups are slices of ``x``; otherwise ``x`` is permuted into
        relation order and back."""
        b, k = x.shape[0], x.shape[1]
        order = None
        if b > 1 and not bool((r[1:] >= r[:-1]).all()):
            order = torch.argsort(r, stable=True)
            x, r = x.index_select(0, order), r.index_select(0, order)
        rels, counts = torch.unique_consecutive(r, return_counts=True)
        # unbind: ONE (R, d_e, d_r) gradient buffer in the backward; indexing W[k] per group would zero-fill
        # a full (R, d_e, d_r) tensor per group (why: bench/results/kgat_step.md)
        w = self.W.unbind(0)
        parts = [chunk @ w[rel] for chunk, rel in zip(x.reshape(b * k, -1).split((counts * k).tolist()),
                                                        rels.tolist())]
        out = (torch.cat(parts) if parts else x.new_zeros(0, self.relation_dim)).view(b, k, self.relation_dim)
        if order is not None:
            inv = torch.empty_like(order)
            inv[order] = torch.arange(b, device=order.device)
            out = out.index_select(0, inv)
        return out

    def project(self, emb: torch.Tensor, r: torch.Tensor, *more: torch.Tensor):
        """``W_r e`` with one relation per row. emb (and each of ``more``): (B, entity_dim),
        r: (B,) int64 -> (B, relation_dim) (a tuple when ``more`` is given)."""
        out = self.project_rows(torch.stack((emb, *more), 1), r).unbind(1)
        return out[0] if not more else out

    def score(self, h_emb: torch.Tensor, r: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """``g(h, r, t)``. h_emb, t_emb: (B, entity_dim); r: (B,) int64 -> (B,)."""
        ph, pt = self.project(h_emb, r, t_emb)
        return (ph + self.relation_emb.index_select(0, r) - pt).pow(2).sum(-1)          # docs/model.md (4)

    def loss(self, h_emb: torch.Tensor, r: torch.Tensor, pos_t_emb: torch.Tensor, neg_t_emb: torch.Tensor,
             reg_weight: float = 0.0) -> torch.Tensor:
        """Pairwise TransR loss (docs/model.md (5); KGAT Eq. 2), averaged over the batch:

        ``mean -ln sigma( g(h, r, t') - g(h, r, t) )
        + reg_weight * (||W_r e_h||^2 + ||e_r||^2 + ||W_r e_t||^2 + ||W_r e_t'||^2) / (2 B)``

        (docs/model.md (5) takes the batch mean where the paper sums: that only rescales the
        learning rate and keeps the loss independent of the batch size.)
        h_emb, pos_t_emb, neg_t_emb: (B, entity_dim); r: (B,) -> scalar.
        """
        return self.triple_loss(torch.stack((h_emb, pos_t_emb, neg_t_emb), 1), r, reg_weight)

    def triple_loss(self, rows: torch.Tensor, r: torch.Tensor, reg_weight: float = 0.0) -> torch.Tensor:
        """:meth:`loss` on stacked rows: rows (B, 3, entity_dim) = [e_h, e_t, e_t'] per triple
        (one gather of the three, e.g. ``table[torch.stack([h, t, t'], 1)]``), r: (B,) -> scalar.
        The two scores share ``W_r e_h + e_r`` and run as one (B, 2, d_r) tensor."""
        er = self.relation_emb.index_select(0, r)
        p = self.project_rows(rows, r)                                  # [W_r e_h, W_r e_t, W_r e_t']
        ph, pt = p.split([1, 2], 1)             # split, not slices: its backward is one cat, no zero-filled buffers
        g = ((ph + er.unsqueeze(1)) - pt).pow(2).sum(-1)                # docs/model.md (4): g(h, r, t), g(h, r, t')
        loss = -F.logsigmoid(g[:, 1] - g[:, 0]).mean()                  # docs/model.md (5), L_KG
        if reg_weight:
            loss = loss + reg_weight * (sum_of_squares(p) + sum_of_squares(er)) / (2 * rows.shape[0])
        return loss
