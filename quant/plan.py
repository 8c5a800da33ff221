"""Plan a load from the header alone: classify every key, decide the layout and each layer's mode,
and validate every scale.

`plan_checkpoint` reads the header and the (tiny) scale tensors: a broken file is refused before a
single weight is read, so no caller is ever left with half a model. quant/stream.py then reads the
weights the plan describes.
"""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass, field, replace

import torch

from . import scale_range
from .backends import resolve_backend
from .device import DeviceCaps, device_caps
from .encodings import FULL_DTYPES, FileContents, LayerSource, classify, detect_prefix
from .errors import CheckpointError
from .fp8 import check_input_scale, check_scale
from .layout import IN_OUT, LayoutDecision, decide_layout
from .linear import ACTIVATION_SCALES
from .ltx2_shapes import HOST_DEFAULTS, count_blocks, expected_linear_shapes, resolved_config
from .modes import Fallback, ModeDecision, decide_mode, fallback_warning
from .policy import Policy
from .safetensors_header import HeaderIndex, read_header, read_tensor
from .scale_range import implausible_warning

log = logging.getLogger("ltx_fp8")


class Conversion(enum.Enum):
    """What the load does to a layer's stored weight on its way to its mode, besides reading it."""

    QUANTIZE = "quantize"  # full precision -> e4m3 codes with an amax/448 scale
    E5M2_TO_E4M3 = "e5m2-to-e4m3"  # e5m2 codes dequantized, then quantized as e4m3


@dataclass(frozen=True)
class LayerPlan:
    src: LayerSource
    decision: ModeDecision  # the mode, what the policy asked for, and why they differ
    transposed: bool  # stored [in, out]; transposed to [out, in] at load
    scale: torch.Tensor | None  # validated fp32 scale ([] or [out]), None for full precision
    input_scale: torch.Tensor | None
    conversion: Conversion | None = None

    @property
    def name(self) -> str:
        return self.src.name

    @property
    def mode(self) -> str:
        return self.decision.mode

    @property
    def requested(self) -> str:
        return self.decision.requested

    @property
    def fallback(self) -> Fallback | None:
        return self.decision.fallback

    @property
    def note(self) -> str:
        return layer_note(self)

    @property
    def stored_e4m3(self) -> bool:
        return _stored_e4m3(self.src)

    @property
    def out_in(self) -> tuple[int, int]:
        a, b = self.src.weight.shape
        return (b, a) if self.transposed else (a, b)

    @property
    def held_fp8(self) -> bool:
        return self.mode != "bf16"


def _stored_e4m3(src: LayerSource) -> bool:
    """e4m3 codes with their scale: what `auto` keeps as fp8 (e5m2 codes are re-quantized)."""
    return src.stored_fp8 and src.weight.dtype == "F8_E4M3"


_CONVERSION_NOTES = {
    Conversion.QUANTIZE: "quantized at load (amax/448)",
    Conversion.E5M2_TO_E4M3: "e5m2 codes re-quantized to e4m3 at load",
}


def layer_note(lp: LayerPlan) -> str:
    """The load report's note on a layer: why it does not run as asked, else what the load converts
    (empty when neither)."""
    if lp.decision.fallback is not None:
        note = lp.decision.message
    else:
        note = _CONVERSION_NOTES[lp.conversion] if lp.conversion else ""
    if lp.decision.by_budget:
        return f"moved to fp8 by the weight budget{'; ' + note if note else ''}"
    return note


@dataclass(frozen=True)
class HeaderConfig:
    """The header's `config`, parsed and checked once. The planner sizes the linears from its
    `transformer` object; the bridge refuses a config the host would build a wrong model from (the
    host builds from `config["transformer"]`, overriding even the block count of the keys)."""

    present: bool  # the header has a `config` entry
    transformer: dict | None  # config["transformer"] ({} if config has none); None: config or it not an object
    declared: bool  # config names a transformer object (the planner sizes the linears from it)
    blocks: int  # transformer blocks the file's keys name
    problem: str | None  # why `transformer` cannot size the model (config_problem), None if it can


