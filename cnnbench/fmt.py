"""Number formatting shared by the commands that print tables (``models``, ``summary``, ``report``).

Never imports torch, so ``cnnbench report`` can use it without loading it.
"""

from __future__ import annotations


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (k, M, G, T); below 1000 a whole number: 512 -> '512'."""
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.3g}{prefix}{unit}" if prefix else f"{n:.0f}{unit}"
        n /= 1000
    return f"{n}{unit}"
