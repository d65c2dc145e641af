"""Shared layers (multikg4rec.nn) against hand computation and plain loops."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from multikg4rec.nn import (Aggregator, KGPropagation, KnowledgeAwareAttention, MessageDropout,
                                SparseAdjacency, TransR, propagate, segment_softmax)


def small_graph(seed=0, n=9, e=40, n_rel=4):
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(0, n, (e,), generator=g)
    t = torch.randint(0, n, (e,), generator=g)
    r = torch.randint(0, n_rel, (e,), generator=g)
    return h, r, t, n


# --------------------------------------------------------------------------- TransR

def test_transr_score_hand_computed():
    tr = TransR(2, 2, 2)
    with torch.no_grad():
        tr.W[1] = torch.tensor([[1.0, 2.0], [0.0, 1.0]])   # row-vector projection: e @ W
        tr.relation_emb[1] = torch.tensor([0.5, -1.0])
    h = torch.tensor([[1.0, 1.0]])
    t = torch.tensor([[2.0, 0.0]])
    # W_r e_h = [1, 3], W_r e_t = [2, 4]; [1, 3] + [0.5, -1] - [2, 4] = [-0.5, -2] -> 0.25 + 4
    assert tr.score(h, torch.tensor([1]), t).item() == pytest.approx(4.25)
    assert tr.project(h, torch.tensor([1])).tolist() == [[1.0, 3.0]]


def test_transr_loss_hand_computed():
    tr = TransR(1, 2, 2)
    with torch.no_grad():
        tr.W[0] = torch.eye(2)
        tr.relation_emb[0] = torch.tensor([1.0, 0.0])
    h = torch.tensor([[0.0, 0.0]])
    pos = torch.tensor([[1.0, 0.0]])   # g = 0
    neg = torch.tensor([[0.0, 1.0]])   # g = ||[1, -1]||^2 = 2
    r = torch.tensor([0])
    assert tr.loss(h, r, pos, neg).item() == pytest.approx(-math.log(1 / (1 + math.exp(-2.0))), rel=1e-6)
    # L2 term: (||W h||^2 + ||e_r||^2 + ||W t||^2 + ||W t'||^2) / (2 B) = (0 + 1 + 1 + 1) / 2
    assert tr.loss(h, r, pos, neg, reg_weight=0.1).item() == pytest.approx(
        -math.log(1 / (1 + math.exp(-2.0))) + 0.1 * 1.5, rel=1e-6)


def test_transr_loss_gradient_flows_to_entities_and_relations():
    torch.manual_seed(0)
    tr = TransR(3, 4, 5)
    h, t, n = (torch.randn(6, 4, requires_grad=True) for _ in range(3))
    tr.loss(h, torch.tensor([0, 1, 2, 0, 1, 2]), t, n, 1e-3).backward()
    for p in (h, t, n, tr.W, tr.relation_emb):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("sort", [False, True])
def test_transr_triple_loss_and_its_gradients_match_a_loop_over_triples(sort):
    """The grouped projection (slices when relations come sorted, as KGSampler gives
    them; a permutation otherwise) against the loss written triple by triple."""
    torch.manual_seed(0)
    tr = TransR(4, 5, 3)
    r = torch.tensor([2, 0, 3, 2, 0, 0, 1, 3, 2])
    if sort:
        r = r.sort().values
    rows = torch.randn(len(r), 3, 5, requires_grad=True)
    reg = 0.3
    terms, sq = [], 0.0
    for b in range(len(r)):
        w, er = tr.W[r[b]], tr.relation_emb[r[b]]
        ph, pt, pn = rows[b, 0] @ w, rows[b, 1] @ w, rows[b, 2] @ w
        g_pos, g_neg = ((ph + er - pt) ** 2).sum(), ((ph + er - pn) ** 2).sum()
        terms.append(-torch.log(torch.sigmoid(g_neg - g_pos)))
        sq = sq + (ph ** 2).sum() + (er ** 2).sum() + (pt ** 2).sum() + (pn ** 2).sum()
    ref = torch.stack(terms).mean() + reg * sq / (2 * len(r))
    grads_ref = torch.autograd.grad(ref, (rows, tr.W, tr.relation_emb))
    got = tr.triple_loss(rows, r, reg)
    grads = torch.autograd.grad(got, (rows, tr.W, tr.relation_emb))
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, b in zip(grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-5)
    # the (h, t, t') form is the same loss
    assert tr.loss(rows[:, 0], r, rows[:, 1], rows[:, 2], reg).item() == pytest.approx(got.item(), rel=1e-6)


def test_transr_project_rows_keeps_row_order_for_unsorted_relations():
    torch.manual_seed(1)
    tr = TransR(3, 4, 2)
    r = torch.tensor([1, 0, 2, 1, 0])
    x = torch.randn(5, 2, 4)
    got = tr.project_rows(x, r)
    for b in range(5):
        assert torch.allclose(got[b], x[b] @ tr.W[r[b]], atol=1e-6)


# --------------------------------------------------------------------------- softmax / sparse

def test_segment_softmax_matches_loop():
    torch.manual_seed(0)
    src = torch.randn(30) * 5
    idx = torch.randint(0, 6, (30,))
    got = segment_softmax(src, idx, 7)  # segment 6 is empty
    for k in range(7):
        m = idx == k
        if m.any():
            assert torch.allclose(got[m], torch.softmax(src[m], 0), atol=1e-6)


def test_segment_softmax_matches_pyg():
    pyg = pytest.importorskip("torch_geometric.utils")
    torch.manual_seed(1)
    src, idx = torch.randn(50), torch.randint(0, 8, (50,))
    assert torch.allclose(segment_softmax(src, idx, 8), pyg.softmax(src, idx, num_nodes=8), atol=1e-6)


def test_sparse_adjacency_matches_dense_with_duplicates_and_gradients():
    torch.manual_seed(0)
    row = torch.tensor([0, 0, 2, 2, 1, 0])
    col = torch.tensor([1, 1, 0, 2, 2, 0])     # (0, 1) twice: summed
    vals = torch.rand(6, requires_grad=True)
    adj = SparseAdjacency.from_edges(row, col, vals, (3, 3))
    dense = torch.zeros(3, 3).index_put((row, col), vals, accumulate=True)
    x = torch.randn(3, 4, requires_grad=True)
    g = torch.randn(3, 4)
    out = propagate(adj, x)
    assert torch.allclose(out, dense @ x, atol=1e-6)
    gx, gv = torch.autograd.grad((out * g).sum(), [x, vals])
    gx_ref, gv_ref = torch.autograd.grad(((dense @ x) * g).sum(), [x, vals])
    assert torch.allclose(gx, gx_ref, atol=1e-6) and torch.allclose(gv, gv_ref, atol=1e-6)
    assert torch.allclose(adj.to_dense(), dense.detach())


def test_spmm_hands_torch_int32_indices_and_gets_the_int64_result():
    """The CSR index tensors go to torch's SpMM as int32 (computed once; MKL would convert int64 ones at every
    call): the products of the dense matrix, for A, its cached transpose, with_values copies and row slices."""
    g = torch.Generator().manual_seed(0)
    n, e = 50, 400
    row, col = torch.randint(0, n, (e,), generator=g), torch.randint(0, 40, (e,), generator=g)
    adj = SparseAdjacency.from_edges(row, col, torch.rand(e, generator=g), (n, 40))
    x, gout = torch.randn(40, 8, generator=g, requires_grad=True), torch.randn(n, 8, generator=g)
    assert adj.csr().crow_indices().dtype == torch.int32 and adj.csr_t().col_indices().dtype == torch.int32
    for a in (adj, adj.with_values(torch.rand(e, generator=g)), adj.row_slice(torch.tensor([3, 0, 7]))):
        ref = a.to_dense().detach()                            # from (row, col, values): no CSR involved
        out = a.matmul(x)
        (gx,) = torch.autograd.grad((out * gout[: out.shape[0]]).sum(), [x])
        assert torch.allclose(out, ref @ x, atol=1e-6)
        assert torch.allclose(gx, ref.T @ gout[: out.shape[0]], atol=1e-6)


# --------------------------------------------------------------------------- attention

def test_attention_scores_match_loop_and_rows_sum_to_one():
    torch.manual_seed(0)
    h, r, t, n = small_graph()
    tr = TransR(4, 5, 3)
    x = torch.randn(n, 5)
    att = KnowledgeAwareAttention(h, r, t, n, chunk_size=7)   # several chunks
    with torch.no_grad():
        adj = att(x, tr)
        pi = att.scores(x, tr)
    # plain loop over triples, in the input order
    loop = torch.stack([(x[t[e]] @ tr.W[r[e]]) @ torch.tanh(x[h[e]] @ tr.W[r[e]] + tr.relation_emb[r[e]])
                        for e in range(len(h))]).detach()
    assert torch.allclose(pi, loop[adj.perm], atol=1e-5)
    # softmax over each head's triples, by a loop over heads
    for node in range(n):
        m = h == node
        if m.any():
            ref = torch.softmax(loop[m], 0)
            got = adj.values[adj.perm.argsort()][m]
            assert torch.allclose(got, ref, atol=1e-6)
    sums = adj.row_sums()
    has = torch.bincount(h, minlength=n) > 0
    assert torch.allclose(sums[has], torch.ones(int(has.sum())), atol=1e-6)
    assert (sums[~has] == 0).all()


def test_attention_differentiable_path_equals_no_grad_path():
    torch.manual_seed(0)
    h, r, t, n = small_graph(1)
    tr = TransR(4, 5, 3)
    x = torch.randn(n, 5, requires_grad=True)
    att = KnowledgeAwareAttention(h, r, t, n, chunk_size=16)
    with torch.no_grad():
        fast = att(x, tr).values
    adj = att(x, tr)
    assert torch.allclose(adj.values, fast, atol=1e-6)
    propagate(adj, x).pow(2).sum().backward()       # through the values and the SpMM
    assert x.grad.abs().sum() > 0 and tr.W.grad.abs().sum() > 0 and tr.relation_emb.grad.abs().sum() > 0


# --------------------------------------------------------------------------- aggregators

def three_node_case():
    """0 -> {1, 2} with weights 0.25 / 0.75; 1 -> {0}; 2 has no out-edge."""
    adj = SparseAdjacency.from_edges(torch.tensor([0, 0, 1]), torch.tensor([1, 2, 0]),
                                     torch.tensor([0.25, 0.75, 1.0]), (3, 3))
    x = torch.tensor([[1.0, -1.0], [2.0, 0.0], [0.0, 4.0]])
    nh = torch.tensor([[0.5, 3.0], [1.0, -1.0], [0.0, 0.0]])   # hand-computed A x
    return adj, x, nh


def set_linear(lin, w, b):
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w))
        lin.bias.copy_(torch.tensor(b))


def lrelu(z):
    return torch.where(z > 0, z, 0.2 * z)


def test_neighbourhood_by_hand():
    adj, x, nh = three_node_case()
    assert torch.allclose(propagate(adj, x), nh)


def test_bi_interaction_by_hand():
    adj, x, nh = three_node_case()
    agg = Aggregator(2, 1, "bi-interaction", dropout=0.0)
    set_linear(agg.W1, [[1.0, 1.0]], [0.0])
    set_linear(agg.W2, [[1.0, -1.0]], [0.5])
    out = agg(x, propagate(adj, x))
    s, p = x + nh, x * nh
    ref = lrelu(s[:, :1] + s[:, 1:]) + lrelu(p[:, :1] - p[:, 1:] + 0.5)
    # node 0: sum (1.5, 2) -> 3.5; product (0.5, -3) -> 0.5 + 3 + 0.5 = 4 -> 7.5
    assert out[0, 0].item() == pytest.approx(7.5)
    assert torch.allclose(out, ref)


def test_gcn_by_hand():
    adj, x, nh = three_node_case()
    agg = Aggregator(2, 1, "gcn", dropout=0.0)
    set_linear(agg.W1, [[2.0, -1.0]], [-1.0])
    out = agg(x, propagate(adj, x))
    # node 1: e_h + e_Nh = (3, -1) -> 6 + 1 - 1 = 6; node 2: (0, 4) -> -4 - 1 = -5 -> -1
    assert out[:, 0].tolist() == pytest.approx([lrelu(torch.tensor(2 * 1.5 - 2 - 1.0)).item(), 6.0, -1.0])


def test_graphsage_by_hand():
    adj, x, nh = three_node_case()
    agg = Aggregator(2, 1, "graphsage", dropout=0.0)
    set_linear(agg.W1, [[1.0, 0.0, 0.0, 1.0]], [0.0])   # e_h[0] + e_Nh[1]
    out = agg(x, propagate(adj, x))
    assert torch.allclose(out[:, 0], lrelu(x[:, 0] + nh[:, 1]))
    assert out[:, 0].tolist() == pytest.approx([4.0, 1.0, 0.0])


def test_unknown_aggregator():
    with pytest.raises(ValueError, match="unknown aggregator"):
        Aggregator(2, 2, "mean")


def test_propagation_shapes_normalisation_and_gradient():
    torch.manual_seed(0)
    h, r, t, n = small_graph()
    tr = TransR(4, 8, 8)
    x = torch.randn(n, 8, requires_grad=True)
    with torch.no_grad():
        adj = KnowledgeAwareAttention(h, r, t, n)(x, tr)
    for kind in ("bi-interaction", "gcn", "graphsage"):
        prop = KGPropagation(8, (8, 4, 2), kind, dropout=0.1)
        out = prop(x, adj)
        assert out.shape == (n, 8 + 8 + 4 + 2) and prop.out_dim == 22
        assert torch.equal(out[:, :8], x)                             # layer 0 unchanged
        for a, b in ((8, 16), (16, 20), (20, 22)):
            norms = out[:, a:b].norm(dim=1)
            assert torch.all(((norms - 1).abs() < 1e-5) | (norms < 1e-6))
        x.grad = None
        out.sum().backward()
        assert x.grad.abs().sum() > 0
        assert all(p.grad is not None for p in prop.parameters())


def test_propagation_rows_equal_the_rows_of_the_full_output():
    """rows= (the CF step's users and items only) returns exactly those rows, with the same gradients."""
    torch.manual_seed(0)
    h, r, t, n = small_graph()
    with torch.no_grad():
        adj = KnowledgeAwareAttention(h, r, t, n)(torch.randn(n, 8), TransR(4, 8, 8))
    prop = KGPropagation(8, (8, 4, 2), "bi-interaction", dropout=0.0)
    rows = torch.tensor([3, 0, 1, n - 1])
    x = torch.randn(n, 8, requires_grad=True)
    w = torch.randn(len(rows), prop.out_dim)
    full = prop(x, adj)
    (full[rows] * w).sum().backward()
    g_full, x.grad = x.grad.clone(), None
    part = prop(x, adj, rows=rows)
    (part * w).sum().backward()
    assert torch.allclose(part, full[rows], atol=1e-6)
    assert torch.allclose(x.grad, g_full, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(prop(x, adj, return_layers=True, rows=rows),
                                                                  (o[rows] for o in prop(x, adj, return_layers=True))))


def test_message_dropout_only_in_training():
    torch.manual_seed(0)
    _, x, _ = three_node_case()
    adj, _, _ = three_node_case()
    prop = KGPropagation(2, (4,), "bi-interaction", dropout=0.5)
    prop.eval()
    a, b = prop(x, adj), prop(x, adj)
    assert torch.equal(a, b)
    prop.train()
    outs = [prop(x, adj) for _ in range(5)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_message_dropout_keeps_one_minus_p_and_preserves_the_mean():
    torch.manual_seed(0)
    drop = MessageDropout(0.1)
    x = torch.full((400, 250), 2.0, requires_grad=True)
    y = drop(x)
    kept = y != 0
    scale = 65536 / (65536 - round(0.1 * 65536))
    assert torch.allclose(y[kept], torch.full_like(y[kept], 2.0 * scale))   # inverted dropout scale
    assert abs(kept.float().mean().item() - 0.9) < 0.005                    # 100K draws: sd 0.001
    assert abs(kept[:, 0::4].float().mean().item() - 0.9) < 0.01            # every 16-bit lane of a word
    assert abs(kept[:, 3::4].float().mean().item() - 0.9) < 0.01
    assert abs(y.mean().item() - 2.0) < 0.02                                # E[dropout(x)] = x
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept) and torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], scale))
    torch.manual_seed(1)
    a = drop(x.detach())
    torch.manual_seed(1)
    assert torch.equal(a, drop(x.detach()))                                 # seeded like nn.Dropout
    drop.eval()
    assert drop(x) is x
    assert torch.equal(MessageDropout(1.0).train()(x), torch.zeros_like(x))
    assert MessageDropout(0.0).train()(x) is x
    with pytest.raises(ValueError):
        MessageDropout(1.5)


