"""Is a file's fp8 weight stored `[out, in]` (PyTorch) or `[in, out]` (cuBLAS, after transposition)?

Decided per file, per storage class (fp8 / full precision), from the NON-square linears: their
shapes disagree with one layout and agree with the other. Square layers cannot tell and follow the
file; this is exactly where Lightricks/LTX-2 issue #205 computed garbage silently, so a file whose layers
disagree is refused, naming the layer that disagrees.
"""

from __future__ import annotations

from dataclasses import dataclass

from .encodings import LayerSource
from .errors import CheckpointError

OUT_IN = "[out, in]"
IN_OUT = "[in, out]"


@dataclass(frozen=True)
class LayoutDecision:
    fp8: str
    full: str
    evidence: dict  # class -> (layer name that decided it, or None)


def expected_out_in(src: LayerSource, expected: dict[str, tuple[int, int]] | None):
    """The `(out, in)` the model wants for this layer: from the model/config, else from the bias
    (`[out]` in every encoding), else from a per-row scale (`[out]`). None when nothing tells."""
    if expected and src.name in expected:
        return tuple(expected[src.name])
    rows = None
    if src.bias is not None and len(src.bias.shape) == 1:
        rows = src.bias.shape[0]
    elif src.scale is not None and src.scale.shape and src.scale.shape[0] > 1:
        rows = src.scale.shape[0]
    if rows is None:
        return None
    a, b = src.weight.shape
    if a == rows and b != rows:
        return (a, b)
    if b == rows and a != rows:
        return (b, a)
    return None


def _layer_vote(src: LayerSource, want, path: str) -> str | None:
    a, b = src.weight.shape
    if want is None or a == b:
        return None
    out_f, in_f = want
    if (a, b) == (out_f, in_f):
        return OUT_IN
    if (a, b) == (in_f, out_f):
        return IN_OUT
    raise CheckpointError(
        f"layer {src.name}: weight shape {[a, b]} matches neither [out, in] = {[out_f, in_f]} nor its transpose",
        file=path,
        tensor=src.weight.name,
    )


def decide_layout(
    layers: dict[str, LayerSource], path: str, expected: dict[str, tuple[int, int]] | None = None
) -> tuple[LayoutDecision, list[str]]:
    votes: dict[str, tuple[str, str]] = {}  # class -> (layout, first layer that voted)
    warnings: list[str] = []
    for src in layers.values():
        cls = "fp8" if src.stored_fp8 else "full"
        want = expected_out_in(src, expected)
        if want is not None and src.weight.shape[0] == src.weight.shape[1] and want[0] != want[1]:
            raise CheckpointError(
                f"layer {src.name}: weight shape {list(src.weight.shape)} but the model expects {list(want)}",
                file=path,
                tensor=src.weight.name,
            )
        vote = _layer_vote(src, want, path)
        if vote is None:
            continue
        if cls not in votes:
            votes[cls] = (vote, src.name)
        elif votes[cls][0] != vote:
            first_layout, first = votes[cls]
            raise CheckpointError(
                f"layer {src.name}: stored {vote} but layer {first} of the same file is stored "
                f"{first_layout}; a file must use one layout, refusing to guess for its square layers",
                file=path,
                tensor=src.weight.name,
            )
    for cls in ("fp8", "full"):
        has_class = any((s.stored_fp8 == (cls == "fp8")) for s in layers.values())
        if has_class and cls not in votes:
            warnings.append(
                f"{cls} layers are all square or of unknown shape: layout cannot be checked, assuming [out, in]"
            )
    decision = LayoutDecision(
        votes.get("fp8", (OUT_IN, None))[0], votes.get("full", (OUT_IN, None))[0], {c: v[1] for c, v in votes.items()}
    )
    if decision.full == IN_OUT:
        warnings.append("full-precision weights are stored [in, out]; transposing them at load")
    return decision, warnings