# The plan is read by the streaming side and the bridge, never changed: a caller wanting another
# compute dtype derives a new plan (dataclasses.replace).
@dataclass(frozen=True)
class LoadPlan:
    path: str
    index: HeaderIndex
    contents: FileContents
    layout: LayoutDecision
    layers: list[LayerPlan]
    policy: Policy
    caps: DeviceCaps
    compute_dtype: torch.dtype
    activation: str
    backend: str
    per_row_quant: bool
    warnings: list[str] = field(default_factory=list)
    # (device, inode, size, mtime_ns) of the file when planned: iter_load refuses a file replaced
    # or rewritten since, whose header would no longer describe its bytes.
    file_identity: tuple | None = None
    config: HeaderConfig | None = None
    # What the caller asked for as backend (`backend` is what it resolved to): a budget fitted
    # again for another compute dtype may move layers to scaled-mm and resolve it anew.
    requested_backend: str = "auto"
    # The weight budget's fit (quant/budget.BudgetFit), None without a budget in the policy.
    budget: object | None = None

    def layer(self, name: str) -> LayerPlan:
        return next(lp for lp in self.layers if lp.name == name)


def plan_checkpoint(
    path: str,
    policy: Policy | str = "auto",
    *,
    device=None,
    compute_dtype: torch.dtype = torch.bfloat16,
    activation: str = "static",
    backend: str = "auto",
    linear_shapes: dict[str, tuple[int, int]] | None = None,
    allow_unexpected: bool = False,
    per_row_quant: bool = False,
    index: HeaderIndex | None = None,
) -> LoadPlan:
    """Everything about a load that the header and scales decide. Raises CheckpointError."""
    policy = Policy.from_string(policy) if isinstance(policy, str) else policy
    if activation not in ACTIVATION_SCALES:
        raise ValueError(f"activation_scale must be one of {ACTIVATION_SCALES}, not {activation!r}")
    caps = device if isinstance(device, DeviceCaps) else device_caps(device)
    index = index or read_header(path)
    _refuse_trailing_bytes(index)
    config = read_config(index)
    config_warnings: list[str] = []
    if linear_shapes is None:
        # The header's config names every linear of the model: classify against it, so that a key
        # the model does not have is reported as unexpected, not mistaken for a layer.
        linear_shapes = _config_shapes(config, index, config_warnings)
    with open(path, "rb") as f:
        identity = identify_file(f)
        if identity[2] != index.file_size:
            raise CheckpointError(
                f"the file changed on disk while it was being planned ({index.file_size} "
                f"bytes when its header was read, {identity[2]} now)",
                file=path,
            )
        contents = classify(index, f, set(linear_shapes) if linear_shapes else None)
        contents.warnings[:0] = config_warnings
        _refuse_unexpected(contents, allow_unexpected)
        _refuse_non_float(contents)
        layout, warnings = decide_layout(contents.layers, path, linear_shapes)
        warnings = contents.warnings + warnings
        implausible: list[tuple[str, str]] = []
        layers = [_plan_layer(src, f, index, layout, policy, caps, implausible) for src in contents.layers.values()]
    if implausible:
        warnings.append(implausible_warning(implausible))
        log.warning("%s: %s", path, warnings[-1])
    plan = LoadPlan(
        path,
        index,
        contents,
        layout,
        layers,
        policy,
        caps,
        compute_dtype,
        activation,
        "torch",
        per_row_quant,
        warnings,
        identity,
        config,
        backend,
    )
    if policy.budget is not None:
        # Imported here: quant/budget.py builds on this module's LayerPlan and LoadPlan.
        from .budget import fit_budget

        return fit_budget(plan)  # refuses a budget no plan can meet, before any weight is read
    return finish_plan(plan)


def finish_plan(plan: LoadPlan, before: list[LayerPlan] | None = None) -> LoadPlan:
    """The plan with its backend resolved and one warning per fallback reason, for its layers as
    they are now. `before`: the layers of a finished plan whose layers were then changed (e.g. by
    the budget); their fallback warnings are replaced."""
    stale = {fallback_warning(fb, names, plan.caps.name) for fb, names in _fallback_names(before or []).items()}
    warnings = [w for w in plan.warnings if w not in stale]
    backend = "torch"
    if any(lp.mode == "scaled-mm" for lp in plan.layers):
        backend = resolve_backend(plan.requested_backend)
    _note_fallbacks(plan.layers, warnings, plan.caps)
    return replace(plan, backend=backend, warnings=warnings)


