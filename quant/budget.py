"""Fit a weight budget: the most precise model that fits, chosen per layer, before anything loads.

A policy with a budget (`auto; budget=20GB`, see quant/policy.py) is planned as without one; then,
while the model the plan describes holds more bytes than the budget, full-precision linears are
moved to fp8 (quantized at load, as any full-precision layer headed for fp8 is) in order of least
harm first. The bytes are the load report's `total_bytes` (quant/holdings.plan_holdings: every
transformer weight, scale and other tensor held, in the compute dtype), counted by the same
functions; the mode of a moved layer is decided by quant/modes.decide_mode (`by_budget=True`).

Candidates: the linears the plan holds in full precision that no rule of the user names (a rule
is a constraint and wins: a layer a rule pins to bf16 stays bf16, whatever the budget).

Order, least harm first:
  1. layers stored as e4m3 codes in the file (a `bf16` preset dequantizes them): keeping the
     file's codes changes nothing but the bytes (error 0, nothing read);
  2. the other candidates, by the relative error of their own fp8 version,
     |dequant(quant(W)) - W| / |W| (Frobenius, quantized exactly as the load would: amax/448,
     per tensor or per row), measured from the layer's weights while planning: only candidate
     layers are read, one at a time, in file order;
  3. last, layers a file author kept in full precision inside an fp8 file, and the layers outside
     the transformer blocks (patchify, proj_out, AdaLN, connectors: the official fp8 files never
     quantize them, and the presets keep them), each group again by measured error.
Ties break by name, so a plan is reproducible.

The greedy pass stops as soon as the model fits; then every moved layer, most harmful first, goes
back to full precision if the model still fits without it: the plan is maximal (no moved layer
could have stayed full precision within the budget). A budget that even the smallest possible
model (every candidate in fp8) exceeds is refused before a single weight is read, with that
smallest size and what holds it up (the rules' pins, the other tensors, the fp8 floor).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import torch

from .errors import CheckpointError
from .fp8 import amax_scale, dequantize, quantize
from .holdings import layer_weight_bytes, other_tensor_bytes, plan_holdings
from .ltx2_shapes import is_sensitive
from .modes import decide_mode
from .plan import LayerPlan, LoadPlan, finish_plan, retarget
from .units import format_gb

# Ranks of the order above.
KEPT_CODES, MEASURED, KEPT_BY_AUTHOR = 0, 1, 2
TIER_NAMES = {
    KEPT_CODES: "file's fp8 codes kept",
    MEASURED: "measured",
    KEPT_BY_AUTHOR: "kept full precision by the file",
}


class BudgetError(CheckpointError):
    """No plan within the policy's rules fits the budget."""


@dataclass(frozen=True)
class Candidate:
    """A full-precision linear the budget may move to fp8."""

    name: str
    params: int
    saved_bytes: int  # its full-precision bytes minus its fp8 bytes
    tier: int  # KEPT_CODES, MEASURED or KEPT_BY_AUTHOR
    error: float  # predicted relative weight error in fp8


def choose(candidates: list[Candidate], unbudgeted: int, budget: int) -> tuple[list[Candidate], int]:
    """Which candidates to move so that `unbudgeted` bytes fit `budget`: least harm first (tier,
    then error, then name) until it fits; then the most harmful moved ones go back while it still
    fits (maximal). Returns (moved, total bytes). The caller has checked that moving all fits."""
    moved, total = [], unbudgeted
    for c in sorted(candidates, key=lambda c: (c.tier, c.error, c.name)):
        if total <= budget:
            break
        moved.append(c)
        total -= c.saved_bytes
    for c in list(reversed(moved)):
        if total + c.saved_bytes <= budget:
            moved.remove(c)
            total += c.saved_bytes
    return moved, total