def test_row_slice_is_the_rows_of_the_adjacency_with_gradients_and_follows_value_changes():
    h, r, t, n = small_graph(3)
    vals = torch.rand(len(h), requires_grad=True)
    adj = SparseAdjacency.from_edges(h, t, vals, (n, n))
    rows = torch.tensor([5, 0, 8, 2])
    sub = adj.row_slice(rows)
    assert sub.shape == (4, n)
    assert torch.allclose(sub.to_dense(), adj.to_dense()[rows])
    x = torch.randn(n, 3, requires_grad=True)
    w = torch.randn(4, 3)
    gx, gv = torch.autograd.grad((propagate(sub, x) * w).sum(), [x, vals], retain_graph=True)
    gx_ref, gv_ref = torch.autograd.grad((propagate(adj, x)[rows] * w).sum(), [x, vals])
    assert torch.allclose(gx, gx_ref, atol=1e-6) and torch.allclose(gv, gv_ref, atol=1e-6)
    fixed = adj.values.detach().clone()
    a1 = SparseAdjacency.from_edges(h, t, None, (n, n)).with_values(fixed)
    s1 = a1.row_slice(rows)
    assert a1.row_slice(rows.clone()) is s1                                 # cached while values are unchanged
    with torch.no_grad():
        fixed.mul_(2.0)                                                     # attention update in place
    assert torch.allclose(a1.row_slice(rows).to_dense(), a1.to_dense()[rows])


