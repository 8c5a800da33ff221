"""Benchmarks of the pack: load, memory, forward speed and fidelity, each against its reference
measured in the same run (`python -m bench [--quick|--smoke]`; `make bench [QUICK=1]`).

Modules: `profiles` (sizes of a run), `common` (machine facts, RSS sampling, subprocess workers),
`files` (generated real-width checkpoints, kept in bench/out/), `worker` (one load in a fresh
process), `forward` (linear / block timings), `fidelity` (tiny LTXAV model, pack vs host),
`targets` (met / not met), `render` (BENCHMARKS.md tables and PNG plots), `convert` (the convert
profile: `python -m bench.convert --src BUNDLE`, on its own; see `profiles.STANDALONE`).
"""

# One copy of each core module per bench process: `quant` (forward, worker, tools.ltx2_fixture)
# and the pack's bridge (`from ..quant ...`) share the same modules (see tools/host_inprocess.py).
from tools.host_inprocess import register_pack

register_pack()
