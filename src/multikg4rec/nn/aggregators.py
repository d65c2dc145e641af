"""Message dropout, the three aggregators and the L-layer propagation of the KG models
(docs/model.md §4-5; KGAT Eq. 6-11)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .sparse import SparseAdjacency, propagate

__all__ = ["AGGREGATORS", "MessageDropout", "Aggregator", "KGPropagation"]

AGGREGATORS = ("bi-interaction", "gcn", "graphsage")


class MessageDropout(nn.Module):
    """Inverted dropout, as ``nn.Dropout``, with a cheaper mask: each element's keep
    decision is one 16-bit lane of a 64-bit random word (one generator call per 4
    elements instead of one Bernoulli draw per element), and the kept elements are
    scaled by ``1 / (1 - p)`` with ``p`` rounded to a multiple of 1/65536 (0.1 ->
    0.100006), so the expectation is exactly preserved. Seeded by torch's generator,
    so deterministic like ``nn.Dropout``, but a different random stream. KGAT's CF
    step with each: bench/results/kgat_step.md."""

    def __init__(self, p: float = 0.1):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability {p} is not in [0, 1]")
        self.p = float(p)
        self._drop = round(self.p * 65536)                                # dropped lanes out of 65536

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self._drop == 0:
            return x
        if self._drop == 65536:
            return x * 0.0
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2 ** 63, None)
        lanes = words.view(torch.int16)[:n].view(x.shape)                 # uniform over [-32768, 32767]
        scale = 65536.0 / (65536 - self._drop)
        keep = (lanes >= self._drop - 32768).to(x.dtype).mul_(scale)      # P(keep) = 1 - drop / 65536
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Aggregator(nn.Module):
    """One propagation layer (KGAT Eq. 6-8; docs/model.md (14)-(15)), the variant chosen by ``kind``:

    * ``"bi-interaction"``: ``LeakyReLU(W1 (e_h + e_Nh)) + LeakyReLU(W2 (e_h * e_Nh))``
    * ``"gcn"``: ``LeakyReLU(W (e_h + e_Nh))``
    * ``"graphsage"``: ``LeakyReLU(W (e_h || e_Nh))``

    followed by message dropout (:class:`MessageDropout`). ``W`` are Linear layers with bias (Xavier weights,
    zero bias); LeakyReLU slope 0.2 (the KGAT release's ``tf.nn.leaky_relu``).
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "bi-interaction", dropout: float = 0.1,
                 negative_slope: float = 0.2):
        super().__init__()
        kind = kind.lower().replace("_", "-")
        if kind in ("bi", "bi-interaction", "biinteraction"):
            kind = "bi-interaction"
        if kind not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {kind!r}; choose one of {AGGREGATORS}")
        self.kind, self.in_dim, self.out_dim = kind, in_dim, out_dim
        self.negative_slope = negative_slope
        self.W1 = nn.Linear(2 * in_dim if kind == "graphsage" else in_dim, out_dim)
        self.W2 = nn.Linear(in_dim, out_dim) if kind == "bi-interaction" else None
        self.dropout = MessageDropout(dropout)
        for lin in (self.W1, self.W2):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, x_neigh: torch.Tensor) -> torch.Tensor:
        """x: (N, in_dim) = e_h; x_neigh: (N, in_dim) = e_{N_h} -> (N, out_dim)."""
        act = lambda z: F.leaky_relu(z, self.negative_slope)  # noqa: E731
        if self.kind == "bi-interaction":
            out = act(self.W1(x + x_neigh)) + act(self.W2(x * x_neigh))   # KGAT Eq. 8
        elif self.kind == "gcn":
            out = act(self.W1(x + x_neigh))                               # KGAT Eq. 6
        else:
            out = act(self.W1(torch.cat([x, x_neigh], dim=1)))            # KGAT Eq. 7
        return self.dropout(out)


class KGPropagation(nn.Module):
    """L propagation layers over an adjacency (docs/model.md (13)-(16); KGAT Eq. 9-11):

    ``e^(l+1) = Aggregator_l(e^(l), A e^(l))``, message dropout inside each layer;
    the output is ``e^(0) || norm(e^(1)) || ... || norm(e^(L))`` with ``norm`` the row
    L2 normalisation (the next layer takes the un-normalised ``e^(l+1)``, as KGAT).
    ``out_dim = in_dim + sum(dims)`` (64 + 64 + 32 + 16 = 176 with the defaults).
    """

    def __init__(self, in_dim: int = 64, dims=(64, 32, 16), kind: str = "bi-interaction", dropout: float = 0.1,
                 negative_slope: float = 0.2):
        super().__init__()
        dims = [int(d) for d in dims]
        sizes = [in_dim] + dims
        drops = list(dropout) if isinstance(dropout, (list, tuple)) else [float(dropout)] * len(dims)
        if len(drops) != len(dims):
            raise ValueError(f"{len(drops)} dropout values for {len(dims)} layers")
        self.layers = nn.ModuleList(Aggregator(sizes[k], sizes[k + 1], kind, drops[k], negative_slope)
                                    for k in range(len(dims)))
        self.in_dim, self.dims = in_dim, dims
        self.out_dim = in_dim + sum(dims)

    def forward(self, x: torch.Tensor, adj: SparseAdjacency, return_layers: bool = False,
                rows: torch.Tensor | None = None):
        """x: (N, in_dim) layer-0 embeddings; adj: (N, N) -> (N, out_dim)
        (or the list [e^(0), norm(e^(1)), ...] with ``return_layers``).

        ``rows`` (R,) distinct: return only those rows, (R, out_dim). Every layer but the
        last runs over all N nodes (each needs its neighbours' previous layer, and on
        the CKGs here nearly every node is within 2 hops of a user or an item); the
        last layer runs on the R rows only, with ``adj.row_slice(rows)``.
        Same values as ``forward(x, adj)[rows]`` in evaluation (in training the message
        dropout draws fewer numbers, so its stream differs). Timings of both steps:
        bench/results/kgat_step.md."""
        outs = [x if rows is None else x.index_select(0, rows)]
        h = x
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            if rows is not None and k == last:
                h = layer(h.index_select(0, rows), propagate(adj.row_slice(rows), h))   # KGAT Eq. 3 + 8, R rows
            else:
                h = layer(h, propagate(adj, h))                                         # KGAT Eq. 3 + 8
            outs.append(F.normalize(h if rows is None or k == last else h.index_select(0, rows),
                                    p=2, dim=1))                                        # docs/model.md §4: L2-normalised
        return outs if return_layers else torch.cat(outs, dim=1)                        # docs/model.md §5 / KGAT Eq. 11
