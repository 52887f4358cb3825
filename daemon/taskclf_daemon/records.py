"""Values that cross layers: a validated input window and a source reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


class SourceRef(NamedTuple):
    """Where an input record came from (a Kafka position, or a file line for replay).

    A named tuple, not a frozen dataclass: one is made per window on the hot path (~0.2 µs vs
    ~0.4 µs)."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class FeatureWindow:
    """One validated taskclf ``FeatureRow``.

    ``values`` holds every schema field with validated Python values (absent optional fields
    filled with taskclf's defaults); ``ts_us`` is ``bucket_start_ts`` in epoch microseconds (UTC).
    """

    user_id: str
    ts_us: int
    schema_version: str
    values: dict[str, Any]
    source: SourceRef | None = None


class OutputRecord(NamedTuple):
    """One prediction ready to produce: key ``user_id``, value the ``WindowPrediction`` JSON, and
    the ``taskclf-source`` header naming the input record it came from."""

    key: bytes
    value: bytes
    source: bytes


class DeadLetter(NamedTuple):
    """One refused input record, carrying everything its dead letter needs (nothing is joined
    back to the fetched records later). ``position``: its index in its micro-batch."""

    position: int
    source: SourceRef
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str
