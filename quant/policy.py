"""Which mode each layer runs in: a preset plus ordered glob rules (first match wins).

Policy strings are saved in users' workflow files: the preset names, the rule syntax and the mode
names are public and must keep their meaning.

    auto                                  # the preset alone
    fp8-cast; transformer_blocks.0.*=bf16; *.ff.*=scaled-mm
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from .layer import MODES

PRESETS = ("auto", "fp8-cast", "scaled-mm", "bf16")
# A rule may also say `auto`: keep the file's storage, pick the device's best fp8 mode.
RULE_MODES = MODES + ("auto",)


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class Rule:
    pattern: str
    mode: str

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)


@dataclass(frozen=True)
class Policy:
    preset: str = "auto"
    rules: tuple[Rule, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise PolicyError(f"unknown policy preset {self.preset!r}; expected one of {', '.join(PRESETS)}")
        for r in self.rules:
            if not r.pattern or r.pattern != r.pattern.strip() or any(c in r.pattern for c in ";#\n\r"):
                # to_string() could not write it so that from_string() reads the same rule back.
                raise PolicyError(
                    f"rule {r.pattern!r}={r.mode}: a layer pattern must be non-empty, "
                    f"without surrounding spaces, `;`, `#` or a line break"
                )
            if r.mode not in RULE_MODES:
                raise PolicyError(
                    f"rule {r.pattern}={r.mode}: unknown mode {r.mode!r}; expected one of {', '.join(RULE_MODES)}"
                )

    # -- text forms ---------------------------------------------------------------------------
    @classmethod
    def from_string(cls, text: str) -> Policy:
        """`PRESET` or `PRESET; GLOB=MODE; ...` (the form `to_string` writes)."""
        # `#` comments run to the end of their line; line breaks separate like `;`.
        flat = ";".join(line.split("#", 1)[0] for line in (text or "").splitlines())
        parts = [p.strip() for p in flat.split(";")]
        preset = parts[0] or "auto"
        return cls(preset, parse_rules("\n".join(parts[1:])))

    def to_string(self) -> str:
        return "; ".join([self.preset] + [f"{r.pattern}={r.mode}" for r in self.rules])

    def with_rules(self, text: str) -> Policy:
        """This policy with the rules of a multiline text (the node's `rules` input) put first."""
        return Policy(self.preset, parse_rules(text) + self.rules)

    # -- resolution (quant/modes.decide_mode does the rest) --------------------------------------
    def rule_for(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.matches(name)), None)


def parse_rules(text: str) -> tuple[Rule, ...]:
    """One `GLOB = MODE` per line (or `;`-separated); `#` starts a comment."""
    rules = []
    # Comments first: a `;` inside a comment must not turn the rest of the comment into a rule.
    segments = [
        (lineno, seg)
        for lineno, full in enumerate((text or "").splitlines(), 1)
        for seg in full.split("#", 1)[0].split(";")
    ]
    for lineno, raw in segments:
        line = raw.strip()
        if not line:
            continue
        if "=" not in line:
            raise PolicyError(
                f"rule line {lineno} {raw.strip()!r}: expected GLOB = MODE, e.g. 'transformer_blocks.0.*=bf16'"
            )
        pattern, mode = (s.strip() for s in line.rsplit("=", 1))
        if not pattern:
            raise PolicyError(f"rule line {lineno} {raw.strip()!r}: empty layer pattern")
        if mode not in RULE_MODES:
            raise PolicyError(
                f"rule line {lineno} {raw.strip()!r}: unknown mode {mode!r}; expected one of {', '.join(RULE_MODES)}"
            )
        rules.append(Rule(pattern, mode))
    return tuple(rules)
