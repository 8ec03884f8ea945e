"""The artifact format's name and version (bump the version when the layout of the files changes)."""

FORMAT = "udfc-packed"
FORMAT_VERSION = 1