def retarget(lp: LayerPlan, decision: ModeDecision) -> LayerPlan:
    """`lp` with another mode decision (and the conversion that decision needs)."""
    return replace(lp, decision=decision, conversion=_conversion(lp.src, decision))


def _conversion(src: LayerSource, decision: ModeDecision) -> Conversion | None:
    if decision.mode != "bf16" and not src.stored_fp8:
        return Conversion.QUANTIZE
    if decision.mode != "bf16" and src.weight.dtype == "F8_E5M2":
        return Conversion.E5M2_TO_E4M3
    return None


def identify_file(f) -> tuple:
    """(device, inode, size, mtime_ns) of an open file."""
    st = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def read_config(index: HeaderIndex) -> HeaderConfig:
    """The header's `config` with the block count of the keys and `config_problem`'s verdict."""
    cfg = index.json_metadata("config")
    transformer = cfg.get("transformer", {}) if isinstance(cfg, dict) else None
    transformer = transformer if isinstance(transformer, dict) else None
    prefix = detect_prefix(index.tensors)
    blocks = count_blocks(k[len(prefix) :] for k in index.tensors if k.startswith(prefix))
    problem = None if transformer is None else config_problem(transformer, blocks, len(index.tensors))
    declared = isinstance(cfg, dict) and isinstance(cfg.get("transformer"), dict)
    return HeaderConfig("config" in index.metadata, transformer, declared, blocks, problem)


def _config_shapes(config: HeaderConfig, index: HeaderIndex, warnings: list[str]):
    """`[out, in]` of every linear from the header's `config["transformer"]`, with the block count
    taken from the keys (as the host's detection does); None without a usable config."""
    if not config.declared:
        return None
    blocks, problem = config.blocks, config.problem
    if problem:
        if blocks > len(index.tensors):
            prefix = detect_prefix(index.tensors)
            key = next(k for k in index.tensors if k.startswith(prefix) and count_blocks([k[len(prefix) :]]) == blocks)
            raise CheckpointError(problem, file=index.path, tensor=key)
        warnings.append(f"header config['transformer'] not usable for shapes ({problem}); layout decided from biases")
        return None
    try:
        return expected_linear_shapes(config.transformer, num_layers=blocks or None)
    except (KeyError, TypeError, ValueError) as e:
        warnings.append(f"header config['transformer'] not usable for shapes ({e}); layout decided from biases")
        return None


# Largest width or count a config may give (LTX-2.3 22B: widths 4096 / 16384, 48 blocks). Sizes in
# a header are untrusted: a config of 10**9 layers must not make us (or the host) loop 10**9 times.
_MAX_CONFIG_SIZE = 2**20


def config_problem(transformer: dict, blocks: int, n_tensors: int) -> str | None:
    """Why `config["transformer"]` cannot size the model, or None. Every size must be an integer in
    [0, 2**20], and no count of layers may exceed the number of tensors in the file (each layer
    has several): the sizes of a hostile header are never looped over or multiplied blindly."""
    if blocks > n_tensors:
        return (
            f"a key names transformer block {blocks - 1}, but the file holds only {n_tensors} "
            f"tensors; expected blocks numbered from 0"
        )
    try:
        cfg = resolved_config(transformer)
    except (TypeError, ValueError) as e:
        return str(e)
    for key, value in cfg.items():
        default = HOST_DEFAULTS.get(key, 0)
        if isinstance(default, bool) or not isinstance(default, int):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_CONFIG_SIZE:
            shown = repr(value) if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__
            return f"{key} = {shown[:40]}, expected an integer in [0, {_MAX_CONFIG_SIZE}]"
    for key in ("num_layers", "connector_num_layers"):
        if cfg[key] > n_tensors:
            return f"{key} = {cfg[key]}, more layers than the file has tensors ({n_tensors})"
    return None


