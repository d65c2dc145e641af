"""The fusion module (docs/model.md §3): BFS sequences and the Bi-Transformer's cross-modal attention."""
from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from multikg4rec.nn.fusion import BiTransformer, CrossModalAttention, adjacency, attention_sources, bfs_sequences


# --------------------------------------------------------------------------- BFS

def _tiny_graph():
    """item 0 -- users 5, 6 and attribute 3; item 1 -- user 6 and attribute 4; user 5 -- item 2;
    attribute 3 -- attribute 7; node 8 isolated. Undirected edges as (head, tail)."""
    edges = [(0, 5), (0, 6), (0, 3), (1, 6), (1, 4), (2, 5), (3, 7)]
    h = np.array([a for a, _ in edges])
    t = np.array([b for _, b in edges])
    return (h, t), 9


def _distances(adj: sp.csr_matrix, src: int) -> dict[int, int]:
    dist = {src: 0}
    q = deque([src])
    while q:
        u = q.popleft()
        for v in adj.indices[adj.indptr[u]:adj.indptr[u + 1]]:
            if int(v) not in dist:
                dist[int(v)] = dist[u] + 1
                q.append(int(v))
    return dist


def test_bfs_item_first_then_hops_in_order_with_padding():
    g, n = _tiny_graph()
    seq, mask = bfs_sequences(g, [0, 1, 8], n=10, seed=0, n_nodes=n)
    assert seq.shape == (3, 10) and mask.shape == (3, 10) and seq.dtype == torch.long and mask.dtype == torch.bool
    s0 = seq[0][mask[0]].tolist()
    assert s0[0] == 0
    assert set(s0[1:4]) == {3, 5, 6}                  # hop 1: users and attributes
    assert set(s0[4:7]) == {1, 2, 7}                  # hop 2
    assert s0[7:] == [4]                              # hop 3
    assert mask[0].tolist() == [True] * 8 + [False] * 2
    s1 = seq[1][mask[1]].tolist()
    assert s1[0] == 1 and set(s1[1:3]) == {4, 6} and s1[3] == 0
    assert set(s1[4:6]) == {3, 5} and set(s1[6:]) == {2, 7}  # hop 3, then hop 4
    assert mask[1].tolist() == [True] * 8 + [False] * 2
    # an isolated node: itself, then padding (padded slots repeat the start node)
    assert mask[2].tolist() == [True] + [False] * 9
    assert (seq[2] == 8).all()


def test_bfs_cut_at_n_and_seeded_sampling():
    # a star: item 0 with 20 neighbours; N = 6 keeps 5 of them
    h = np.zeros(20, dtype=np.int64)
    t = np.arange(1, 21)
    a1, _ = bfs_sequences((h, t), [0], n=6, seed=3)
    a2, _ = bfs_sequences((h, t), [0], n=6, seed=3)
    assert torch.equal(a1, a2)                        # reproducible
    assert a1[0, 0] == 0 and len(set(a1[0, 1:].tolist())) == 5 and set(a1[0, 1:].tolist()) <= set(range(1, 21))
    samples = {tuple(sorted(bfs_sequences((h, t), [0], n=6, seed=s)[0][0, 1:].tolist())) for s in range(10)}
    assert len(samples) > 1                           # the seed changes the sample among equal-hop nodes


def test_bfs_matches_reference_distances_on_a_random_graph():
    rng = np.random.default_rng(0)
    n_nodes = 60
    h = rng.integers(0, n_nodes, 90)
    t = rng.integers(0, n_nodes, 90)
    adj = adjacency((h, t), n_nodes)
    items = np.arange(10)
    N = 12
    seq, mask = bfs_sequences(adj, items, n=N, seed=1)
    for s, item in enumerate(items):
        dist = _distances(adj, int(item))
        nodes = seq[s][mask[s]].tolist()
        assert nodes[0] == item and len(set(nodes)) == len(nodes)
        d = [dist[v] for v in nodes]
        assert d == sorted(d)                                          # sorted by hop distance
        if len(nodes) < N:
            assert set(nodes) == set(dist)                             # the whole component
        else:
            last = d[-1]
            assert {v for v, k in dist.items() if k < last} <= set(nodes)  # every nearer node is in
        assert not mask[s][len(nodes):].any()


