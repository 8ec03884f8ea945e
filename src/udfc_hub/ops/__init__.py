"""Pure tensor math: no ``nn.Module`` knowledge lives here."""

from .pack import pack_codes, packed_size, unpack_codes
from .prune import (
    CRITERIA,
    NM_VARIANTS,
    FoldedLayer,
    PruneSolution,
    fold_batchnorm,
    merge_into_consumer,
    neuron_merging_scales,
    prune_loss,
    rank_channels,
    solve_prune_scales,
)
from .quantize import (
    GRANULARITIES,
    MAX_BITS,
    MIN_BITS,
    QuantizedTensor,
    dequantize,
    quantize_dorefa,
    solve_quant_correction,
)

__all__ = [
    "CRITERIA",
    "GRANULARITIES",
    "MAX_BITS",
    "MIN_BITS",
    "NM_VARIANTS",
    "FoldedLayer",
    "PruneSolution",
    "QuantizedTensor",
    "dequantize",
    "fold_batchnorm",
    "merge_into_consumer",
    "neuron_merging_scales",
    "pack_codes",
    "packed_size",
    "prune_loss",
    "quantize_dorefa",
    "rank_channels",
    "solve_prune_scales",
    "solve_quant_correction",
    "unpack_codes",
]
