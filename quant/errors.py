"""The one exception every refusal of the core raises.

Standards: an error names the file, the tensor and what was expected, so a user looking at a node
error in ComfyUI can tell which of their files is broken and where.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A file that cannot be loaded correctly. `file` and `tensor` are kept for callers (nodes, CLI)."""

    def __init__(self, message: str, file: str | None = None, tensor: str | None = None):
        self.reason = message
        self.file = file
        self.tensor = tensor
        where = []
        if file:
            where.append(f"file {file}")
        if tensor:
            where.append(f"tensor {tensor}")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)
