"""The multimodal fusion module of Multi-KG4Rec (docs/model.md §3).

Two parts:

* :func:`bfs_sequences` builds, for every item, the node sequence S_i: a
  breadth-first walk over the collaborative KG from the item (the item first,
  then its 1-hop users and attributes, then 2-hop nodes, ...), cut or padded to
  N nodes (docs/model.md §3.1). Nodes at the same hop distance are sampled
  uniformly with a seeded generator. The walk runs over all items at once with
  sparse-matrix frontier expansion (scipy), never node by node.
* :class:`BiTransformer` fuses the per-modality rows of those sequences with
  cross-modal multi-head attention: each modality's queries attend over the
  keys and values of its own modality AND of the other modality, concatenated
  along the sequence axis (docs/model.md (7)-(10)). The output row of the item
  itself (position 0) is its fused feature z_i^m (docs/model.md (11)).

Modes of the cross-modal attention (``mode``; Multi-KG4Rec's ``fusion`` key, docs/model.md Options):

====== =============================================================
``bi``   every modality attends over all modalities (the full model)
``t2v``  only text queries attend to visual keys/values; the visual
         side is self-attention only
``v2t``  only visual queries attend to text keys/values; the text side
         is self-attention only
``none`` no cross-modal attention: each modality self-attends (two
         independent transformers); alias ``self``
====== =============================================================

With a single modality, every mode reduces to self-attention. (Multi-KG4Rec's
``fusion: none`` builds no Bi-Transformer at all; ``fusion: self`` is the row above.)
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from .aggregators import MessageDropout

__all__ = ["bfs_sequences", "adjacency", "CrossModalAttention", "BiTransformerBlock", "BiTransformer",
           "VISUAL_NAMES", "TEXT_NAMES", "MODES"]

MODES = ("bi", "t2v", "v2t", "none", "self")
#: modality names that play the "visual" (v) and "text" (t) roles of the t2v / v2t ablations
VISUAL_NAMES = ("image", "visual", "v", "poster", "cover")
TEXT_NAMES = ("text", "t", "description", "title")


# --------------------------------------------------------------------------- BFS sequences

def adjacency(graph, n_nodes: int | None = None) -> sp.csr_matrix:
    """Binary symmetric (n_nodes, n_nodes) CSR adjacency of a graph.

    ``graph`` is a :class:`~multikg4rec.data.CKG`, a scipy sparse matrix, or a
    ``(head, tail)`` pair of int arrays (then ``n_nodes`` is required or
    inferred). Edges are made undirected (the CKG already holds inverses).
    """
    if sp.issparse(graph):
        a = sp.csr_matrix(graph, dtype=np.float32)
        n_nodes = a.shape[0]
    else:
        if hasattr(graph, "head") and hasattr(graph, "tail"):
            head, tail = np.asarray(graph.head), np.asarray(graph.tail)
            n_nodes = int(getattr(graph, "n_nodes", n_nodes or 0)) or None
        else:
            head, tail = (np.asarray(x) for x in graph)
        head = head.astype(np.int64)
        tail = tail.astype(np.int64)
        if n_nodes is None:
            n_nodes = int(max(head.max(initial=-1), tail.max(initial=-1))) + 1
        a = sp.csr_matrix((np.ones(len(head), dtype=np.float32), (head, tail)), shape=(n_nodes, n_nodes))
    a = (a + a.T).tocsr()
    a.sum_duplicates()
    a.data[:] = 1.0
    a.sort_indices()
    return a


def _isin_sorted(q: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(len(q), dtype=bool)
    pos = np.searchsorted(sorted_keys, q)
    pos[pos == len(sorted_keys)] = 0
    return sorted_keys[pos] == q


def bfs_sequences(graph, items, n: int = 16, seed: int = 0, n_nodes: int | None = None,
                  max_hops: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BFS node sequences S_i over the CKG for every start node in ``items`` (docs/model.md §3.1).

    Row s of the result is: ``items[s]``, then nodes at hop distance 1 from it, then
    hop 2, ..., cut at ``n`` nodes. When a hop holds more nodes than the free slots,
    the slots go to a uniform sample of that hop (random priority keys from
    ``np.random.default_rng(seed)``: reproducible). The frontier of the next hop is
    the WHOLE current hop (true BFS distance), not only the sampled nodes.

    Vectorised over all start nodes: hop h+1 candidates of every unfinished row are
    one sparse product ``frontier @ A``; visited nodes are removed with a sorted-key
    membership test; sampling is one ``lexsort`` by (row, random key).

    Args:
        graph: a ``CKG``, a scipy (n_nodes, n_nodes) adjacency, or a (head, tail) pair.
        items: start node ids (CKG ids; item ``i`` is node ``i``), shape (S,).
        n: sequence length N (cut or pad).
        seed: seed of the sampling among equal-hop nodes.
        max_hops: stop after this many hops (default: until full or exhausted).

    Returns:
        ``seq``: LongTensor (S, n) of node ids; padded positions repeat the start node.
        ``mask``: BoolTensor (S, n), True where the position holds a real node
        (False = padding; use it as the key padding mask).
    """
    a = graph if (sp.isspmatrix_csr(graph) and graph.has_sorted_indices) else adjacency(graph, n_nodes)
    n_nodes = a.shape[0]
    items = np.asarray(items.cpu().numpy() if torch.is_tensor(items) else items, dtype=np.int64).reshape(-1)
    S = len(items)
    rng = np.random.default_rng(seed)
    seq = np.repeat(items[:, None], n, axis=1)
    mask = np.zeros((S, n), dtype=bool)
    mask[:, 0] = True
    filled = np.ones(S, dtype=np.int64)
    visited = np.arange(S, dtype=np.int64) * n_nodes + items                       # keys row * n_nodes + node (sorted)
    frontier = sp.csr_matrix((np.ones(S, dtype=np.float32), (np.arange(S), items)), shape=(S, n_nodes))
    hop = 0
    while n > 1:
        hop += 1
        if max_hops is not None and hop > max_hops:
            break
        live = np.flatnonzero((filled < n) & (np.diff(frontier.indptr) > 0))
        if len(live) == 0:
            break
        cand = (frontier[live] @ a).tocsr()                                        # (len(live), n_nodes)
        cand.sort_indices()
        rows = np.repeat(live, np.diff(cand.indptr))                               # global row of each entry
        cols = cand.indices.astype(np.int64)
        keys = rows * n_nodes + cols
        new = ~_isin_sorted(keys, visited)
        rows, cols, keys = rows[new], cols[new], keys[new]
        if len(rows) == 0:
            break
        # visited keys and the new hop's keys are both sorted and disjoint: a stable sort merges the two
        # runs; rows that are now full never need their visited set again
        visited = np.sort(np.concatenate([visited, keys]), kind="stable")
        # sample: order each row's candidates by a random priority, keep the first `free` ones
        prio = rng.random(len(rows))
        order = np.lexsort((prio, rows))
        rows_o, cols_o = rows[order], cols[order]
        counts = np.bincount(rows_o, minlength=S)
        start = np.cumsum(counts) - counts
        rank = np.arange(len(rows_o)) - start[rows_o]
        take = rank < (n - filled)[rows_o]
        pos = filled[rows_o[take]] + rank[take]
        seq[rows_o[take], pos] = cols_o[take]
        mask[rows_o[take], pos] = True
        filled += np.minimum(counts, n - filled)
        visited = visited[filled[visited // n_nodes] < n]
        # next frontier: the whole hop (rows sorted, cols sorted within a row)
        frontier = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(S, n_nodes))
    return torch.from_numpy(seq), torch.from_numpy(mask)


# --------------------------------------------------------------------------- Bi-Transformer

def _roles(modalities: list[str]) -> tuple[str | None, str | None]:
    """Which modality plays the visual (v) and which the text (t) role."""
    v = next((m for m in modalities if m.lower() in VISUAL_NAMES), None)
    t = next((m for m in modalities if m.lower() in TEXT_NAMES), None)
    if len(modalities) == 2 and (v is None or t is None or v == t):
        v, t = modalities[0], modalities[1]   # by position: first = v role, second = t role
    return v, t


def attention_sources(modalities: list[str], mode: str) -> dict[str, list[str]]:
    """For each query modality, the modalities whose keys/values it attends over.

    The list keeps the order of ``modalities`` (the order of the key blocks in the
    attention weights); the attention output does not depend on it, since the
    softmax runs over the union of the blocks ([K_v ; K_t] or [K_t ; K_v] alike).
    """
    if mode not in MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; expected one of {MODES}")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"duplicate modality in {modalities}")
    allowed = {m: {m} for m in modalities}
    if len(modalities) >= 2 and mode == "bi":
        allowed = {m: set(modalities) for m in modalities}
    elif len(modalities) >= 2 and mode in ("t2v", "v2t"):
        if len(modalities) != 2:
            raise ValueError(f"fusion mode {mode!r} needs exactly two modalities (visual, text); got {modalities}")
        v, t = _roles(modalities)
        if mode == "t2v":
            allowed[t] = {t, v}      # text queries over [K_t ; K_v]; visual side self-attention only
        else:
            allowed[v] = {v, t}      # visual queries over [K_v ; K_t]; text side self-attention only
    return {m: [s for s in modalities if s in allowed[m]] for m in modalities}


class CrossModalAttention(nn.Module):
    """Per-modality multi-head attention whose keys/values may span several modalities (docs/model.md (7)-(9)).

    For query modality a with key sources {a, b}:
    ``head_a^j = softmax( Q_a^j [K_a^j ; K_b^j]^T / sqrt(d_k) ) [V_a^j ; V_b^j]``,
    ``MHA_a = Concat(head_a^1..H) W_O^a``, padded keys masked out. Projections have no
    bias, as written in docs/model.md (7); ``w_kv[m]`` holds ``[W_K^m | W_V^m]`` in one matrix
    (all heads side by side: head j uses columns ``j*d_k:(j+1)*d_k`` of each).
    """

    def __init__(self, modalities: list[str], d: int = 64, heads: int = 8, mode: str = "bi"):
        super().__init__()
        if d % heads:
            raise ValueError(f"embedding size {d} is not divisible by {heads} heads")
        self.modalities = list(modalities)
        self.d, self.heads, self.dk = d, heads, d // heads
        self.sources = attention_sources(self.modalities, mode)
        self.w_q = nn.ModuleDict({m: nn.Linear(d, d, bias=False) for m in self.modalities})
        self.w_kv = nn.ModuleDict({m: nn.Linear(d, 2 * d, bias=False) for m in self.modalities})
        self.w_o = nn.ModuleDict({m: nn.Linear(d, d, bias=False) for m in self.modalities})
        for lin in (*self.w_q.values(), *self.w_kv.values(), *self.w_o.values()):
            nn.init.xavier_uniform_(lin.weight)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.heads, self.dk).transpose(1, 2)                # (B, H, L, d_k)

    def forward(self, x: dict[str, torch.Tensor], mask: torch.Tensor | None = None,
                n_queries: int | None = None, need_weights: bool = False):
        """x[m]: (B, N, d) rows of modality m; mask: (B, N) bool, True = real node.

        Only the first ``n_queries`` positions are queries (all by default).
        Returns ``out`` (dict m -> (B, n_queries, d)) and, with ``need_weights``,
        ``weights`` (dict m -> (B, H, n_queries, N * len(sources[m])), the key blocks
        in the order of ``self.sources[m]``), else None.
        """
        kv = {m: self.w_kv[m](x[m]) for m in self.modalities}                      # Equation (7): X_m [W_K^m | W_V^m]
        q = {m: self._split(self.w_q[m](x[m] if n_queries is None else x[m][:, :n_queries]))
             for m in self.modalities}                                                # Equation (7): Q_m^j
        groups: dict[tuple, list[str]] = {}       # query modalities that share one key set (all of them in "bi")
        for m in self.modalities:
            groups.setdefault(tuple(self.sources[m]), []).append(m)
        heads, weights = {}, ({} if need_weights else None)
        for src, queries in groups.items():
            kv_cat = torch.cat([kv[s] for s in src], dim=1) if len(src) > 1 else kv[src[0]]  # [K_a ; K_b], [V_a ; V_b]
            # unbind, not two slices: its backward stacks the two gradients, where each slice's fills a zero
            # buffer of kv_cat's size
            keys, vals = (self._split(t) for t in kv_cat.unflatten(-1, (2, self.d)).unbind(-2))
            key_mask = None if mask is None else mask.repeat(1, len(src))[:, None, None, :]
            if need_weights:
                for m in queries:
                    scores = q[m] @ keys.transpose(-1, -2) / math.sqrt(self.dk)
                    if key_mask is not None:
                        scores = scores.masked_fill(~key_mask, float("-inf"))
                    weights[m] = torch.softmax(scores, dim=-1)                       # Equation (8)
                    heads[m] = weights[m] @ vals                                       # Equation (8): head_m^j
            else:   # Equation (8) with the fused kernel, the group's queries stacked into one call
                h = F.scaled_dot_product_attention(torch.cat([q[m] for m in queries], dim=2), keys, vals,
                                                   attn_mask=key_mask)
                heads.update(zip(queries, h.split([q[m].shape[2] for m in queries], dim=2)))
        out = {}
        for m in self.modalities:
            B, H, L, dk = heads[m].shape
            out[m] = self.w_o[m](heads[m].transpose(1, 2).reshape(B, L, H * dk))     # Equation (9)
        return out, weights


