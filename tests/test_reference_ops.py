"""The reference ops against hand computations, their edge cases, and gradcheck in float64."""

import pytest
import torch
from torch.autograd import gradcheck

from sthfast import reference as ref

D = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- pool_patch ------------------------------------------------------------------------------
def test_pool_patch_matches_a_direct_computation():
    x = torch.randn(2, 10, 5, 3, generator=gen(), dtype=D)
    patches, mean, std = ref.pool_patch(x, patch_len=4, stride=3, normalize=True, eps=1e-5)
    pooled = x.mean(2)                                   # [B, T, F]
    mu, sd = pooled.mean(1), (pooled.var(1, unbiased=False) + 1e-5).sqrt()
    series = ((pooled - mu[:, None]) / sd[:, None]).permute(0, 2, 1)  # [B, F, T]
    padded = torch.cat([series, series[..., -1:].repeat(1, 1, 3)], -1)  # T + S = 13
    starts = range(0, 13 - 4 + 1, 3)                      # 0, 3, 6, 9
    expected = torch.stack([padded[..., s:s + 4] for s in starts], dim=2)
    assert patches.shape == (2, 3, 4, 4)
    torch.testing.assert_close(patches, expected)
    torch.testing.assert_close(mean, mu)
    torch.testing.assert_close(std, sd)


def test_pool_patch_without_normalisation_and_paper_shape():
    x = torch.randn(3, 48, 7, 1, generator=gen(1), dtype=D)
    patches, mean, std = ref.pool_patch(x, 16, 8, normalize=False)
    assert patches.shape == (3, 1, 6, 16)                  # (48 - 16) / 8 + 2 patches
    assert torch.equal(mean, torch.zeros(3, 1, dtype=D)) and torch.equal(std, torch.ones(3, 1, dtype=D))
    torch.testing.assert_close(patches[:, 0, 0], x.mean(2)[:, :16, 0])
    assert torch.all(patches[:, 0, -1, -8:] == x.mean(2)[:, -1:, 0])   # replicate padding


# --- topk_neighbors ----------------------------------------------------------------------------
def test_topk_l2_and_ip_against_brute_force():
    q, k = torch.randn(9, 4, generator=gen(2), dtype=D), torch.randn(13, 4, generator=gen(3), dtype=D)
    idx = ref.topk_neighbors(q, k, 5, "l2")
    d = ((q[:, None] - k[None]) ** 2).sum(-1)
    assert torch.equal(idx, d.argsort(-1)[:, :5])
    idx = ref.topk_neighbors(q, k, 5, "ip")
    assert torch.equal(idx, (q @ k.T).argsort(-1, descending=True)[:, :5])


def test_topk_ties_go_to_the_smaller_index():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [5.0, 5.0]], dtype=D)
    idx = ref.topk_neighbors(points, points, 4, "l2")
    assert idx[0].tolist() == [0, 2, 1, 3] and idx[2].tolist() == [0, 2, 1, 3]
    assert idx[3].tolist() == [1, 3, 0, 2]
    ones = torch.ones(3, 2, dtype=D)
    assert ref.topk_neighbors(ones, ones, 3, "ip").tolist() == [[0, 1, 2]] * 3


def test_topk_batched_equals_per_sample_and_k_equals_m():
    q = torch.randn(3, 6, 2, generator=gen(4), dtype=D)
    batched = ref.topk_neighbors(q, q, 6, "l2")
    for b in range(3):
        assert torch.equal(batched[b], ref.topk_neighbors(q[b], q[b], 6, "l2"))
    assert torch.equal(batched.sort(-1).values, torch.arange(6).expand(3, 6, 6))


def test_topk_unknown_metric():
    with pytest.raises(ValueError, match="metric='cosine'"):
        ref.topk_neighbors(torch.zeros(2, 2), torch.zeros(2, 2), 1, "cosine")


# --- knn_hypergraph -----------------------------------------------------------------------------
def test_knn_hypergraph_binary_merges_identical_sets():
    # Two tight clusters {0, 1, 2} and {3, 4, 5}: every node's 3-NN set is its cluster, so six
    # hyperedges collapse to two, kept at the smallest centre (columns 0 and 3).
    z = torch.tensor([[0, 0], [0.1, 0], [0, 0.1], [9, 9], [9.1, 9], [9, 9.1]], dtype=D)
    h = ref.knn_hypergraph(z, 3, binary=True)
    expected = torch.zeros(6, 6, dtype=D)
    expected[:3, 0] = 1
    expected[3:, 3] = 1
    assert torch.equal(h, expected)