@dataclass(frozen=True)
class BudgetFit:
    """What the budget did to a plan (the load report's `budget` entry: `as_dict`)."""

    budget: str  # canonical text, e.g. "20GB"
    budget_bytes: int
    total_bytes: int  # the plan's total_bytes after the fit (<= budget_bytes)
    unbudgeted_bytes: int  # total_bytes of the same policy without the budget
    minimum_bytes: int  # every candidate in fp8
    candidates: int
    moved: tuple[Candidate, ...]
    # Relative fp8 error of every candidate measured so far (a fit for another compute dtype
    # reuses them instead of reading the layers again).
    errors: dict[str, float] = field(default_factory=dict)
    measured_layers: int = 0  # layers read to measure their error in this fit
    measured_bytes: int = 0  # bytes of those layers in the file
    measure_seconds: float = 0.0  # reading + measuring them
    fit_seconds: float = 0.0  # the whole fit, measuring included

    @property
    def worst_error(self) -> float:
        return max((m.error for m in self.moved), default=0.0)

    @property
    def mean_error(self) -> float:
        """Mean predicted error of the moved layers, weighted by their parameters."""
        params = sum(m.params for m in self.moved)
        return sum(m.error * m.params for m in self.moved) / params if params else 0.0

    def as_dict(self) -> dict:
        return {
            "budget": self.budget,
            "budget_bytes": self.budget_bytes,
            "total_bytes": self.total_bytes,
            "fits": self.total_bytes <= self.budget_bytes,
            "unbudgeted_bytes": self.unbudgeted_bytes,
            "minimum_bytes": self.minimum_bytes,
            "candidates": self.candidates,
            "moved_layers": len(self.moved),
            "moved_params": sum(m.params for m in self.moved),
            "saved_bytes": sum(m.saved_bytes for m in self.moved),
            "predicted_error": {"worst": self.worst_error, "weighted_mean": self.mean_error},
            "moved": [
                {
                    "name": m.name,
                    "params": m.params,
                    "predicted_error": m.error,
                    "saved_bytes": m.saved_bytes,
                    "order": TIER_NAMES[m.tier],
                }
                for m in self.moved
            ],
            "measured_layers": self.measured_layers,
            "measured_bytes": self.measured_bytes,
            "measure_seconds": self.measure_seconds,
            "fit_seconds": self.fit_seconds,
        }


# ----- least harm ------------------------------------------------------------------------------


# A layer larger than this many weights has its error measured on evenly spaced rows totalling
# about this many (with the scale of the whole layer, as the load computes it: one max/min pass
# over the stored weight). On 2 CPU cores the exact error of one 16384 x 4096 layer takes several
# seconds (e4m3 -> fp32 is not vectorized on CPU), many times the time to read it; the sample's
# error agrees with the exact one within 3% (tests/quant/test_budget.py measures both on
# real-width layers).
SAMPLE_WEIGHTS = 1 << 18