class BiTransformerBlock(nn.Module):
    """One block (docs/model.md (10)): ``x = LN(x + MHA(x)); x = LN(x + FFN(x))``, per modality,
    ``FFN(x) = W_2 ReLU(W_1 x + b_1) + b_2``.

    ``dropout`` acts on the two residual branches (MHA and FFN outputs), not on the
    attention probabilities: that keeps the fused attention kernel, whose CPU
    version falls back to a much slower path when asked for attention dropout. It is
    :class:`~multikg4rec.nn.MessageDropout` (inverted dropout, 16 random bits per
    element; why: bench/results/kg_epoch.md).
    """

    def __init__(self, modalities: list[str], d: int = 64, heads: int = 8, mode: str = "bi",
                 ffn_dim: int = 128, dropout: float = 0.1):
        super().__init__()
        self.modalities = list(modalities)
        self.attn = CrossModalAttention(modalities, d, heads, mode)
        self.norm1 = nn.ModuleDict({m: nn.LayerNorm(d) for m in self.modalities})
        self.norm2 = nn.ModuleDict({m: nn.LayerNorm(d) for m in self.modalities})
        self.ffn = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, ffn_dim), nn.ReLU(), nn.Linear(ffn_dim, d))
                                  for m in self.modalities})
        for seq in self.ffn.values():                       # Xavier weights, zero biases (docs/model.md §6)
            for lin in (seq[0], seq[2]):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)
        self.dropout = MessageDropout(dropout)

    def forward(self, x, mask=None, n_queries=None, need_weights=False):
        att, weights = self.attn(x, mask, n_queries, need_weights)
        out = {}
        for m in self.modalities:
            res = x[m] if n_queries is None else x[m][:, :n_queries]
            h = self.norm1[m](res + self.dropout(att[m]))                            # Equation (10): LN(x + MHA(x))
            out[m] = self.norm2[m](h + self.dropout(self.ffn[m](h)))                  # Equation (10): LN(x + FFN(x))
        return out, weights


