"""The on-disk cache of images distilled from a model's BatchNorm statistics (``refit="distilled"``).

Distilling costs minutes on a CPU; the images depend only on the model's weights and the distillation settings,
so they are kept on disk, keyed by a digest of both, and a second compression of the same model (or every cell
of a sweep) reads them back. Where: ``$UDFC_HUB_CACHE``, else ``$HF_HOME/udfc_hub`` (``~/.cache/huggingface/
udfc_hub`` by default), as huggingface_hub places its own cache. Bounded by ``$UDFC_HUB_CACHE_SIZE`` bytes (default
2 GB): the least recently used entries go first. Every write is a temporary file renamed into place, so writers
running at once (a sweep's Ray workers) never leave a torn entry, and a file that cannot be read counts as absent.
``cache_info`` lists the entries and ``clear_cache`` removes them (CLI: ``udfc-hub cache [--clear]``).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["cache_dir", "cache_info", "clear_cache", "load_distilled", "store_distilled"]

DEFAULT_SIZE = 2 << 30
_KIND = "distilled"


def cache_dir() -> Path:
    """The folder of udfc-hub's cache (see the module docstring)."""
    if os.environ.get("UDFC_HUB_CACHE"):
        return Path(os.environ["UDFC_HUB_CACHE"]).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME).expanduser() / "udfc_hub"


def _limit() -> int:
    try:
        return max(0, int(os.environ.get("UDFC_HUB_CACHE_SIZE", DEFAULT_SIZE)))
    except ValueError:
        return DEFAULT_SIZE


def _entry(key: str) -> Path:
    return cache_dir() / _KIND / f"{key}.safetensors"


def load_distilled(key: str) -> tuple[torch.Tensor, float, float] | None:
    """The images and the first / last losses stored under ``key``, or None (absent or unreadable)."""
    from safetensors import safe_open

    path = _entry(key)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            images, meta = f.get_tensor("images"), f.metadata() or {}
        first, last = float(meta["first"]), float(meta["last"])
    except Exception:  # noqa: BLE001 - torn, truncated or foreign: distil again and replace it
        path.unlink(missing_ok=True)
        return None
    os.utime(path)  # recently used: the last to go
    return images, first, last


def store_distilled(key: str, images: torch.Tensor, first: float, last: float) -> None:
    """Keep ``images`` under ``key`` (atomically), then trim the cache to its size. A cache that cannot be
    written (a read-only home) is skipped: the images were computed all the same."""
    from safetensors.torch import save_file

    path = _entry(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(
                {"images": images.detach().cpu().contiguous()}, tmp, metadata={"first": repr(first), "last": repr(last)}
            )
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError:
        return
    _trim(_limit())


def _entries() -> list[Path]:
    folder = cache_dir() / _KIND
    return sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []


def _trim(limit: int) -> None:
    entries = _entries()  # oldest first
    total = sum(p.stat().st_size for p in entries)
    for path in entries[:-1]:  # the newest entry stays whatever its size
        if total <= limit:
            break
        total -= path.stat().st_size
        path.unlink(missing_ok=True)


def cache_info() -> dict[str, Any]:
    """Where the cache is, its size limit, and its entries (name, bytes, last used), most recent first.

    >>> sorted(cache_info())
    ['entries', 'folder', 'limit_bytes', 'total_bytes']
    """
    entries = [
        {"name": p.stem, "kind": _KIND, "bytes": p.stat().st_size, "last_used": time.ctime(p.stat().st_mtime)}
        for p in reversed(_entries())
    ]
    return {
        "folder": str(cache_dir()),
        "limit_bytes": _limit(),
        "total_bytes": sum(e["bytes"] for e in entries),
        "entries": entries,
    }


def clear_cache() -> int:
    """Remove every cached entry; returns how many were removed."""
    entries = _entries()
    for path in entries:
        path.unlink(missing_ok=True)
    return len(entries)
