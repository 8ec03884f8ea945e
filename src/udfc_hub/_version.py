"""The installed udfc-hub version, importable by any layer without importing the package root."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("udfc-hub")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
