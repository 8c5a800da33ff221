"""quant.units: bytes as text, decimal (GB) and binary (GiB), against hand-computed strings."""

from __future__ import annotations

import pytest

from quant.units import format_gb, format_gib


@pytest.mark.parametrize(
    "n, gb, gib",
    [
        (0, "0 B", "0 B"),
        (812, "812 B", "812 B"),
        (999, "999 B", "999 B"),
        (1000, "1.00 kB", "1000 B"),
        (1024, "1.02 kB", "1.00 KiB"),
        (1152, "1.15 kB", "1.13 KiB"),  # 1.125 KiB: a tie, rounded up as toFixed does
        (51_200_000, "51.20 MB", "48.83 MiB"),
        (2**30, "1.07 GB", "1.00 GiB"),
        (21_900_000_000, "21.90 GB", "20.40 GiB"),
        (44 * 10**9, "44.00 GB", "40.98 GiB"),
        (3 * 2**40, "3.30 TB", "3.00 TiB"),
        (10**16, "10000.00 TB", "9094.95 TiB"),  # no unit past TB / TiB
        (-2048, "-2.05 kB", "-2.00 KiB"),
        (5.0, "5 B", "5 B"),
    ],
)
def test_each_unit_system(n, gb, gib):
    assert format_gb(n) == gb
    assert format_gib(n) == gib