def test_layer_output_is_l2_normalised_not_next_input():
    """KGAT feeds the un-normalised e^(l) to layer l+1 (only the concatenated copy is normalised)."""
    torch.manual_seed(0)
    adj, x, _ = three_node_case()
    prop = KGPropagation(2, (3, 3), "gcn", dropout=0.0)
    h1 = prop.layers[0](x, propagate(adj, x))
    h2 = prop.layers[1](h1, propagate(adj, h1))
    ref = torch.cat([x, F.normalize(h1, dim=1), F.normalize(h2, dim=1)], 1)
    assert torch.allclose(prop(x, adj), ref, atol=1e-6)


def test_cached_transpose_follows_in_place_value_changes():
    row, col = torch.tensor([0, 1, 1]), torch.tensor([1, 0, 1])
    vals = torch.tensor([1.0, 2.0, 3.0])
    adj = SparseAdjacency.from_edges(row, col, vals, (2, 2), is_sorted=True)
    x = torch.randn(2, 3, requires_grad=True)
    propagate(adj, x).sum().backward()
    g1 = x.grad.clone()
    assert torch.allclose(g1, adj.to_dense().T @ torch.ones(2, 3))
    with torch.no_grad():
        vals.mul_(2.0)                                  # e.g. load_state_dict / attention update
    x.grad = None
    propagate(adj, x).sum().backward()
    assert torch.allclose(x.grad, 2 * g1)


