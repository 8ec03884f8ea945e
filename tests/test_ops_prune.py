import pytest
import torch
import torch.nn as nn

from udfc_hub.ops import (
    fold_batchnorm,
    merge_into_consumer,
    neuron_merging_scales,
    prune_loss,
    rank_channels,
    solve_prune_scales,
)


def _random_bn(n, dead=()):
    gamma = torch.rand(n, dtype=torch.float64) + 0.5
    for i in dead:
        gamma[i] = 1e-9
    return (
        gamma,
        torch.randn(n, dtype=torch.float64),
        torch.randn(n, dtype=torch.float64),
        torch.rand(n, dtype=torch.float64) + 0.1,
    )


def _lstsq_reference(layer, keep, pruned, alpha1):
    """Each pruned channel's loss as one stacked least-squares problem, solved by SVD."""
    R, K, c = layer.R, layer.K, layer.c
    rows = []
    for j in pruned:
        A = torch.cat([c[j] * R[keep].T, alpha1**0.5 * K[keep][None, :]])
        b = torch.cat([c[j] * R[j], alpha1**0.5 * K[j][None]])
        rows.append(torch.linalg.lstsq(A, b[:, None], driver="gelsd").solution[:, 0])
    return torch.stack(rows)


@pytest.mark.parametrize("dead", [(), (1, 4)])
def test_closed_form_equals_least_squares(dead):
    n, d = 12, 40
    w = torch.randn(n, d, dtype=torch.float64)
    layer = fold_batchnorm(w, None, *_random_bn(n, dead), eps=1e-5)
    keep, pruned = rank_channels(w, 8, "l2")
    sol = solve_prune_scales(layer, keep, pruned, alpha1=0.01)
    ref = _lstsq_reference(layer, keep, pruned, 0.01)
    assert sol.scales.shape == (4, 8)
    # the losses must agree; so must the scales where the problem is well posed. Dead channels (gamma 1e-9) make
    # the system about 1e18-conditioned: there the loss still agrees to 1e-6.
    ours = prune_loss(layer, keep, pruned, sol.scales)
    theirs = prune_loss(layer, keep, pruned, ref)
    assert torch.allclose(ours, theirs, rtol=1e-6 if dead else 1e-10, atol=1e-12)
    if not dead:
        assert torch.allclose(sol.scales, ref, rtol=1e-8, atol=1e-10)


def test_ill_conditioned_falls_back_and_stays_optimal():
    n, d = 6, 5
    w = torch.randn(n, d, dtype=torch.float64)
    w[1] = w[0]  # two identical kept filters: the Gram matrix is singular
    layer = fold_batchnorm(w)
    keep, pruned = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5])
    sol = solve_prune_scales(layer, keep, pruned, alpha1=0.0)
    ref = _lstsq_reference(layer, keep, pruned, 0.0)
    assert torch.isfinite(sol.scales).all()
    assert torch.allclose(
        prune_loss(layer, keep, pruned, sol.scales, 0.0), prune_loss(layer, keep, pruned, ref, 0.0), atol=1e-9
    )


def test_exact_linear_combination_is_recovered_exactly():
    n_keep, d = 5, 30
    RS = torch.randn(n_keep, d, dtype=torch.float64)
    KS = torch.randn(n_keep, dtype=torch.float64)
    s_true = torch.randn(3, n_keep, dtype=torch.float64)
    R = torch.cat([RS, s_true @ RS])
    K = torch.cat([KS, s_true @ KS])
    layer = fold_batchnorm(R, K)  # no BN: R and K are taken as they are
    keep, pruned = torch.arange(5), torch.arange(5, 8)
    sol = solve_prune_scales(layer, keep, pruned, alpha1=0.01)
    assert torch.allclose(sol.scales, s_true, atol=1e-9)
    assert prune_loss(layer, keep, pruned, sol.scales).max() < 1e-16


