"""Weight quantizers and UDFC's quantization correction, as pure tensor functions.

Two grids, both symmetric over [-M, M] with M = max|W| (per tensor or per output channel):

- ``"dorefa"``, the UDFC paper's quantizer (eq. 3): 2^k levels spread evenly over [-M, M], with no exact zero;
  codes in {0 .. 2^k - 1}.
- ``"int"``, the integer grid of int8 runtimes: 2^k - 1 levels ``M n / (2^(k-1) - 1)`` for the integers
  ``|n| <= 2^(k-1) - 1``, zero included; codes ``n + 2^(k-1) - 1`` in {0 .. 2^k - 2}. Its values are exactly
  those of an int8 tensor with a per-channel (or per-tensor) scale, at every k (ONNX export, ``export.py``).

Both are the same formula with a different number of steps L (2^k - 1 or 2^k - 2): ``q = round(L (W / 2M + 1/2))``
and ``dequantize`` gives ``M (2 q / L - 1)``, the single formula that turns codes back into floats everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "GRANULARITIES",
    "GRIDS",
    "MIN_BITS",
    "MAX_BITS",
    "QuantizedTensor",
    "quantize_dorefa",
    "dequantize",
    "grid_levels",
    "int_codes",
    "solve_quant_correction",
]

MIN_BITS = 2
MAX_BITS = 8
GRANULARITIES = ("tensor", "channel")
GRIDS = ("dorefa", "int")


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer codes plus scale; ``dequantize(codes, scale, bits, grid)`` gives the float weight.

    ``codes`` is uint8 with the weight's shape; ``scale`` broadcasts against it: shape ``(1, 1, ...)`` for a
    per-tensor scale, ``(out, 1, ...)`` for per-output-channel scales.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    bits: int
    grid: str = "dorefa"

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.bits, dtype=dtype, grid=self.grid)

    def __repr__(self) -> str:
        kind = "per-tensor" if self.scale.numel() == 1 else "per-channel"
        return f"QuantizedTensor({self.bits}-bit {self.grid} codes {tuple(self.codes.shape)}, {kind} scale)"


def grid_levels(bits: int, grid: str = "dorefa") -> int:
    """Number of steps L between the lowest and the highest value: 2^k - 1 (dorefa) or 2^k - 2 (int)."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    return (1 << bits) - (1 if grid == "dorefa" else 2)


def quantize_dorefa(
    weight: torch.Tensor, bits: int, granularity: str = "tensor", grid: str = "dorefa"
) -> QuantizedTensor:
    """Quantize ``weight`` to ``bits`` bits with the UDFC/DoReFa symmetric quantizer (or its zero-including
    integer form, ``grid="int"``).

    ``M = max|W|`` over the tensor (``granularity="tensor"``, the paper) or over each output channel
    (``"channel"``); ``q = round(L * (W / 2M + 1/2))`` with ``L = 2^k - 1`` (dorefa) or ``2^k - 2`` (int).

    >>> w = torch.tensor([[-1.0, 0.2, 1.0]])
    >>> qt = quantize_dorefa(w, bits=2)
    >>> qt.codes.tolist(), [round(v, 4) for v in qt.dequantize()[0].tolist()]
    ([[0, 2, 3]], [-1.0, 0.3333, 1.0])
    >>> qt = quantize_dorefa(w, bits=2, grid="int")
    >>> qt.codes.tolist(), qt.dequantize()[0].tolist()
    ([[0, 1, 2]], [-1.0, 0.0, 1.0])
    """
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    levels = grid_levels(bits, grid)
    w = weight.detach().to(torch.float32)
    if granularity == "tensor":
        scale = w.abs().amax().reshape((1,) * w.ndim)
    else:
        scale = w.abs().reshape(w.shape[0], -1).amax(dim=1).reshape((-1,) + (1,) * (w.ndim - 1))
    # An all-zero tensor or channel keeps scale 0 (it dequantizes to exact zeros); divide by 1 there instead.
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((w / (2 * safe) + 0.5) * levels).clamp_(0, levels).to(torch.uint8)
    return QuantizedTensor(codes=codes, scale=scale, bits=bits, grid=grid)


def dequantize(
    codes: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype = torch.float32, grid: str = "dorefa"
) -> torch.Tensor:
    """``scale * (2 q / L - 1)`` with ``L = grid_levels(bits, grid)``: the one dequantization formula."""
    levels = grid_levels(bits, grid)
    return scale.to(dtype) * (codes.to(dtype) * (2.0 / levels) - 1.0)


def int_codes(qt: QuantizedTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, step)`` with ``qt.dequantize() == n * step``: int8 values and their scale, for int8 runtimes.

    The int grid gives ``n = q - (2^(k-1) - 1)`` and ``step = M / (2^(k-1) - 1)`` at every k; the dorefa grid
    ``n = 2 q - (2^k - 1)`` (odd integers) and ``step = M / (2^k - 1)``, which fit int8 up to k = 7 only.
    """
    levels = grid_levels(qt.bits, qt.grid)
    half = levels / 2
    if qt.grid == "int":
        n, step = qt.codes.to(torch.int16) - int(half), qt.scale / half
    else:
        n, step = 2 * qt.codes.to(torch.int16) - levels, qt.scale / levels
    if int(n.abs().max()) > 127:
        raise ValueError(
            f"{qt.bits}-bit {qt.grid} weights do not fit int8 (values up to {int(n.abs().max())}); "
            "8-bit weights need grid='int'"
        )
    return n.to(torch.int8), step.to(torch.float32)


def solve_quant_correction(
    reference: torch.Tensor, quantized: torch.Tensor, bias: torch.Tensor, alpha2: float = 0.008
) -> torch.Tensor:
    """UDFC's per-channel correction t (paper eq. 13-14, eq. 21 corrected).

    ``reference`` and ``quantized`` are the BN-folded filters R and R~ (rows = channels, any trailing shape),
    ``bias`` the BN-folded bias K. Minimises ``||R_m - t R~_m||^2 + alpha2 (K_m - t K_m)^2`` per channel:

        t_m = (R~_m . R_m + alpha2 K_m^2) / (R~_m . R~_m + alpha2 K_m^2)

    A channel whose quantized filter and bias are both zero gets t = 1 (nothing to correct).
    """
    r = reference.reshape(reference.shape[0], -1).to(torch.float64)
    rq = quantized.reshape(quantized.shape[0], -1).to(torch.float64)
    k2 = alpha2 * bias.to(torch.float64) ** 2
    num = (rq * r).sum(dim=1) + k2
    den = (rq * rq).sum(dim=1) + k2
    t = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))
    return t.to(reference.dtype)