def test_knn_hypergraph_weights_are_a_softmax_and_average_over_merged_copies():
    z = torch.tensor([[0.0], [1.0], [3.0], [10.0]], dtype=D)
    h = ref.knn_hypergraph(z, 2, binary=False, temperature=2.0)
    # 2-NN sets: 0:{0,1} 1:{1,0} 2:{2,1} 3:{3,2}; edges 0 and 1 merge into column 0.
    w01 = torch.softmax(torch.tensor([0.0, -1 / 2], dtype=D), 0)   # from centre 0: (0, 1)
    w10 = torch.softmax(torch.tensor([0.0, -1 / 2], dtype=D), 0)   # from centre 1: (1, 0)
    expected = torch.zeros(4, 4, dtype=D)
    expected[0, 0] = (w01[0] + w10[1]) / 2
    expected[1, 0] = (w01[1] + w10[0]) / 2
    w21 = torch.softmax(torch.tensor([0.0, -4 / 2], dtype=D), 0)
    expected[2, 2], expected[1, 2] = w21
    w32 = torch.softmax(torch.tensor([0.0, -49 / 2], dtype=D), 0)
    expected[3, 3], expected[2, 3] = w32
    torch.testing.assert_close(h, expected)
    torch.testing.assert_close(h.sum(0), torch.tensor([1, 0, 1, 1], dtype=D))


def test_knn_hypergraph_k_equals_n_and_single_node_and_batch():
    z = torch.randn(5, 3, generator=gen(5), dtype=D)
    h = ref.knn_hypergraph(z, 5, binary=True)            # one hyperedge with everything
    assert torch.equal(h[:, 0], torch.ones(5, dtype=D)) and h[:, 1:].abs().sum() == 0
    assert torch.equal(ref.knn_hypergraph(torch.zeros(1, 3, dtype=D), 1), torch.ones(1, 1, dtype=D))
    zb = torch.randn(2, 7, 3, generator=gen(6), dtype=D)
    hb = ref.knn_hypergraph(zb, 3)
    for b in range(2):
        torch.testing.assert_close(hb[b], ref.knn_hypergraph(zb[b], 3))


def test_knn_hypergraph_duplicate_points_are_deterministic():
    z = torch.tensor([[1.0, 1.0]] * 4 + [[3.0, 3.0]], dtype=D)
    h1, h2 = ref.knn_hypergraph(z, 2, binary=True), ref.knn_hypergraph(z.clone(), 2, binary=True)
    assert torch.equal(h1, h2)
    # Each node leads its own hyperedge even among duplicates, then the smallest tied index:
    # 0 -> {0, 1}, 1 -> {1, 0} (merged into column 0), 2 -> {2, 0}, 3 -> {3, 0}, 4 -> {4, 0}.
    expected = torch.zeros(5, 5, dtype=D)
    expected[[0, 1], 0] = 1
    for e in (2, 3, 4):
        expected[[0, e], e] = 1
    assert torch.equal(h1, expected)
    assert (h1.sum(1) > 0).all()                       # nobody is left out of every hyperedge


def test_topk_self_first_puts_each_query_first_despite_ties():
    points = torch.tensor([[0.0], [0.0], [0.0], [1.0]], dtype=D)
    assert ref.topk_neighbors(points, points, 2, "l2", self_first=True).tolist() == [[0, 1], [1, 0], [2, 0], [3, 0]]
    ones = torch.ones(3, 2, dtype=D)
    assert ref.topk_neighbors(ones, ones, 2, "ip", self_first=True).tolist() == [[0, 1], [1, 0], [2, 0]]


# --- propagation ------------------------------------------------------------------------------
def test_hypergraph_propagate_by_hand():
    h = torch.tensor([[1.0, 0.0], [0.5, 1.0], [0.0, 1.0]], dtype=D)   # 3 nodes, 2 hyperedges
    x = torch.tensor([1.0, 2.0, 4.0], dtype=D).view(1, 1, 3, 1)
    e0 = (1 * 1 + 0.5 * 2) / 1.5
    e1 = (2 + 4) / 2
    expected = torch.tensor([e0, (0.5 * e0 + e1) / 1.5, e1], dtype=D).view(1, 1, 3, 1)
    torch.testing.assert_close(ref.hypergraph_propagate(x, h), expected)


def test_operators_equal_their_propagation():
    x = torch.randn(2, 3, 5, 4, generator=gen(20), dtype=D)
    h, a = torch.rand(5, 3, generator=gen(21), dtype=D), torch.rand(5, 5, generator=gen(22), dtype=D)
    torch.testing.assert_close(ref.apply_operator(x, ref.hypergraph_operator(h)), ref.hypergraph_propagate(x, h))
    torch.testing.assert_close(ref.apply_operator(x, ref.graph_operator(a)), ref.graph_propagate(x, a))
    torch.testing.assert_close(ref.graph_operator(a).sum(1), torch.ones(5, dtype=D))