def _refuse_trailing_bytes(index: HeaderIndex) -> None:
    """The data section ends where its last tensor ends, as safetensors itself requires: bytes past
    it mean a wrong header length (every tensor read shifted) or a file appended to."""
    if not index.tensors:
        return
    last = max(index.tensors.values(), key=lambda t: t.end)
    if last.end < index.file_size:
        raise CheckpointError(
            f"the file holds {index.file_size - last.end} byte(s) past the end of its last "
            f"tensor (which ends at byte {last.end}); a wrong header length would shift "
            f"every tensor, refusing",
            file=index.path,
            tensor=last.name,
        )


def _refuse_non_float(contents: FileContents) -> None:
    """Every tensor of the transformer besides fp8 weights and their scales is a float: integer
    bytes converted to floats would load as made-up weights."""
    for name, info in contents.tensors.items():
        if info.dtype not in FULL_DTYPES:
            raise CheckpointError(
                f"{name} is stored as {info.dtype}; expected a float tensor ({', '.join(FULL_DTYPES)})",
                file=contents.path,
                tensor=contents.prefix + name,
            )


def _refuse_unexpected(contents: FileContents, allow: bool) -> None:
    inside = [
        k for k in contents.unexpected if contents.prefix and k.startswith(contents.prefix) or not contents.prefix
    ]
    if inside and not allow:
        raise CheckpointError(
            f"{len(inside)} unexpected key(s) inside the transformer, first: {inside[0]} "
            f"(a scale or tensor no layer claims; pass allow_unexpected to load anyway)",
            file=contents.path,
            tensor=inside[0],
        )
    if contents.unexpected:
        contents.warnings.append(
            f"{len(contents.unexpected)} unexpected key(s) ignored: {', '.join(contents.unexpected[:5])}"
        )


def _plan_layer(
    src: LayerSource,
    f,
    index: HeaderIndex,
    layout: LayoutDecision,
    policy: Policy,
    caps: DeviceCaps,
    implausible: list[tuple[str, str]],
) -> LayerPlan:
    path = index.path
    transposed = (layout.fp8 if src.stored_fp8 else layout.full) == IN_OUT
    a, b = src.weight.shape
    out_f, in_f = (b, a) if transposed else (a, b)
    if src.bias is not None and (tuple(src.bias.shape) != (out_f,) or src.bias.dtype not in FULL_DTYPES):
        raise CheckpointError(
            f"layer {src.name}: bias is {src.bias.dtype}{list(src.bias.shape)}, expected a "
            f"float [{out_f}] for weight [out, in] = [{out_f}, {in_f}]",
            file=path,
            tensor=src.bias.name,
        )
    scale = input_scale = None
    if src.stored_fp8:
        scale = check_scale(read_tensor(f, src.scale, path), out_f, src.name, path, src.scale.name)
        found = [scale_range.check_weight_scale(scale, src.name, path, src.scale.name)]
        if src.input_scale is not None:
            raw = read_tensor(f, src.input_scale, path)
            # Legacy scaled-fp8 files write scale_input = 1.0 to mean "no static scale".
            if not (src.encoding == "comfy-legacy" and raw.numel() == 1 and float(raw.float()) == 1.0):
                input_scale = check_input_scale(raw, src.name, path, src.input_scale.name)
                found.append(scale_range.check_input_scale(input_scale, src.name, path, src.input_scale.name))
        implausible += [(src.name, what) for what in found if what]
    decision = decide_mode(policy, src.name, (out_f, in_f), _stored_e4m3(src), caps)
    return LayerPlan(src, decision, transposed, scale, input_scale, _conversion(src, decision))


def _note_fallbacks(layers: list[LayerPlan], warnings: list[str], caps: DeviceCaps) -> None:
    """One warning per fallback reason, not one per layer: a device without fp8 GEMM falls back to
    fp8-cast for every layer, which is worth one line in the log."""
    for fallback, names in _fallback_names(layers).items():
        msg = fallback_warning(fallback, names, caps.name)
        warnings.append(msg)
        if fallback is Fallback.NO_FP8_GEMM:
            log.warning(msg)


def _fallback_names(layers: list[LayerPlan]) -> dict[Fallback, list[str]]:
    out = {fb: [lp.name for lp in layers if lp.fallback is fb] for fb in Fallback}
    return {fb: names for fb, names in out.items() if names}