def test_with_values_reuses_adjacency_until_values_change():
    h, r, t, n = small_graph(2)
    att = KnowledgeAwareAttention(h, r, t, n)
    v1, v2 = torch.rand(len(h)), torch.rand(len(h))
    a1 = att.structure.with_values(v1)
    assert att.structure.with_values(v1) is a1
    a2 = att.structure.with_values(v2)                 # a second table (another modality)
    assert att.structure.with_values(v1) is a1 and att.structure.with_values(v2) is a2
    with torch.no_grad():
        v1.mul_(3.0)
    a3 = att.structure.with_values(v1)
    assert a3 is not a1
    x = torch.randn(n, 4)
    assert torch.allclose(propagate(a3, x), a3.to_dense() @ x, atol=1e-5)


def test_dense_unique_equals_torch_unique_on_keys_with_ties():
    """The attention's slot table (dense marking + cumulative rank) must give torch.unique's result
    exactly: the slots fix every attention value."""
    from multikg4rec.nn.attention import _unique_inverse
    g = torch.Generator().manual_seed(3)
    for n, m in ((50, 400), (7, 0), (100_000, 20_000), (1, 5)):
        keys = torch.randint(0, n, (m,), generator=g)
        a, b = torch.unique(keys, return_inverse=True)
        c, d = _unique_inverse(keys, n)
        assert torch.equal(a, c) and torch.equal(b, d) and d.dtype == torch.int64
