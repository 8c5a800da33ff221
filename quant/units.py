"""Byte counts as text: one formatter per unit system, the same rule as the canvas (web/ltx_fp8.js).

`format_gb` counts in powers of 1000 (GB = 10^9 bytes, as GPU vendors and disk sizes count);
`format_gib` in powers of 1024 (GiB = 2^30 bytes, as nvidia-smi, the OS and torch's memory errors
count). Each shows the largest unit of its system that the value reaches, with two decimals
("21.90 GB", "512.00 MiB"); below one kB / KiB, whole bytes ("812 B").
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

_DECIMAL = ("kB", "MB", "GB", "TB")
_BINARY = ("KiB", "MiB", "GiB", "TiB")


def _scaled(n: float, step: int, names: tuple[str, ...]) -> str:
    if abs(n) < step:
        return f"{int(n) if float(n).is_integer() else n} B"  # 5.0 -> "5 B", as JavaScript writes it
    v, i = float(n), -1
    while abs(v) >= step and i < len(names) - 1:
        v /= step
        i += 1
    # Ties round up, as JavaScript's toFixed does on the same double (Python's format rounds them
    # to even): 1152 bytes is 1.125 KiB, "1.13 KiB" in both.
    return f"{Decimal(v).quantize(Decimal('0.01'), ROUND_HALF_UP)} {names[i]}"


def format_gb(n: float) -> str:
    """`n` bytes in decimal units (kB, MB, GB, TB: powers of 1000)."""
    return _scaled(n, 1000, _DECIMAL)


def format_gib(n: float) -> str:
    """`n` bytes in binary units (KiB, MiB, GiB, TiB: powers of 1024)."""
    return _scaled(n, 1024, _BINARY)


# ----- the other direction: a size a user wrote (the policy's `budget=SIZE` term) -------------

# Public (saved in workflows as `budget=SIZE`): B, KB, MB, GB count in powers of 1000, KiB, MiB,
# GiB in powers of 1024. Letters are matched without regard to case and written back canonically.
SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
_UNIT_BY_LOWER = {u.lower(): u for u in SIZE_UNITS}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]+)\s*$")


class SizeError(ValueError):
    pass


def _split_size(text: str) -> tuple[str, str]:
    m = _SIZE_RE.match(text or "")
    unit = _UNIT_BY_LOWER.get(m.group(2).lower()) if m else None
    if unit is None:
        raise SizeError(
            f"size {text!r}: expected a number and a unit ({', '.join(SIZE_UNITS)}), e.g. '20GB', '20 GB' or '18.5GiB'"
        )
    return m.group(1), unit


def parse_size(text: str) -> int:
    """Bytes of a size such as `20GB`, `20 GB`, `18.5 GiB` or `512MiB`, rounded down to whole
    bytes (a budget is a ceiling). Raises SizeError naming the text."""
    number, unit = _split_size(text)
    return int(Decimal(number) * SIZE_UNITS[unit])


def normalize_size(text: str) -> str:
    """The canonical spelling of a size: the number as written, no space, the unit as listed in
    SIZE_UNITS (`20 gb` -> `20GB`). Raises SizeError naming the text."""
    number, unit = _split_size(text)
    return f"{number}{unit}"
