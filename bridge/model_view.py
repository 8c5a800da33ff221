"""What a given ModelPatcher's model looks like: its linears as that patcher will run them.

Clones share one nn.Module tree and differ by object patches (the host's mechanism, applied at
load time). Apply Quant Policy swaps linears through object patches, so to see *this* patcher's
layers we resolve each linear through its own object patches, falling back to the original module
(recorded before our first swap, because another clone's patches may be applied right now).
"""

from __future__ import annotations

import torch

PATCH_FLAG = "_ltx_fp8_object_patch"
ORIGINALS = "_ltx_fp8_originals"
DM = "diffusion_model."


def _is_linear(m) -> bool:
    return isinstance(m, torch.nn.Linear)


def original_linears(patcher) -> dict[str, torch.nn.Module]:
    """`{canonical name: original module}` for every linear of the diffusion model, recorded once."""
    model = patcher.model
    originals = model.__dict__.setdefault(ORIGINALS, {})
    if not originals:
        for name, m in model.diffusion_model.named_modules():
            if _is_linear(m) and not getattr(m, PATCH_FLAG, False):
                originals[name] = m
    return originals


def linears(patcher) -> dict[str, torch.nn.Module]:
    """This patcher's linear modules, by canonical name (no `diffusion_model.` prefix)."""
    out = {}
    for name, m in original_linears(patcher).items():
        out[name] = patcher.object_patches.get(DM + name, m)
    return out


def original_weight(patcher, name: str, module) -> torch.Tensor:
    """The module's weight without any LoRA merged in: the host keeps the pre-patch weight in
    `backup` while a patched model is loaded."""
    bk = patcher.backup.get(f"{DM}{name}.weight") if module is original_linears(patcher).get(name) else None
    return module.weight if bk is None else bk.weight
