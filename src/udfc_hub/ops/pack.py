"""Dense bit packing of k-bit codes (k in 1..8) into bytes: n codes take exactly ceil(n * k / 8) bytes.

Layout: code i occupies bits [i k, (i + 1) k) of one little-endian bit stream (least significant bit first),
so four 6-bit codes fill three bytes. Pure tensor functions, vectorised in groups of 8 codes (= k bytes).
"""

from __future__ import annotations

import torch

__all__ = ["packed_size", "pack_codes", "unpack_codes"]


def packed_size(n: int, bits: int) -> int:
    """Bytes that ``n`` codes of ``bits`` bits take: ``ceil(n * bits / 8)``."""
    return (n * bits + 7) // 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``0 .. 2^bits - 1`` (any shape, read flat) into a 1-D uint8 tensor.

    >>> pack_codes(torch.tensor([1, 2, 3, 63], dtype=torch.uint8), 6).tolist()  # 4 codes x 6 bits = 3 bytes
    [129, 48, 252]
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    flat = codes.reshape(-1).to(torch.int64)
    n = flat.numel()
    if n and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in 0..{(1 << bits) - 1} for {bits}-bit packing")
    groups = torch.nn.functional.pad(flat, (0, (-n) % 8)).reshape(-1, 8)
    shifts = torch.arange(8, dtype=torch.int64) * bits
    words = (groups << shifts).sum(dim=1)  # 8 codes -> one 8k-bit word; bit 63 may hold the sign, masks fix it
    byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
    out = ((words[:, None] >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return out[: packed_size(n, bits)].clone()


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: the first ``n`` codes, as a 1-D uint8 tensor.

    >>> unpack_codes(torch.tensor([129, 48, 252], dtype=torch.uint8), 6, 4).tolist()
    [1, 2, 3, 63]
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    need = packed_size(n, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != need:
        raise ValueError(
            f"expected {need} packed bytes (uint8, 1-D) for {n} codes of {bits} bits, "
            f"got {packed.numel()} ({packed.dtype}, {packed.dim()}-D)"
        )
    raw = packed.to(torch.int64)
    groups = torch.nn.functional.pad(raw, (0, (-need) % bits)).reshape(-1, bits)
    words = (groups << (torch.arange(bits, dtype=torch.int64) * 8)).sum(dim=1)
    codes = (words[:, None] >> (torch.arange(8, dtype=torch.int64) * bits)) & ((1 << bits) - 1)
    return codes.reshape(-1)[:n].to(torch.uint8)