class BiTransformer(nn.Module):
    """The Bi-Transformer of docs/model.md §3 ((7)-(11)): ``blocks`` stacked :class:`BiTransformerBlock`.

    >>> bt = BiTransformer(["image", "text"], d=64, heads=8, blocks=3, mode="bi")
    >>> fused = bt({"image": V, "text": T}, mask)        # dict m -> (B, d): the item rows

    Args:
        modalities: modality names (1 or 2 for the paper; more work in ``bi``/``none``).
        mode: ``bi`` | ``t2v`` | ``v2t`` | ``none`` (see the module docstring).
        output_gain: initial gain of the LAST LayerNorm (learned afterwards). A LayerNorm
            output has unit variance per element, i.e. a row norm of about sqrt(d); 1.0
            keeps that, ``1 / sqrt(d)`` starts the fused rows at norm ~1, the scale of
            the ID / projected rows they join in the CKG (docs/model.md §3.3).
    """

    def __init__(self, modalities: list[str], d: int = 64, heads: int = 8, blocks: int = 3,
                 mode: str = "bi", ffn_dim: int = 128, dropout: float = 0.1, output_gain: float = 1.0):
        super().__init__()
        self.modalities = list(modalities)
        self.mode = mode
        self.blocks = nn.ModuleList(BiTransformerBlock(modalities, d, heads, mode, ffn_dim, dropout)
                                    for _ in range(blocks))
        if blocks:
            for norm in self.blocks[-1].norm2.values():
                nn.init.constant_(norm.weight, float(output_gain))
        self.sources = self.blocks[0].attn.sources if blocks else attention_sources(self.modalities, mode)

    def forward(self, x: dict[str, torch.Tensor], mask: torch.Tensor | None = None, all_rows: bool = False,
                need_weights: bool = False):
        """x[m]: (B, N, d); mask: (B, N) bool, True = real node (position 0 must be real).

        Returns dict m -> (B, d), the output row of position 0 (the item itself: its
        fused feature z_i^m); with ``all_rows`` dict m -> (B, N, d). The last block
        computes only the rows that are returned. With ``need_weights`` returns
        ``(out, weights)`` where ``weights`` is a list (one per block) of dicts
        m -> (B, H, n_queries, N * len(self.sources[m])) attention probabilities.
        """
        weights = []
        for b, block in enumerate(self.blocks):
            last = b == len(self.blocks) - 1
            x, w = block(x, mask, None if (all_rows or not last) else 1, need_weights)
            if need_weights:
                weights.append(w)
        out = x if all_rows else {m: t[:, 0] for m, t in x.items()}                # Equation (11): z_i^m
        return (out, weights) if need_weights else out

    @torch.no_grad()
    def modality_attention(self, x, mask=None) -> dict[str, torch.Tensor]:
        """Attention mass the item row (position 0) puts on each modality's keys,
        averaged over blocks, heads and query modalities: dict m -> (B,), summing to 1
        over modalities for every item."""
        _, weights = self.forward(x, mask, need_weights=True)
        B = next(iter(x.values())).shape[0]
        N = next(iter(x.values())).shape[1]
        mass = {m: next(iter(x.values())).new_zeros(B) for m in self.modalities}
        count = 0
        for w in weights:
            for q, att in w.items():
                row = att[:, :, 0]                                                   # (B, H, N * k)
                for j, s in enumerate(self.sources[q]):
                    mass[s] += row[..., j * N:(j + 1) * N].sum(-1).mean(1)
                count += 1
        return {m: v / max(count, 1) for m, v in mass.items()}