def test_bfs_accepts_a_ckg_and_is_vectorised_enough():
    from multikg4rec.data.dataset import CKG
    (h, t), n = _tiny_graph()
    ckg = CKG(torch.as_tensor(np.r_[h, t]), torch.zeros(2 * len(h), dtype=torch.long),
              torch.as_tensor(np.r_[t, h]), n_nodes=n, n_relations=2)
    a, ma = bfs_sequences(ckg, [0, 1], n=8, seed=0)
    b, mb = bfs_sequences((h, t), [0, 1], n=8, seed=0, n_nodes=n)
    assert torch.equal(a, b) and torch.equal(ma, mb)


# --------------------------------------------------------------------------- cross-modal attention

@torch.no_grad()
def _loop_attention(att: CrossModalAttention, x: dict, mask: torch.Tensor, m: str) -> torch.Tensor:
    """Plain loops over batch, head and query of docs/model.md §3:
    head_m^j = softmax(Q_m^j [K_m^j ; K_o^j]^T / sqrt(d_k)) [V_m^j ; V_o^j] over the real keys."""
    d, H = att.d, att.heads
    dk = d // H
    B, N, _ = x[m].shape
    src = [m] + [s for s in att.sources[m] if s != m]            # own block first, as written in docs/model.md §3
    out = torch.zeros(B, N, d)
    for b in range(B):
        for j in range(H):
            cols = slice(j * dk, (j + 1) * dk)
            Wq = att.w_q[m].weight.T[:, cols]
            Q = x[m][b] @ Wq
            K = torch.cat([x[s][b] @ att.w_kv[s].weight.T[:, :d][:, cols] for s in src])
            V = torch.cat([x[s][b] @ att.w_kv[s].weight.T[:, d:][:, cols] for s in src])
            keep = torch.cat([mask[b]] * len(src))
            for i in range(N):
                sc = torch.tensor([float(Q[i] @ K[r]) / math.sqrt(dk) for r in range(K.shape[0])])
                sc[~keep] = float("-inf")
                w = torch.softmax(sc, 0)
                out[b, i, cols] = w @ V
    return out @ att.w_o[m].weight.T


def _inputs(B=2, N=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {"image": torch.randn(B, N, d, generator=g), "text": torch.randn(B, N, d, generator=g)}
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, 3] = False
    mask[1, 2:] = False
    return x, mask


@pytest.mark.parametrize("mode", ["bi", "t2v", "v2t", "none"])
def test_cross_modal_attention_matches_loop(mode):
    torch.manual_seed(0)
    att = CrossModalAttention(["image", "text"], d=8, heads=2, mode=mode).eval()
    x, mask = _inputs()
    fast, _ = att(x, mask)
    slow, _ = att(x, mask, need_weights=True)
    for m in ("image", "text"):
        ref = _loop_attention(att, x, mask, m)
        real = mask[..., None].expand_as(ref)
        assert torch.allclose(fast[m][real], ref[real], atol=1e-5)   # SDPA kernel
        assert torch.allclose(slow[m][real], ref[real], atol=1e-5)   # explicit weights


def test_sources_of_each_mode():
    mods = ["image", "text"]
    assert attention_sources(mods, "bi") == {"image": ["image", "text"], "text": ["image", "text"]}
    assert attention_sources(mods, "t2v") == {"image": ["image"], "text": ["image", "text"]}
    assert attention_sources(mods, "v2t") == {"image": ["image", "text"], "text": ["text"]}
    assert attention_sources(mods, "none") == {"image": ["image"], "text": ["text"]}
    assert attention_sources(["text"], "bi") == {"text": ["text"]}
    # roles by name, not by position
    assert attention_sources(["text", "image"], "t2v") == {"text": ["text", "image"], "image": ["image"]}
    with pytest.raises(ValueError):
        attention_sources(mods, "sideways")


