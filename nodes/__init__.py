"""The pack's four nodes (V3 API): the loader, Apply Quant Policy, VRAM Report, and Save LTX FP8
Checkpoint."""

from .apply_policy import LTXFP8ApplyQuantPolicy
from .loader import LTXFP8CheckpointLoader
from .save_checkpoint import LTXFP8SaveCheckpoint
from .vram_report import LTXFP8VRAMReport

NODES = [LTXFP8CheckpointLoader, LTXFP8ApplyQuantPolicy, LTXFP8VRAMReport, LTXFP8SaveCheckpoint]
