"""The sizes of a benchmark run: `full` (the default), `quick` (`QUICK=1`, a few minutes) and
`smoke` (tiny widths, seconds: the smoke test)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Profile:
    name: str
    base: str  # "REAL" or "TINY" (tools.ltx2_fixture configs)
    num_layers: int  # transformer blocks of the load files
    connector_num_layers: int = 1
    load_reps: int = 1  # each load kind runs this many times (round robin)
    load_blocks: bool = True  # also load the blocks alone (the fp8 part of the file)
    # forward: token counts for the single linears and for the whole block
    linear_tokens: list[int] = field(default_factory=lambda: [512, 2048, 8192])
    block_tokens: list[int] = field(default_factory=lambda: [512, 2048])
    skipped_block_tokens: list[int] = field(default_factory=lambda: [8192])
    forward_max_reps: int = 3
    forward_budget_s: float = 120.0  # per (subject, tokens): stop repeating once past this (>= 1 rep)
    fidelity: bool = True
    rss_interval_s: float = 0.005  # RSS sampling period during a load

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "full": Profile(
        "full",
        "REAL",
        num_layers=3,
        load_reps=3,
        linear_tokens=[512, 2048, 8192],
        block_tokens=[512, 2048],
        skipped_block_tokens=[8192],
        forward_max_reps=3,
        forward_budget_s=75.0,
    ),
    "quick": Profile(
        "quick",
        "REAL",
        num_layers=1,
        load_reps=1,
        linear_tokens=[512, 2048],
        block_tokens=[512],
        skipped_block_tokens=[2048, 8192],
        forward_max_reps=3,
        forward_budget_s=25.0,
    ),
    "smoke": Profile(
        "smoke",
        "TINY",
        num_layers=1,
        load_reps=1,
        load_blocks=False,
        linear_tokens=[16, 64],
        block_tokens=[16],
        skipped_block_tokens=[],
        forward_max_reps=2,
        forward_budget_s=2.0,
        rss_interval_s=0.002,
    ),
}


# Profiles that run on their own, on the full-size bundle (`python -m bench.<module> --src FILE`, under
# `flock <bundle folder>/.lock`): each writes its own section of bench/results.json and BENCHMARKS.md.
STANDALONE = {
    "convert": "bench.convert",  # `python -m quant convert` vs a raw copy of the same file; peak private memory
}
