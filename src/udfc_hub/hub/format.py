"""The artifact format's name and version (bump the version when the layout of the files changes)."""

FORMAT = "udfc-packed"
# 2: config.json stores the weight shape of every resized module ("shapes"), so loading needs no adapter.
# 1: kept widths per pruned producer only ("channels"); the loader re-derives the other shapes with the adapter.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