def fp8_relative_error(weight: torch.Tensor, per_row: bool = False, sample: int | None = SAMPLE_WEIGHTS) -> float:
    """|dequant(quant(W)) - W| / |W| (Frobenius, summed in float64) for W quantized as the load
    would quantize it (quant/fp8: amax/448 scale of the whole tensor or of each row, clamp, e4m3).
    `sample`: measure on evenly spaced rows of about that many weights in all (None: every row)."""
    scale = amax_scale(weight, per_row)
    rows = weight.shape[0]
    step = max(1, (weight.numel() // sample) if sample else 1)
    if step > 1 and rows >= step:
        pick = slice(0, rows, step)
        weight = weight[pick]
        scale = scale[pick] if per_row else scale
    num = den = 0.0
    for chunk, sc in _chunks(weight, scale, per_row):  # fp32 temporaries of a few MB, not GBs
        w = chunk.float()
        codes, _ = quantize(w, sc)
        diff = dequantize(codes, sc).sub_(w)
        num += float(torch.linalg.vector_norm(diff, dim=-1).double().square().sum())
        den += float(torch.linalg.vector_norm(w, dim=-1).double().square().sum())
    return (num / den) ** 0.5 if den > 0 else num**0.5


def _chunks(weight: torch.Tensor, scale: torch.Tensor, per_row: bool, size: int = 1 << 20):
    n = max(1, size // max(weight.shape[1], 1))
    for i in range(0, weight.shape[0], n):
        yield weight[i : i + n], (scale[i : i + n] if per_row else scale)


def tier(lp: LayerPlan, file_has_fp8: bool) -> int:
    if lp.stored_e4m3:
        return KEPT_CODES
    if (file_has_fp8 and not lp.src.stored_fp8) or is_sensitive(lp.name):
        return KEPT_BY_AUTHOR
    return MEASURED


def measure_errors(plan: LoadPlan, layers: list[LayerPlan]) -> tuple[dict[str, float], int, float]:
    """The fp8 error of each layer's own weights, read one at a time in file order (the next one is
    read while the current one is measured); e4m3 layers are 0 without a read. Returns (errors,
    bytes read, seconds)."""
    start, errors = time.perf_counter(), {}
    todo = []
    for lp in layers:
        if lp.stored_e4m3:
            errors[lp.name] = 0.0
        else:
            todo.append(lp)
    todo.sort(key=lambda lp: lp.src.weight.begin)
    threads = torch.get_num_threads()
    # One compute thread: the work per layer is one min/max pass and a few ops on a small sample,
    # where OpenMP's fork/join costs more than it gives (2x slower on a busy 2-core machine), and
    # reading the next layer, not computing, is what bounds the measurement.
    torch.set_num_threads(1)
    try:
        _measure(plan, todo, errors)
    finally:
        torch.set_num_threads(threads)
    read = sum(lp.src.weight.nbytes for lp in todo)
    return errors, read, time.perf_counter() - start


def _measure(plan: LoadPlan, todo: list[LayerPlan], errors: dict[str, float]) -> None:
    # Two buffers, reused: the reader fills one while the other is measured (file reads and torch
    # kernels release the GIL). Fresh memory for every layer cost more in page faults than the
    # read itself.
    size = max((lp.src.weight.nbytes for lp in todo), default=0)
    buffers = (bytearray(size), bytearray(size))
    with open(plan.path, "rb") as f, ThreadPoolExecutor(1, thread_name_prefix="ltx-fp8-budget") as pool:

        def read(i):
            return _read_into(f, todo[i].src.weight, buffers[i % 2], plan.path)

        pending = pool.submit(read, 0) if todo else None
        for i, lp in enumerate(todo):
            w = pending.result()
            pending = pool.submit(read, i + 1) if i + 1 < len(todo) else None
            if lp.src.stored_fp8:  # e5m2 codes: the load dequantizes, then quantizes as e4m3
                w = dequantize(w, lp.scale)
            if lp.transposed:
                w = w.t()
            errors[lp.name] = fp8_relative_error(w, plan.per_row_quant)
            del w


def _read_into(f, info, buf: bytearray, path: str) -> torch.Tensor:
    """Tensor `info` (offsets checked by read_header) read into `buf`, viewed in its dtype."""
    view = memoryview(buf)
    try:
        f.seek(info.begin)
        got = 0
        while got < info.nbytes:
            n = f.readinto(view[got : info.nbytes])
            if not n:
                raise CheckpointError(
                    f"short read: got {got} of {info.nbytes} bytes at offset {info.begin} "
                    "(file truncated or changed since its header was read)",
                    file=path,
                    tensor=info.name,
                )
            got += n
    finally:
        view.release()
    raw = (
        torch.frombuffer(buf, dtype=torch.uint8, count=info.nbytes)
        if info.nbytes
        else torch.empty(0, dtype=torch.uint8)
    )
    return raw.view(info.torch_dtype).reshape(info.shape)


# ----- the fit ---------------------------------------------------------------------------------


def _base_layers(plan: LoadPlan) -> list[LayerPlan]:
    """The plan's layers as the policy decides them without the budget."""
    out = []
    for lp in plan.layers:
        d = decide_mode(plan.policy, lp.name, lp.out_in, lp.stored_e4m3, plan.caps)
        out.append(lp if d == lp.decision else retarget(lp, d))
    return out


def fit_budget(plan: LoadPlan) -> LoadPlan:
    """`plan` with the fewest, least harmful layers moved to fp8 so that its total_bytes fits the
    policy's budget (see the module docstring). Raises BudgetError when no plan fits."""
    started = time.perf_counter()
    budget = plan.policy.budget_bytes
    if budget is None:
        return plan
    before = plan.layers
    base = replace(plan, layers=_base_layers(plan), budget=None)
    dtype, per_row = plan.compute_dtype, plan.per_row_quant
    unbudgeted = plan_holdings(base)["total_bytes"]
    candidates = [lp for lp in base.layers if lp.mode == "bf16" and plan.policy.rule_for(lp.name) is None]
    saved = {
        lp.name: layer_weight_bytes(lp, dtype, "bf16", per_row) - layer_weight_bytes(lp, dtype, "fp8-cast", per_row)
        for lp in candidates
    }
    minimum = unbudgeted - sum(saved.values())
    if minimum > budget:
        raise BudgetError(_impossible(plan.policy, base, budget, minimum, len(candidates)), file=plan.path)
    previous = plan.budget if isinstance(plan.budget, BudgetFit) else None
    errors = dict(previous.errors) if previous else {}
    measured_bytes, measure_seconds, measured_layers = 0, 0.0, 0
    moved: list[Candidate] = []
    total = unbudgeted
    if unbudgeted > budget:
        has_fp8 = any(lp.src.stored_fp8 for lp in base.layers)
        tiers = {lp.name: tier(lp, has_fp8) for lp in candidates}
        pool: list[Candidate] = []
        for t in sorted(set(tiers.values())):
            # A later group is read only when the earlier ones cannot save enough: the greedy
            # pass would never reach it.
            group = [lp for lp in candidates if tiers[lp.name] == t]
            todo = [lp for lp in group if lp.name not in errors]
            new, nbytes, seconds = measure_errors(plan, todo)
            errors.update(new)
            measured_layers, measured_bytes, measure_seconds = (
                measured_layers + len(todo),
                measured_bytes + nbytes,
                measure_seconds + seconds,
            )
            pool += [
                Candidate(lp.name, lp.out_in[0] * lp.out_in[1], saved[lp.name], t, errors[lp.name]) for lp in group
            ]
            if sum(c.saved_bytes for c in pool) >= unbudgeted - budget:
                break
        moved, total = choose(pool, unbudgeted, budget)
    moving = {c.name for c in moved}
    layers = [
        retarget(lp, decide_mode(plan.policy, lp.name, lp.out_in, lp.stored_e4m3, plan.caps, by_budget=True))
        if lp.name in moving
        else lp
        for lp in base.layers
    ]
    fitted = replace(base, layers=layers)
    held = plan_holdings(fitted)["total_bytes"]
    if held != total or held > budget:  # the arithmetic above and the report must agree exactly
        raise RuntimeError(f"budget fit counted {total} bytes, the plan holds {held} (budget {budget})")
    fit = BudgetFit(
        plan.policy.budget,
        budget,
        held,
        unbudgeted,
        minimum,
        len(candidates),
        tuple(moved),
        errors,
        measured_layers,
        measured_bytes,
        measure_seconds,
        time.perf_counter() - started,
    )
    return finish_plan(replace(fitted, budget=fit), before)


def _impossible(policy, base: LoadPlan, budget: int, minimum: int, n_candidates: int) -> str:
    dtype, per_row = base.compute_dtype, base.per_row_quant
    pinned: dict[str, list[int]] = {}
    fp8_bytes = 0
    for lp in base.layers:
        rule = policy.rule_for(lp.name) if lp.mode == "bf16" else None
        if rule is not None:
            add_pin(pinned, rule, layer_weight_bytes(lp, dtype, "bf16", per_row))
        else:
            fp8_bytes += layer_weight_bytes(lp, dtype, "fp8-cast", per_row)
    return impossible_message(policy, budget, minimum, n_candidates, pinned, other_tensor_bytes(base), fp8_bytes, dtype)


def add_pin(pinned: dict[str, list[int]], rule, nbytes: int) -> None:
    """Count a layer a rule holds in full precision under that rule."""
    entry = pinned.setdefault(f"{rule.pattern}={rule.mode}", [0, 0])
    entry[0] += 1
    entry[1] += nbytes


def impossible_message(
    policy, budget: int, minimum: int, n_candidates: int, pinned: dict, other_bytes: int, fp8_bytes: int, dtype
) -> str:
    """Why no plan fits: the smallest possible size and what holds it up (the rules' pins, the
    tensors that are never quantized, the fp8 floor of 1 byte per weight)."""
    parts = [f"rule {r} holds {n} layers in full precision ({format_gb(b)})" for r, (n, b) in pinned.items()]
    parts.append(
        f"the other tensors (biases, norms, scale-shift tables; never quantized) take "
        f"{format_gb(other_bytes)} in {str(dtype).replace('torch.', '')}"
    )
    parts.append(f"the linears in fp8 take {format_gb(fp8_bytes)} (1 byte per weight)")
    return (
        f"weight budget {policy.budget} ({budget} bytes) cannot be met: the smallest possible model "
        f"is {format_gb(minimum)} ({minimum} bytes), with all {n_candidates} full-precision layers "
        f"no rule pins in fp8; "
        + "; ".join(parts)
        + (". Raise the budget or remove a pinning rule" if pinned else ". Raise the budget")
    )
