"""The artifact format's name and version (bump the version when the layout of the files changes)."""

FORMAT = "udfc-packed"
# 5: per-layer weight bits ("layer_bits": the quantized layers whose bits differ from "bits", from
#    bit_widths="mixed"); written only when set.
# 4: the int8 data flow between layers ("act_inputs": enclosing modules whose input shares a layer's quantizer,
#    "act_outputs": modules whose output is quantized, e.g. before a residual addition); written only when set.
# 3: activation quantization ("act_bits", "act_layers": input scales and zero points in the weights file) and the
#    weight grid ("grid": "int"); written only by artifacts that use them, every other artifact stays version 2.
# 2: config.json stores the weight shape of every resized module ("shapes"), so loading needs no adapter.
# 1: kept widths per pruned producer only ("channels"); the loader re-derives the other shapes with the adapter.
FORMAT_VERSION = 2  # what a weight-only artifact on the paper's grid is written as
ACT_FORMAT_VERSION = 3
FLOW_FORMAT_VERSION = 4
MIXED_FORMAT_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
# the first udfc-hub release that reads each format version (the model card's install line names it)
FIRST_READER = {1: "0.1.0", 2: "0.1.0", 3: "0.1.0", 4: "0.1.0", 5: "0.1.0"}
