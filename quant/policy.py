"""Which mode each layer runs in: a preset plus ordered glob rules (first match wins).

Policy strings are saved in users' workflow files: the preset names, the rule syntax and the mode
names are public and must keep their meaning.

    auto                                  # the preset alone
    fp8-cast; transformer_blocks.0.*=bf16; *.ff.*=scaled-mm
    auto; budget=20GB; transformer_blocks.0.*=bf16      # with a weight budget (quant/budget.py)

The budget term `budget=SIZE` (SIZE as quant/units.parse_size reads it: `20GB`, `20 GB`,
`18.5GiB`) may stand anywhere after the preset, at most once; `to_string` writes it right after
the preset, in its canonical spelling. A string without one reads and writes as before.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from .layer import MODES
from .units import SizeError, normalize_size, parse_size

PRESETS = ("auto", "fp8-cast", "scaled-mm", "bf16")
# A rule may also say `auto`: keep the file's storage, pick the device's best fp8 mode.
RULE_MODES = MODES + ("auto",)
BUDGET_TERM = "budget"


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
    budget: str | None = None  # canonical SIZE text (`20GB`), None: no budget

    def __post_init__(self):
        if self.budget is not None:
            try:
                canonical = normalize_size(self.budget)
            except SizeError as e:
                raise PolicyError(f"budget: {e}") from None
            object.__setattr__(self, "budget", canonical)
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
        rules, budget = parse_terms("\n".join(parts[1:]))
        return cls(preset, rules, budget)

    def to_string(self) -> str:
        budget = [f"{BUDGET_TERM}={self.budget}"] if self.budget is not None else []
        return "; ".join([self.preset] + budget + [f"{r.pattern}={r.mode}" for r in self.rules])

    @property
    def budget_bytes(self) -> int | None:
        """The weight budget in bytes (what the load report's total_bytes may reach), or None."""
        return None if self.budget is None else parse_size(self.budget)

    def with_rules(self, text: str) -> Policy:
        """This policy with the rules of a multiline text (the node's `rules` input) put first; a
        `budget=SIZE` line in the text sets the budget (see `with_budget` for two of them)."""
        rules, budget = parse_terms(text)
        return Policy(self.preset, rules + self.rules, self.budget).with_budget(budget or "", "the rules' budget term")

    def with_budget(self, text: str, source: str = "weight_budget") -> Policy:
        """This policy with a budget (the node's `weight_budget` input; empty: none). When the
        policy already has one, both must name the same number of bytes: two different ceilings
        for one load are a contradiction, and picking either silently would surprise whoever
        wrote the other."""
        text = (text or "").strip()
        if not text:
            return self
        try:
            canonical, wanted = normalize_size(text), parse_size(text)
        except SizeError as e:
            raise PolicyError(f"{source}: {e}") from None
        if self.budget is not None and self.budget_bytes != wanted:
            raise PolicyError(
                f"two different weight budgets: {source} {canonical} ({wanted} bytes) and the "
                f"policy's budget={self.budget} ({self.budget_bytes} bytes); set one, or the same size in both"
            )
        return Policy(self.preset, self.rules, self.budget or canonical)

    # -- resolution (quant/modes.decide_mode does the rest) --------------------------------------
    def rule_for(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.matches(name)), None)


def parse_rules(text: str) -> tuple[Rule, ...]:
    """One `GLOB = MODE` per line (or `;`-separated); `#` starts a comment. A budget term is
    refused here (`parse_terms` reads one)."""
    rules, budget = parse_terms(text)
    if budget is not None:
        raise PolicyError(f"{BUDGET_TERM}={budget} is a budget, not a rule")
    return rules


def parse_terms(text: str) -> tuple[tuple[Rule, ...], str | None]:
    """Rules and at most one `budget=SIZE` term, one per line (or `;`-separated); `#` comments.
    No layer is named `budget` and no mode is a size, so the term cannot be mistaken for a rule."""
    rules, budget = [], None
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
        if pattern.lower() == BUDGET_TERM:
            if budget is not None:
                raise PolicyError(f"rule line {lineno} {raw.strip()!r}: a second budget term (first: {budget})")
            try:
                budget = normalize_size(mode)
            except SizeError as e:
                raise PolicyError(f"rule line {lineno} {raw.strip()!r}: budget {e}") from None
            continue
        if not pattern:
            raise PolicyError(f"rule line {lineno} {raw.strip()!r}: empty layer pattern")
        if mode not in RULE_MODES:
            raise PolicyError(
                f"rule line {lineno} {raw.strip()!r}: unknown mode {mode!r}; expected one of {', '.join(RULE_MODES)}"
            )
        rules.append(Rule(pattern, mode))
    return tuple(rules), budget
