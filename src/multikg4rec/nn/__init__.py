"""Graph and fusion layers shared by the models (each piece exists once here).

* :mod:`.transr` -- :class:`TransR`: ``e_r``, ``W_r``, ``g(h, r, t)`` and the pairwise KG loss.
* :mod:`.attention` -- :class:`KnowledgeAwareAttention`: ``pi(h, r, t)`` and its softmax over
  each head's triples, as an attention adjacency.
* :mod:`.aggregators` -- :class:`MessageDropout`, :class:`Aggregator` (Bi-Interaction / GCN /
  GraphSAGE) and :class:`KGPropagation` (L layers, each L2-normalised and concatenated).
* :mod:`.sparse` -- :class:`SparseAdjacency` (CSR + cached transpose, differentiable SpMM),
  :func:`propagate`, :func:`normalized_bipartite_adjacency`.
* :mod:`.fusion` -- the Bi-Transformer of Multi-KG4Rec and the BFS sequences it reads.
* :mod:`.functional` -- :func:`segment_softmax`, :func:`sum_of_squares`.

Node ids are whatever the caller uses (for the CKG: entities then users, as ``Dataset.ckg()``);
the layers own no node embeddings, so a model may keep one table per modality and reuse one
attention structure for all of them. Gathers that carry gradients use ``index_select``: its
backward is deterministic on CPU, where the backward of ``x[idx]`` with repeated ids
accumulates in a thread-dependent order, so training is bit-for-bit reproducible.
"""
from .aggregators import AGGREGATORS, Aggregator, KGPropagation, MessageDropout
from .attention import KnowledgeAwareAttention
from .functional import segment_softmax, sum_of_squares
from .sparse import SparseAdjacency, normalized_bipartite_adjacency, propagate
from .transr import TransR

__all__ = ["AGGREGATORS", "Aggregator", "KGPropagation", "MessageDropout", "KnowledgeAwareAttention",
           "segment_softmax", "sum_of_squares", "SparseAdjacency", "normalized_bipartite_adjacency",
           "propagate", "TransR"]
