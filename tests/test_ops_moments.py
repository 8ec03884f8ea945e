"""The BN-moment math of udfc+: checked against Monte Carlo, exact special cases and a direct convolution."""

import math

import pytest
import torch
import torch.nn.functional as F

from udfc_hub.ops import (
    expected_output_shift,
    filter_correlation,
    intercepts,
    relu_mean,
    relu_moments,
    relu_variance,
    solve_nonnegative_scales,
    solve_relu_scales,
    variance_ratio,
)


def _gaussian(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, generator=g, dtype=torch.float64)
    std = torch.rand(n, generator=g, dtype=torch.float64) + 0.3
    R = torch.randn(n, 8, generator=g, dtype=torch.float64)
    return mean, std, filter_correlation(R)


def test_relu_moments_match_monte_carlo():
    mean, std, corr = _gaussian()
    moments = relu_moments(mean, std, corr)
    cov = std[:, None] * corr * std[None, :]
    eps = torch.randn(400_000, len(mean), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z = (mean + eps @ torch.linalg.cholesky(cov).T).clamp(min=0)
    # the Monte Carlo standard error here is below 3e-3
    assert torch.allclose(moments.mean, z.mean(0), atol=6e-3)
    assert torch.allclose(moments.cov, torch.cov(z.T), atol=1e-2)
    assert torch.allclose(moments.cov, moments.cov.T)
    assert torch.linalg.eigvalsh(moments.cov).min() > -1e-9


def test_relu_moments_closed_form_cases():
    # independent channels: no covariance; identical channels: the variance of a rectified Gaussian
    m, s = torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64)
    indep = relu_moments(m, s, torch.eye(2, dtype=torch.float64))
    assert abs(float(indep.cov[0, 1])) < 1e-9
    r = 0.5
    second = (r * r + 1) * 0.5 * (1 + math.erf(r / math.sqrt(2))) + r * math.exp(-r * r / 2) / math.sqrt(2 * math.pi)
    same = relu_moments(m, s, torch.ones(2, 2, dtype=torch.float64))
    expected = second - float(relu_mean(m[:1], s[:1])) ** 2
    assert float(same.cov[0, 1]) == pytest.approx(expected, rel=1e-6)
    assert float(same.cov[0, 0]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("cap", [None, 6.0, 0.8])
def test_relu_variance_is_the_moments_diagonal_in_closed_form(cap):
    # wide means, including channels that are always on, never on and saturated at the cap
    g = torch.Generator().manual_seed(1)
    mean = torch.cat([torch.randn(40, generator=g, dtype=torch.float64) * 3, torch.tensor([30.0, -30.0, 7.0])])
    std = torch.rand(43, generator=g, dtype=torch.float64) * 2 + 0.05
    var = relu_variance(mean, std, cap)
    quadrature = torch.diagonal(relu_moments(mean, std, torch.eye(43, dtype=torch.float64), cap=cap).cov)
    assert torch.allclose(var, quadrature, rtol=1e-6, atol=1e-9)
    z = mean + std * torch.randn(200_000, 43, generator=g, dtype=torch.float64)
    a = z.clamp(min=0) if cap is None else z.clamp(0, cap)
    assert torch.allclose(var, a.var(0), rtol=0.02, atol=1e-3)


def test_relu_fit_recovers_a_duplicate_and_a_constant():
    # channel 2 duplicates channel 0 exactly; channel 3 is uncorrelated with the rest
    mean = torch.tensor([0.2, -0.1, 0.2, 0.4], dtype=torch.float64)
    std = torch.tensor([1.0, 0.5, 1.0, 0.7], dtype=torch.float64)
    R = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.0]], dtype=torch.float64)
    moments = relu_moments(mean, std, filter_correlation(R))
    keep, pruned = torch.tensor([0, 1]), torch.tensor([2, 3])
    scales = solve_relu_scales(moments, keep, pruned, ridge=1e-12)
    assert torch.allclose(scales, torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64), atol=1e-6)
    b = intercepts(moments.mean, keep, pruned, scales)
    assert abs(float(b[0])) < 1e-6  # nothing left to explain
    assert float(b[1]) == pytest.approx(float(moments.mean[3]), rel=1e-6)  # only its mean can be kept


def test_nonnegative_scales_are_the_constrained_least_squares():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(20, 5, generator=g, dtype=torch.float64)
    b = torch.randn(20, 3, generator=g, dtype=torch.float64)
    s = solve_nonnegative_scales(A.T @ A, A.T @ b, iterations=5000)
    assert (s >= 0).all()
    # KKT: the gradient is zero on the free coordinates and non-negative on the active ones
    grad = (A.T @ A @ s.T - A.T @ b).T
    assert grad[s > 1e-9].abs().max() < 1e-6
    assert (grad[s <= 1e-9] > -1e-6).all()


def test_variance_ratio_of_dropping_independent_channels():
    cov = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    v = torch.ones(1, 3, 1, 1)
    keep, pruned = torch.tensor([0, 2]), torch.tensor([1])
    merged = v[:, keep]
    ratio = variance_ratio(v, merged, cov, keep)
    assert float(ratio) == pytest.approx(4 / 6, rel=1e-6)
    assert float(variance_ratio(v, v, cov, torch.arange(3))) == pytest.approx(1.0)
    del pruned


@pytest.mark.parametrize("groups", [1, 4])
def test_expected_shift_equals_the_convolution_of_the_mean(groups):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 8, 7, 7, generator=g, dtype=torch.float64)
    dw = torch.randn(8, 8 // groups, 3, 3, generator=g, dtype=torch.float64)
    taps = F.unfold(x, 3, padding=1, stride=2)[0].mean(-1).reshape(8, 3, 3)
    direct = F.conv2d(x, dw, padding=1, stride=2, groups=groups)[0].mean((1, 2))
    assert torch.allclose(expected_output_shift(dw, taps, groups), direct, atol=1e-12)
    lin = torch.randn(3, 8, generator=g, dtype=torch.float64)
    assert torch.allclose(expected_output_shift(lin, x[0, :, 0, 0]), lin @ x[0, :, 0, 0])


def test_relu_moments_are_kept_for_identical_inputs_and_returned_as_copies():
    from udfc_hub.ops import moments

    moments.clear_cache()
    torch.manual_seed(0)
    mean, std = torch.randn(6), torch.rand(6) + 0.5
    a = torch.randn(6, 6)
    corr = torch.corrcoef(a @ a.T)
    first = moments.relu_moments(mean, std, corr, cap=6.0)
    assert len(moments._CACHE) == 1
    first.cov.zero_()  # a caller's change does not reach the kept result
    again = moments.relu_moments(mean.clone(), std.clone(), corr.clone(), cap=6.0)
    assert len(moments._CACHE) == 1 and torch.equal(again.cov, moments._relu_moments(mean, std, corr, cap=6.0).cov)
    moments.relu_moments(mean, std, corr, cap=None)  # other arguments: another entry
    assert len(moments._CACHE) == 2
    moments.clear_cache()
    assert not moments._CACHE
