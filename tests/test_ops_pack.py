import pytest
import torch

from udfc_hub.ops import pack_codes, packed_size, unpack_codes


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 1000, 4097])
def test_round_trip_and_exact_size(bits, n):
    codes = torch.randint(0, 1 << bits, (n,), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(n, bits) == -(-n * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, n), codes)


def test_four_six_bit_codes_fill_three_bytes():
    codes = torch.tensor([1, 2, 3, 63], dtype=torch.uint8)
    packed = pack_codes(codes, 6)
    # little-endian bit stream: 000001 | 000010 | 000011 | 111111, least significant bit first
    assert packed.tolist() == [0b10000001, 0b00110000, 0b11111100]


def test_extreme_codes_survive():
    for bits in range(1, 9):
        top = (1 << bits) - 1
        codes = torch.tensor([top, 0, top, top, 0, 0, top, top, top], dtype=torch.uint8)
        assert torch.equal(unpack_codes(pack_codes(codes, bits), bits, 9), codes)


def test_rejects_codes_out_of_range_and_wrong_lengths():
    with pytest.raises(ValueError, match="0..15"):
        pack_codes(torch.tensor([16], dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match="expected 3 packed bytes"):
        unpack_codes(torch.zeros(2, dtype=torch.uint8), 6, 4)
    with pytest.raises(ValueError, match="bits"):
        pack_codes(torch.zeros(3, dtype=torch.uint8), 9)
