"""Source layouts: which source column holds which canonical column.

Header names are compared without regard to case, spaces, underscores, hyphens and dots, so
``CustomerID``, ``Customer ID`` and ``customer_id`` are one column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from retailml import schemas as S
from retailml.errors import InputError


def normalise(name: str) -> str:
    """A header name as compared: lower case, without spaces, ``_``, ``-`` and ``.``."""
    return re.sub(r"[\s_\-.]+", "", name).lower()


@dataclass(frozen=True)
class Layout:
    """How a source layout maps onto the canonical columns.

    Attributes:
        name: The layout's name, stored in ``source_layout``.
        columns: Canonical column → source column.
        constants: Values of canonical columns the layout has no column for (quantity 1 for
            an event log), else null.
        optional: Canonical columns a file of this layout may lack (they are then null). Any
            other missing column refuses the file: a column that is silently null (every
            customer a guest) is worse than a one-line error.
    """

    name: str
    columns: dict[str, str]
    constants: dict[str, str] = field(default_factory=dict)
    optional: frozenset[str] = frozenset()

    def index(self, header: Sequence[str]) -> dict[str, int]:
        """Canonical column → its position in ``header`` (columns the header lacks are absent)."""
        where = {normalise(c): i for i, c in enumerate(header)}
        return {
            canonical: where[normalise(src)]
            for canonical, src in self.columns.items()
            if normalise(src) in where
        }


ONLINE_RETAIL_II = Layout(
    "online_retail_ii",
    {
        S.INVOICE_ID: "Invoice",
        S.PRODUCT_ID: "StockCode",
        S.PRODUCT_NAME: "Description",
        S.QUANTITY: "Quantity",
        S.EVENT_TIME: "InvoiceDate",
        S.UNIT_PRICE: "Price",
        S.CUSTOMER_ID: "Customer ID",
        S.COUNTRY: "Country",
    },
    {S.EVENT_TYPE: S.PURCHASE},
)
ONLINE_RETAIL = Layout(
    "online_retail",
    {
        S.INVOICE_ID: "InvoiceNo",
        S.PRODUCT_ID: "StockCode",
        S.PRODUCT_NAME: "Description",
        S.QUANTITY: "Quantity",
        S.EVENT_TIME: "InvoiceDate",
        S.UNIT_PRICE: "UnitPrice",
        S.CUSTOMER_ID: "CustomerID",
        S.COUNTRY: "Country",
    },
    {S.EVENT_TYPE: S.PURCHASE},
)
REES46 = Layout(
    "rees46",
    {
        S.EVENT_TIME: "event_time",
        S.EVENT_TYPE: "event_type",
        S.PRODUCT_ID: "product_id",
        S.CATEGORY: "category_code",
        S.PRODUCT_NAME: "brand",
        S.UNIT_PRICE: "price",
        S.CUSTOMER_ID: "user_id",
        S.INVOICE_ID: "user_session",
    },
    {S.QUANTITY: "1"},
)
CANONICAL = Layout(
    "canonical",
    {c: c for c in S.CANONICAL_COLUMNS},
    {S.EVENT_TYPE: S.PURCHASE, S.QUANTITY: "1"},
    optional=frozenset({S.PRODUCT_NAME, S.CATEGORY, S.COUNTRY, S.EVENT_TYPE, S.QUANTITY}),
)
KNOWN_LAYOUTS = (ONLINE_RETAIL_II, ONLINE_RETAIL, REES46, CANONICAL)
# Required of a user's column mapping; a missing quantity means 1, a missing event type purchase.
MAPPING_REQUIRED = (S.PRODUCT_ID, S.UNIT_PRICE, S.EVENT_TIME)


def detect_layout(
    columns: Sequence[str], *, source: str, mapping: dict[str, str] | None = None
) -> Layout:
    """The layout of a file with these columns.

    Args:
        columns: The file's column names, in order.
        source: The file, for error messages.
        mapping: A user column mapping (canonical → source column); overrides detection.

    Returns:
        The layout, its ``columns`` restricted to those the file has, spelled as in the file.

    Raises:
        InputError: A column of the layout is missing (the message names the file and the
            column and says what to set), or the mapping names an unknown canonical column.
    """
    present = {normalise(c): c for c in columns}
    if mapping:
        unknown = sorted(set(mapping) - set(S.CANONICAL_COLUMNS))
        if unknown:
            raise InputError(
                f"ingest.column_mapping: unknown canonical column {unknown[0]!r}; "
                f"known: {', '.join(S.CANONICAL_COLUMNS)}"
            )
        unmapped = [c for c in MAPPING_REQUIRED if c not in mapping]
        if unmapped:
            raise InputError(
                f"ingest.column_mapping: required column {unmapped[0]!r} is not mapped"
            )
        defaults = {S.EVENT_TYPE: S.PURCHASE, S.QUANTITY: "1"}
        constants = {k: v for k, v in defaults.items() if k not in mapping}
        candidates: Iterable[Layout] = [Layout("custom", dict(mapping), constants)]
    else:
        candidates = KNOWN_LAYOUTS

    def missing(layout: Layout) -> list[str]:
        return [
            src
            for canonical, src in layout.columns.items()
            if normalise(src) not in present and canonical not in layout.optional
        ]

    def matched(layout: Layout) -> int:
        return sum(normalise(src) in present for src in layout.columns.values())

    best = max(candidates, key=lambda lay: (matched(lay), -len(missing(lay))))
    gaps = missing(best)
    shown = ", ".join(repr(c) for c in columns)
    if mapping and gaps:
        raise InputError(
            f"{source}: no column {gaps[0]!r} (named in ingest.column_mapping); columns found: "
            f"{shown}"
        )
    if not mapping and gaps:
        if matched(best) <= len(best.columns) // 2:
            raise InputError(
                f"{source}: unknown layout (columns found: {shown}); map its columns with "
                f"ingest.column_mapping"
            )
        raise InputError(
            f"{source}: missing column {gaps[0]!r} of the {best.name} layout (columns found: "
            f"{shown}); rename it, or map the columns with ingest.column_mapping"
        )
    # Source names take the file's spelling.
    resolved = {
        canonical: present[normalise(src)]
        for canonical, src in best.columns.items()
        if normalise(src) in present
    }
    return Layout(best.name, resolved, best.constants, best.optional)