@pytest.mark.parametrize("mode,blind,other", [("t2v", "image", "text"), ("v2t", "text", "image"),
                                              ("none", "image", "text"), ("none", "text", "image")])
def test_one_way_modes_ignore_the_other_modality(mode, blind, other):
    """t2v: the visual side is self-attention only, so changing the text input leaves it unchanged."""
    torch.manual_seed(0)
    bt = BiTransformer(["image", "text"], d=8, heads=2, blocks=2, mode=mode, ffn_dim=16, dropout=0.0).eval()
    x, mask = _inputs()
    y = bt(x, mask, all_rows=True)
    x2 = dict(x)
    x2[other] = torch.randn_like(x[other])
    y2 = bt(x2, mask, all_rows=True)
    assert torch.allclose(y[blind], y2[blind], atol=1e-6)
    assert not torch.allclose(y[other], y2[other], atol=1e-3)


def test_bi_mode_mixes_both_ways():
    torch.manual_seed(0)
    bt = BiTransformer(["image", "text"], d=8, heads=2, blocks=1, mode="bi", ffn_dim=16, dropout=0.0).eval()
    x, mask = _inputs()
    y = bt(x, mask)
    for m, o in (("image", "text"), ("text", "image")):
        x2 = dict(x)
        x2[o] = torch.randn_like(x[o])
        assert not torch.allclose(bt(x2, mask)[m], y[m], atol=1e-3)


def test_padding_keys_get_zero_attention_and_do_not_matter():
    torch.manual_seed(0)
    bt = BiTransformer(["image", "text"], d=8, heads=2, blocks=2, mode="bi", ffn_dim=16, dropout=0.0).eval()
    x, mask = _inputs()
    out, weights = bt(x, mask, all_rows=True, need_weights=True)
    N = mask.shape[1]
    for w in weights:
        for m, att in w.items():
            keep = mask.repeat(1, len(bt.sources[m]))                     # (B, N * blocks of keys)
            assert torch.all(att.masked_select(~keep[:, None, None, :].expand_as(att)) == 0)
            assert torch.allclose(att.sum(-1), torch.ones_like(att.sum(-1)))
            assert att.shape[-1] == N * len(bt.sources[m])
    x2 = {m: v.clone() for m, v in x.items()}
    for m in x2:
        x2[m][~mask] = 100.0                                              # garbage in padded rows
    out2 = bt(x2, mask, all_rows=True)
    for m in out:
        assert torch.allclose(out[m][mask], out2[m][mask], atol=1e-5)


def test_item_row_equals_first_row_of_all_rows_and_single_modality():
    torch.manual_seed(0)
    bt = BiTransformer(["image", "text"], d=16, heads=8, blocks=3, mode="bi", ffn_dim=32, dropout=0.0).eval()
    x, mask = _inputs(d=16)
    full = bt(x, mask, all_rows=True)
    item = bt(x, mask)
    for m in full:
        assert item[m].shape == (2, 16)
        assert torch.allclose(full[m][:, 0], item[m], atol=1e-5)
    one = BiTransformer(["text"], d=16, heads=8, blocks=2, mode="bi", ffn_dim=32).eval()
    assert one.sources == {"text": ["text"]}
    assert one({"text": x["text"]}, mask)["text"].shape == (2, 16)


def test_modality_attention_sums_to_one_and_gradients_flow():
    torch.manual_seed(0)
    bt = BiTransformer(["image", "text"], d=8, heads=2, blocks=2, mode="bi", ffn_dim=16, dropout=0.1)
    x, mask = _inputs()
    mass = bt.modality_attention(x, mask)
    total = mass["image"] + mass["text"]
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    t2v = BiTransformer(["image", "text"], d=8, heads=2, blocks=1, mode="t2v", ffn_dim=16)
    mass = t2v.modality_attention(x, mask)
    assert torch.all(mass["image"] > 0.5)      # the image queries see only image keys
    xg = {m: v.clone().requires_grad_() for m, v in x.items()}
    sum(o.sum() for o in bt.train()(xg, mask).values()).backward()
    assert all(v.grad is not None and torch.isfinite(v.grad).all() for v in xg.values())
