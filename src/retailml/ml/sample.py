"""Deterministic samples of customers, for tuning on less than all the data."""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

from retailml import schemas as S

_BUCKETS = 1 << 20


def customer_share(seed: int, column: str = S.CUSTOMER_ID) -> Column:
    """A number in [0, 1) per customer, fixed by the id and the seed.

    ``customer_share(seed) < p`` keeps about a share ``p`` of the customers with all their
    rows; the same customers on every run and every cluster layout (a hash, not ``rand``).
    """
    bucket = F.pmod(F.xxhash64(F.col(column), F.lit(seed), F.lit("sample")), F.lit(_BUCKETS))
    return bucket / F.lit(float(_BUCKETS))
