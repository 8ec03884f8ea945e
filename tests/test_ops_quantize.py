import pytest
import torch

from udfc_hub.ops import dequantize, quantize_dorefa, solve_quant_correction


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_levels_range_and_error(bits, granularity):
    w = torch.randn(16, 8, 3, 3)
    qt = quantize_dorefa(w, bits, granularity)
    levels = 2**bits - 1
    assert qt.codes.dtype == torch.uint8 and qt.codes.shape == w.shape
    assert int(qt.codes.min()) >= 0 and int(qt.codes.max()) <= levels
    wq = qt.dequantize()
    m = w.abs().amax() if granularity == "tensor" else w.abs().flatten(1).amax(1)[:, None, None, None]
    # every value lies on the grid M * (2q / (2^k - 1) - 1), within [-M, M], no exact zero
    grid = (wq / m + 1) * levels / 2
    assert torch.allclose(grid, grid.round(), atol=1e-4)
    assert (wq.abs() <= m * (1 + 1e-6)).all()
    assert (wq != 0).all()
    # round-to-nearest: error at most half a step, step = 2M / (2^k - 1)
    assert ((wq - w).abs() <= m / levels * (1 + 1e-5)).all()
    # the extreme weights hit the extreme levels exactly
    if granularity == "tensor":
        assert torch.isclose(wq.abs().max(), m)
        assert len(torch.unique(qt.codes)) <= 2**bits
    else:
        assert torch.allclose(wq.abs().flatten(1).amax(1), m.flatten())


def test_two_bit_example():
    qt = quantize_dorefa(torch.tensor([[-1.0, -0.2, 0.2, 1.0]]), bits=2)
    assert qt.codes.tolist() == [[0, 1, 2, 3]]
    assert torch.allclose(qt.dequantize(), torch.tensor([[-1.0, -1 / 3, 1 / 3, 1.0]]))


def test_zero_tensor_and_zero_channel_stay_zero():
    w = torch.randn(3, 4)
    w[1] = 0
    assert (quantize_dorefa(torch.zeros(2, 3), 4).dequantize() == 0).all()
    assert (quantize_dorefa(w, 4, "channel").dequantize()[1] == 0).all()


def test_dequantize_values():
    # 3 bits: 7 steps between -M and M; codes 0..7 of a per-channel scale (2, 0.5) written out by hand
    codes = torch.arange(8, dtype=torch.uint8).repeat(2, 1)
    scale = torch.tensor([[2.0], [0.5]])
    grid = [-1, -5 / 7, -3 / 7, -1 / 7, 1 / 7, 3 / 7, 5 / 7, 1]
    expected = torch.tensor([[2.0 * g for g in grid], [0.5 * g for g in grid]])
    assert torch.allclose(dequantize(codes, scale, 3), expected, atol=1e-7)
    # quantizing the dequantized grid gives the same codes back (the grid is the quantizer's fixed point)
    assert torch.equal(quantize_dorefa(expected, 3, "channel").codes, codes)


@pytest.mark.parametrize("bits", [1, 9, 0])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="2..8"):
        quantize_dorefa(torch.randn(2, 2), bits)


def test_bad_granularity():
    with pytest.raises(ValueError, match="granularity"):
        quantize_dorefa(torch.randn(2, 2), 4, "row")


def test_quant_correction_is_the_least_squares_scale():
    R = torch.randn(6, 20, dtype=torch.float64)
    Rq = R + 0.1 * torch.randn_like(R)
    K = torch.randn(6, dtype=torch.float64)
    a2 = 0.008
    t = solve_quant_correction(R, Rq, K, a2)
    for m in range(6):
        A = torch.cat([Rq[m], (a2**0.5 * K[m])[None]])[:, None]
        b = torch.cat([R[m], (a2**0.5 * K[m])[None]])[:, None]
        ref = torch.linalg.lstsq(A, b).solution.item()
        assert t[m].item() == pytest.approx(ref, rel=1e-10)


def test_quant_correction_is_one_without_error():
    R = torch.randn(4, 9)
    assert torch.allclose(solve_quant_correction(R, R, torch.randn(4)), torch.ones(4))
    assert torch.equal(solve_quant_correction(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2)), torch.ones(2))