def test_hypergraph_propagate_isolated_node_and_per_sample():
    h = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=D)
    x = torch.randn(2, 3, 3, 4, generator=gen(7), dtype=D)
    out = ref.hypergraph_propagate(x, h)
    assert out[:, :, 2].abs().sum() == 0 and torch.isfinite(out).all()
    hb = torch.stack([h, torch.eye(3, dtype=D)])
    outb = ref.hypergraph_propagate(x, hb)
    torch.testing.assert_close(outb[0], out[0])
    torch.testing.assert_close(outb[1], x[1])


def test_adaptive_graph_and_graph_propagate_by_hand():
    m1, m2 = torch.randn(6, 3, generator=gen(8), dtype=D), torch.randn(6, 3, generator=gen(9), dtype=D)
    a = ref.adaptive_graph(m1, m2, 2, alpha=3.0)
    score = m1 @ m2.T - m2 @ m1.T
    full = torch.relu(torch.tanh(3.0 * score))
    keep = torch.zeros_like(full).scatter(1, score.argsort(1, descending=True)[:, :2], 1.0)
    torch.testing.assert_close(a, full * keep)
    x = torch.randn(2, 3, 6, 5, generator=gen(10), dtype=D)
    p = (a + torch.eye(6, dtype=D)) / (a + torch.eye(6, dtype=D)).sum(1, keepdim=True)
    torch.testing.assert_close(ref.graph_propagate(x, a), torch.einsum("vw,bcwt->bcvt", p, x))


def test_mixprop_recursion():
    x = torch.randn(2, 3, 4, 5, generator=gen(11), dtype=D)
    out = ref.mixprop(x, lambda h: 2 * h, depth=2, beta=0.25)
    h1 = 0.25 * x + 0.75 * 2 * x
    h2 = 0.25 * x + 0.75 * 2 * h1
    torch.testing.assert_close(out, torch.cat([x, h1, h2], 1))
    assert torch.equal(ref.mixprop(x, lambda h: h, 0, 0.5), x)


# --- gradcheck of every differentiable reference op, float64 ------------------------------------
def test_gradcheck_pool_patch():
    x = torch.randn(2, 9, 4, 2, generator=gen(12), dtype=D, requires_grad=True)
    assert gradcheck(lambda t: ref.pool_patch(t, 4, 2, True), (x,))
    assert gradcheck(lambda t: ref.pool_patch(t, 3, 3, False)[0], (x,))


@pytest.mark.parametrize("batched", [False, True])
def test_gradcheck_knn_hypergraph(batched):
    shape = (2, 7, 3) if batched else (7, 3)
    z = torch.randn(*shape, generator=gen(13), dtype=D, requires_grad=True)
    assert gradcheck(lambda t: ref.knn_hypergraph(t, 3, temperature=0.7), (z,))


def test_gradcheck_adaptive_graph():
    m1 = torch.randn(6, 3, generator=gen(14), dtype=D, requires_grad=True)
    m2 = torch.randn(6, 3, generator=gen(15), dtype=D, requires_grad=True)
    assert gradcheck(lambda a, b: ref.adaptive_graph(a, b, 3, 0.5), (m1, m2))


def test_gradcheck_propagations_and_mixprop():
    x = torch.randn(2, 2, 5, 3, generator=gen(16), dtype=D, requires_grad=True)
    h = torch.rand(5, 4, generator=gen(17), dtype=D, requires_grad=True)
    hb = torch.rand(2, 5, 4, generator=gen(18), dtype=D, requires_grad=True)
    a = torch.rand(5, 5, generator=gen(19), dtype=D, requires_grad=True)
    assert gradcheck(ref.hypergraph_propagate, (x, h))
    assert gradcheck(ref.hypergraph_propagate, (x, hb))
    assert gradcheck(ref.graph_propagate, (x, a))
    assert gradcheck(lambda t, w: ref.mixprop(t, lambda v: ref.hypergraph_propagate(v, w), 2, 0.1), (x, h))


def test_membership_weights_do_not_collapse_onto_the_centre_in_high_dimension():
    z = torch.tanh(3 * torch.randn(200, 40, generator=gen(23), dtype=D))   # like the model's features
    h = ref.knn_hypergraph(z, 3)
    assert 0.34 < float(torch.diagonal(h).mean()) < 0.8
