"""Human-readable sizes for tables, cards and logs (one formatter each, shared by the CLI and the card)."""

from __future__ import annotations

__all__ = ["format_bytes", "format_count"]


def format_bytes(n: float | None, digits: int = 2) -> str:
    """Megabytes (10^6 bytes).

    >>> format_bytes(11_800_000, 1), format_bytes(None)
    ('11.8 MB', '-')
    """
    return "-" if n is None else f"{n / 1e6:.{digits}f} MB"


def format_count(n: float, unit: str | None = None, digits: int = 2) -> str:
    """A count in millions (``"M"``) or billions (``"G"``); without ``unit``, G from 10^9 on.

    >>> format_count(21_797_672), format_count(3_670_000_000), format_count(1_820_000_000, "G", 3)
    ('21.80 M', '3.67 G', '1.820 G')
    """
    unit = unit or ("G" if n >= 1e9 else "M")
    return f"{n / (1e9 if unit == 'G' else 1e6):.{digits}f} {unit}"
