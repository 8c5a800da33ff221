"""The pack's three nodes (V3 API)."""

from .apply_policy import LTXFP8ApplyQuantPolicy
from .loader import LTXFP8CheckpointLoader
from .vram_report import LTXFP8VRAMReport

NODES = [LTXFP8CheckpointLoader, LTXFP8ApplyQuantPolicy, LTXFP8VRAMReport]
