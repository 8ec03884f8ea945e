"""Activation quantizers: a per-tensor affine grid, and its clipping range chosen without data.

A quantized input is ``x^ = s (clamp(round(x / s) + z, 0, 2^k - 1) - z)`` with step ``s`` and an integer zero
point ``z``: the form of ONNX's QuantizeLinear / DequantizeLinear on uint8 (what int8 runtimes use for
activations). A non-negative input (after a ReLU) gets ``z = 0``, the unsigned range [0, hi]; any other input a
range [lo, hi] around zero with its zero point (signed values). Zero is always exact, so zero padding and a
ReLU's zeros cost nothing.

The range is the one that minimises the mean squared quantization error over a sample of the input under the
BN-matched Gaussian probe (``probe.py``): a Monte Carlo estimate of the expected error under the same moment
model the rest of udfc+ uses, instead of the sample's plain max (which wastes the grid on rare outliers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "ACT_RANGES",
    "ActRange",
    "fake_quantize",
    "choose_range",
    "expected_errors",
    "image_range",
    "CLIP_FRACTIONS",
    "MIN_STEP",
]

ACT_RANGES = ("max", "mse")

# candidate clipping points, as fractions of the sample's extreme values (fine near 1, coarse far below)
CLIP_FRACTIONS = torch.cat([torch.linspace(0.02, 0.5, 49), torch.linspace(0.505, 1.0, 100)]).double()
_SAMPLE = 1 << 18  # values of a layer's probe input that the range search looks at
MIN_STEP = 1e-8  # the finest activation step a grid is given (a constant input's grid is coarser)


@dataclass(frozen=True)
class ActRange:
    """A per-tensor activation grid: ``bits``, step ``scale`` and integer ``zero_point`` in [0, 2^bits - 1]."""

    scale: float
    zero_point: int
    bits: int

    @property
    def lo(self) -> float:
        return -self.zero_point * self.scale

    @property
    def hi(self) -> float:
        return ((1 << self.bits) - 1 - self.zero_point) * self.scale

    @property
    def unsigned(self) -> bool:
        return self.zero_point == 0

    @classmethod
    def spanning(cls, lo: float, hi: float, bits: int) -> ActRange:
        """The grid of ``bits`` from ``lo`` to ``hi`` (``lo <= 0 <= hi``), its zero point rounded to an integer."""
        levels = (1 << bits) - 1
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        scale = max((hi - lo) / levels, MIN_STEP)
        zero = int(min(max(round(-lo / scale), 0), levels))
        return cls(scale=scale, zero_point=zero, bits=bits)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor | float, zero_point: torch.Tensor | int, bits: int):
    """``x`` rounded onto the grid (step ``scale``, zero point ``zero_point``, codes 0..2^bits - 1), in x's dtype.

    >>> fake_quantize(torch.tensor([-1.0, 0.26, 0.9, 5.0]), 0.5, 2, bits=2).tolist()
    [-1.0, 0.5, 0.5, 0.5]
    """
    if torch.onnx.is_in_onnx_export():  # QuantizeLinear / DequantizeLinear on uint8, a Clip before for k < 8
        scale = scale.float().reshape(()) if isinstance(scale, torch.Tensor) else torch.tensor(float(scale))
        zero = zero_point.int().reshape(()) if isinstance(zero_point, torch.Tensor) else torch.tensor(int(zero_point))
        zero = zero.to(torch.int32)
        if bits < 8:
            x = torch.clamp(x, -zero * scale, ((1 << bits) - 1 - zero) * scale)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)
    if isinstance(scale, torch.Tensor):
        scale = scale.to(x.dtype)
    q = torch.div(x, scale)  # one new tensor, then in place: 3-4x faster than out-of-place, the same values
    return q.round_().add_(zero_point).clamp_(0, (1 << bits) - 1).sub_(zero_point).mul_(scale)


def _sample(x: torch.Tensor) -> torch.Tensor:
    flat = x.detach().reshape(-1).to(torch.float64)
    if flat.numel() > _SAMPLE:  # an even stride over the whole tensor (every channel, every image)
        flat = flat[:: -(-flat.numel() // _SAMPLE)]
    return flat


def expected_errors(values: torch.Tensor, ranges: list[ActRange]) -> torch.Tensor:
    """Mean squared quantization error of each grid over ``values``: the clipping error exactly (prefix sums over
    the sorted values), the rounding error as step^2 / 12 for every non-zero value inside the range (zero is on
    every grid). One sort, then O(log n) per grid."""
    v, _ = torch.sort(values.to(torch.float64))
    n = v.numel()
    zeros = int((v == 0).sum())
    s1 = torch.cat([v.new_zeros(1), torch.cumsum(v, 0)])
    s2 = torch.cat([v.new_zeros(1), torch.cumsum(v * v, 0)])
    lo = torch.tensor([r.lo for r in ranges], dtype=torch.float64)
    hi = torch.tensor([r.hi for r in ranges], dtype=torch.float64)
    step = torch.tensor([r.scale for r in ranges], dtype=torch.float64)
    i_lo = torch.searchsorted(v, lo)  # values below lo: v[:i_lo]
    i_hi = torch.searchsorted(v, hi, right=True)  # values above hi: v[i_hi:]
    below = (s2[i_lo] - 2 * lo * s1[i_lo] + lo * lo * i_lo).clamp(min=0)
    n_above = n - i_hi
    above = ((s2[n] - s2[i_hi]) - 2 * hi * (s1[n] - s1[i_hi]) + hi * hi * n_above).clamp(min=0)
    inside = (i_hi - i_lo - zeros).clamp(min=0)
    return (below + above + inside * step * step / 12) / max(n, 1)


def choose_range(x: torch.Tensor, bits: int, method: str = "mse") -> ActRange:
    """The grid of ``bits`` for the values ``x``: ``"max"`` spans their extremes, ``"mse"`` minimises the expected
    squared error of ``fake_quantize`` over them.

    Unsigned (zero point 0, range [0, hi]) when ``x`` has no negative value; otherwise [lo, hi] around zero. The
    ``"mse"`` candidates clip the extremes by the same fraction f (``CLIP_FRACTIONS``, up to f = 1, the plain
    max); the error of each is ``expected_errors`` over at most 2^18 evenly spaced values of ``x``.

    >>> r = choose_range(torch.randn(100_000).clamp(min=0), bits=4)
    >>> r.unsigned, 1.5 < r.hi < 3.2   # well inside the sample's max (about 4.4)
    (True, True)
    """
    if x.numel() == 0:
        return ActRange.spanning(0.0, 1.0, bits)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if hi - lo <= MIN_STEP:  # a constant (zero) input: any grid holds it
        return ActRange.spanning(lo, hi if hi > lo else lo + 1.0, bits)
    if method not in ACT_RANGES:
        raise ValueError(f"method must be one of {ACT_RANGES}, got {method!r}")
    if method == "max":
        return ActRange.spanning(lo, hi, bits)
    candidates = [ActRange.spanning(lo * f, hi * f, bits) for f in CLIP_FRACTIONS.tolist()]
    return candidates[int(torch.argmin(expected_errors(_sample(x), candidates)))]


def image_range(mean: tuple[float, ...], std: tuple[float, ...], bits: int) -> ActRange:
    """The grid over every value a normalised image can take: pixels in [0, 1] through ``(p - mean) / std``."""
    lows = [(0.0 - m) / s for m, s in zip(mean, std, strict=True)]
    highs = [(1.0 - m) / s for m, s in zip(mean, std, strict=True)]
    return ActRange.spanning(min(lows), max(highs), bits)
