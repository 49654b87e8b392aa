"""The rules that give each source line its kind (``clean.line_kinds``): merchandise, or
postage, a fee, a discount, an adjustment… — and the defaults, from the UCI Online Retail
conventions."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator


class LineKindRule(BaseModel):
    """Which source lines are of one kind. Codes and invoice patterns are tried for every rule
    before any description pattern (descriptions are the fallback). Patterns are regular
    expressions matched against the whole value; all matching ignores case."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)

    kind: str = Field(min_length=1, pattern=r"^[a-z_]+$")
    codes: list[str] = Field(default_factory=list, description="Exact product codes.")
    code_patterns: list[str] = Field(default_factory=list)
    invoice_patterns: list[str] = Field(default_factory=list)
    descriptions: list[str] = Field(default_factory=list, description="Description patterns.")

    @field_validator("code_patterns", "invoice_patterns", "descriptions")
    @classmethod
    def _valid_patterns(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {value!r} ({exc})") from None
        return values


# The UCI Online Retail conventions (and the usual words for such lines elsewhere).
DEFAULT_LINE_KINDS = (
    LineKindRule(
        kind="postage",
        codes=["POST", "DOT", "C2"],
        descriptions=[
            r"(dotcom )?postage( charges?)?",
            r"carriage",
            r"(delivery|shipping)( charges?| costs?| fees?)?",
        ],
    ),
    LineKindRule(
        kind="fee",
        codes=["BANK CHARGES", "AMAZONFEE", "CRUK"],
        descriptions=[r"bank charges?", r"amazon fees?", r".*commission", r".*\bfees?"],
    ),
    LineKindRule(kind="discount", codes=["D"], descriptions=[r"discount"]),
    LineKindRule(kind="manual", codes=["M"], descriptions=[r"manual"]),
    LineKindRule(
        kind="adjustment",
        codes=["B", "ADJUST", "ADJUST2"],
        invoice_patterns=[r"A\d+"],
        descriptions=[r"adjust(ment)?\b.*", r".*bad debt.*"],
    ),
    LineKindRule(
        kind="voucher",
        code_patterns=[r"gift_\d+_\d+"],
        descriptions=[r".*gift (voucher|certificate)s?\b.*"],
    ),
    LineKindRule(kind="sample", codes=["S"], descriptions=[r"samples?"]),
    LineKindRule(kind="other", codes=["PADS"], code_patterns=[r"TEST\d+"]),
)