@torch.no_grad()
def test_conv_bn_conv_without_nonlinearity_is_reconstructed_exactly():
    """conv -> BN -> conv: a channel whose BN output is a combination of others is pruned with no change."""
    torch.manual_seed(1)
    conv1, bn, conv2 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.Conv2d(6, 4, 3, padding=1)
    bn.eval()
    bn.weight.copy_(torch.rand(6) + 0.5)
    bn.running_var.copy_(torch.rand(6) + 0.2)
    bn.running_mean.copy_(torch.randn(6))
    bn.bias.copy_(torch.randn(6))
    # make BN outputs 4 and 5 exact combinations of outputs 0..3: set their filters and betas accordingly
    sigma = (bn.running_var + bn.eps).sqrt()
    gain = bn.weight / sigma
    s_true = torch.randn(2, 4)
    R = gain[:4, None] * conv1.weight[:4].flatten(1)
    K = bn.bias[:4] - gain[:4] * bn.running_mean[:4]
    for row, j in enumerate((4, 5)):
        conv1.weight[j] = ((s_true[row] @ R) / gain[j]).reshape(3, 3, 3)
        bn.bias[j] = s_true[row] @ K + gain[j] * bn.running_mean[j]
    x = torch.randn(2, 3, 8, 8)
    expected = conv2(bn(conv1(x)))

    layer = fold_batchnorm(conv1.weight, None, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
    keep, pruned = torch.arange(4), torch.tensor([4, 5])
    sol = solve_prune_scales(layer, keep, pruned, alpha1=0.01)
    small1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    small1.weight.copy_(conv1.weight[keep])
    small_bn = nn.BatchNorm2d(4).eval()
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(small_bn, name).copy_(getattr(bn, name)[keep])
    small2 = nn.Conv2d(4, 4, 3, padding=1)
    small2.weight.copy_(merge_into_consumer(conv2.weight, keep, pruned, sol.scales))
    small2.bias.copy_(conv2.bias)
    assert torch.allclose(small2(small_bn(small1(x))), expected, atol=1e-4)
    # and plain removal does change the output
    plain = merge_into_consumer(conv2.weight, keep, pruned)
    small2.weight.copy_(plain)
    assert not torch.allclose(small2(small_bn(small1(x))), expected, atol=1e-2)


def test_rank_channels_criteria_differ():
    w = torch.tensor([[3.0, 0.0, 0.0], [1.5, 1.5, 1.5], [0.1, 0.1, 0.1]])
    keep, pruned = rank_channels(w, 1, "l2")  # l2: 3.0 vs 2.6
    assert keep.tolist() == [0] and pruned.tolist() == [1, 2]
    assert rank_channels(w, 1, "l1")[0].tolist() == [1]  # l1: 3.0 vs 4.5
    with pytest.raises(ValueError, match="criterion"):
        rank_channels(w, 1, "l3")


def test_neuron_merging_derived_merges_a_scaled_duplicate_exactly():
    w = torch.randn(4, 10, dtype=torch.float64)
    w[3] = 2 * w[1]  # channel 3 doubles channel 1: its BN statistics double too
    gamma = torch.ones(4, dtype=torch.float64)
    beta = torch.zeros(4, dtype=torch.float64)
    var = torch.rand(4, dtype=torch.float64) + 0.5
    mean = torch.randn(4, dtype=torch.float64)
    var[3], mean[3] = 4 * var[1], 2 * mean[1]
    keep, pruned = torch.tensor([0, 1, 2]), torch.tensor([3])
    s = neuron_merging_scales(w, gamma, beta, mean, var, keep, pruned, eps=0.0, variant="derived")
    assert torch.allclose(s, torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))
    s_code = neuron_merging_scales(w, gamma, beta, mean, var, keep, pruned, eps=0.0, variant="code")
    # the released code picks the same partner but with its inverted variance ratio: 2 * 1 * 4 = 8
    assert torch.allclose(s_code, torch.tensor([[0.0, 8.0, 0.0]], dtype=torch.float64))


def test_neuron_merging_skips_dissimilar_channels():
    w = torch.eye(4, dtype=torch.float64)  # orthogonal filters: cosine 0 < threshold 0.1
    ones = torch.ones(4, dtype=torch.float64)
    s = neuron_merging_scales(w, ones, 0 * ones, 0 * ones, ones, torch.tensor([0, 1]), torch.tensor([2, 3]))
    assert (s == 0).all()


def test_merge_into_consumer_along_dim_and_with_t():
    v = torch.randn(3, 5, 2, 2)
    keep, pruned = torch.tensor([0, 2, 4]), torch.tensor([1, 3])
    s = torch.randn(2, 3, dtype=torch.float64)
    t = torch.rand(3) + 0.5
    out = merge_into_consumer(v, keep, pruned, s, t)
    for a, i in enumerate(keep):
        expected = t[a] * (v[:, i] + s[0, a] * v[:, 1] + s[1, a] * v[:, 3])
        assert torch.allclose(out[:, a], expected, atol=1e-6)
    lin = torch.randn(5, 7)
    assert merge_into_consumer(lin, keep, pruned, dim=0).shape == (3, 7)
