"""Weight quantizers and UDFC's quantization correction, as pure tensor functions.

The quantizer is the symmetric DoReFa form of the UDFC paper (eq. 3): 2^k levels spread evenly over
[-M, M], with no exact zero. A quantized tensor is stored as integer codes in {0 .. 2^k - 1} plus a scale M
(one per tensor, or one per output channel), and ``dequantize`` is the single formula that turns the pair back
into floats everywhere in the project.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "GRANULARITIES",
    "MIN_BITS",
    "MAX_BITS",
    "QuantizedTensor",
    "quantize_dorefa",
    "dequantize",
    "solve_quant_correction",
]

MIN_BITS = 2
MAX_BITS = 8
GRANULARITIES = ("tensor", "channel")


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer codes plus scale; ``dequantize(codes, scale, bits)`` gives the float weight.

    ``codes`` is uint8 with the weight's shape; ``scale`` broadcasts against it: shape ``(1, 1, ...)`` for a
    per-tensor scale, ``(out, 1, ...)`` for per-output-channel scales.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    bits: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.bits, dtype=dtype)

    def __repr__(self) -> str:
        kind = "per-tensor" if self.scale.numel() == 1 else "per-channel"
        return f"QuantizedTensor({self.bits}-bit codes {tuple(self.codes.shape)}, {kind} scale)"


def _levels(bits: int) -> int:
    return (1 << bits) - 1


def quantize_dorefa(weight: torch.Tensor, bits: int, granularity: str = "tensor") -> QuantizedTensor:
    """Quantize ``weight`` to ``bits`` bits with the UDFC/DoReFa symmetric quantizer.

    ``M = max|W|`` over the tensor (``granularity="tensor"``, the paper) or over each output channel
    (``"channel"``); ``q = round((2^k - 1) * (W / 2M + 1/2))``.

    >>> w = torch.tensor([[-1.0, 0.2, 1.0]])
    >>> qt = quantize_dorefa(w, bits=2)
    >>> qt.codes.tolist(), [round(v, 4) for v in qt.dequantize()[0].tolist()]
    ([[0, 2, 3]], [-1.0, 0.3333, 1.0])
    """
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    w = weight.detach().to(torch.float32)
    if granularity == "tensor":
        scale = w.abs().amax().reshape((1,) * w.ndim)
    else:
        scale = w.abs().reshape(w.shape[0], -1).amax(dim=1).reshape((-1,) + (1,) * (w.ndim - 1))
    levels = _levels(bits)
    # An all-zero tensor or channel keeps scale 0 (it dequantizes to exact zeros); divide by 1 there instead.
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((w / (2 * safe) + 0.5) * levels).clamp_(0, levels).to(torch.uint8)
    return QuantizedTensor(codes=codes, scale=scale, bits=bits)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``scale * (2 q / (2^k - 1) - 1)``: the one dequantization formula of the project."""
    levels = _levels(bits)
    return scale.to(dtype) * (codes.to(dtype) * (2.0 / levels) - 1.0)


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
