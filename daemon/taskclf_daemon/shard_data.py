"""The values that cross the boundary of a pipeline worker (picklable, no behaviour): a raw
micro-batch in, a shard's result, checkpoint data and statistics out, and a shard's limits."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskclf_daemon.codec import DEFAULT_MAX_RECORD_BYTES
from taskclf_daemon.records import DeadLetter, OutputRecord

if TYPE_CHECKING:
    from taskclf_daemon.config import Settings


@dataclass(frozen=True, slots=True)
class ShardLimits:
    """What one record or one user may cost a shard (``0`` = no limit)."""

    #: larger input records are dead-lettered (``oversize``)
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    #: an output record larger than this is not produced; its input is dead-lettered
    #: (``output_too_large``); a state larger than this is dropped instead of written
    max_produce_bytes: int = 1_000_000
    #: a window whose ``bucket_start_ts`` is more than this after its record's Kafka timestamp is
    #: dead-lettered (``event_time_ahead``)
    max_event_ahead_s: float = 86_400.0
    #: a user not seen for this long (processing time) is forgotten and tombstoned
    state_retention_s: float = 0.0
    #: at most this many users in memory; beyond, the least recently seen are forgotten and
    #: tombstoned at the next checkpoint
    max_state_users: int = 0
    #: keep each user's last output and recent labels in memory for the HTTP user routes
    #: (:meth:`PipelineShard.user_info`); off when ``http_user_routes`` is false
    keep_recent: bool = True
    #: windows of this shard's drift sliding window (0 = no drift metrics)
    drift_window: int = 0
    #: write taskclf LabelRequests for unsure windows (a label-request topic is configured)
    label_requests: bool = False

    @classmethod
    def from_settings(cls, s: Settings) -> ShardLimits:
        return cls(
            max_record_bytes=s.max_record_bytes,
            max_produce_bytes=s.max_produce_bytes,
            max_event_ahead_s=s.max_event_ahead_s,
            state_retention_s=s.state_retention_s,
            max_state_users=s.max_state_users,
            keep_recent=s.http_user_routes,
            drift_window=-(-s.drift_window_size // max(1, s.pipeline_workers)),
            label_requests=bool(s.feedback_topic and s.label_requests_topic),
        )


@dataclass(slots=True)
class RawBatch:
    """Records of one poll for one shard, in fetch order (per partition: offset order)."""

    topic: str
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    #: the records' Kafka timestamps (ms); -1 = none
    timestamps: list[int] = field(default_factory=list)

    def add(self, partition: int, offset: int, value: bytes | None, key: bytes | None = None, timestamp: int = -1) -> None:
        self.partitions.append(partition)
        self.offsets.append(offset)
        self.values.append(value)
        self.keys.append(key)
        self.timestamps.append(timestamp)

    def __len__(self) -> int:
        return len(self.values)


@dataclass(slots=True)
class Outputs:
    """A batch's predictions ready to produce, in input order, as three columns: a list of
    named tuples costs ~6x more to pickle across the worker pipe (0.95 vs 0.15 us per record).
    Iterating yields :class:`OutputRecord` rows."""

    keys: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    sources: list[bytes] = field(default_factory=list)

    def append(self, key: bytes, value: bytes, source: bytes) -> None:
        self.keys.append(key)
        self.values.append(value)
        self.sources.append(source)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[OutputRecord]:
        return map(OutputRecord._make, zip(self.keys, self.values, self.sources, strict=True))


@dataclass(slots=True)
class ShardResult:
    """What one :meth:`PipelineShard.process` call hands back to the daemon."""

    #: outputs in input order
    outputs: Outputs
    #: dead letters in input order
    dead: list[DeadLetter]
    #: skipped windows by outcome (``replayed``, ``duplicate``, ``late``)
    skipped: dict[str, int]
    #: (mapped label, calibrator scope) -> count of emitted predictions
    tally: dict[tuple[str, str], int]
    confidences: list[float]
    rejected: int
    timings: dict[str, float]
    state_users: int
    #: taskclf LabelRequest records for the label-request topic (key user_id), in input order
    requests: Outputs = field(default_factory=Outputs)
    #: the batch's personal refits (no user ids): (outcome ``adopted``/``kept``/``reverted``,
    #: adopted kind or "", held-out NLL gain of the adopted model (nats) or None,
    #: ((candidate kind, qualified), ...))
    refits: list[tuple[str, str, float | None, tuple[tuple[str, bool], ...]]] = field(default_factory=list)
    #: users of the shard served by a personal model
    personal_users: int = 0


@dataclass(frozen=True, slots=True)
class ShardStats:
    state_users: int
    state_bytes: int
    parked_partitions: list[int]


@dataclass(slots=True)
class CheckpointData:
    """Changelog records of one checkpoint: updates and tombstones, with their partition."""

    updates: list[tuple[int, bytes, bytes]]  # (partition, key, value)
    tombstones: list[tuple[int, bytes]]  # (partition, key)
    state_users: int
    state_bytes: int
    #: users forgotten by this checkpoint, by reason (``idle``, ``capacity``, ``oversize``)
    evicted: dict[str, int] = field(default_factory=dict)
    #: changelog values found unreadable since the last checkpoint, when a user restored
    #: deferred was first used (that user started empty): one error message each
    unreadable: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class UserInfo:
    """What a shard tells the HTTP API about one of its users (``GET /v1/users/{user_id}``).

    ``windows_seen`` and ``last_window_ts`` come from the user's state (in the changelog);
    ``recent_labels`` and ``last_prediction`` from the shard's memory only: empty after a
    restart, a restore or a rebalance, until the user's next output."""

    user_id: str
    partition: int
    windows_seen: int
    #: ``bucket_start_ts`` of the newest applied window (ISO 8601, UTC), None before the first
    last_window_ts: str | None
    #: ``user`` (own calibrator), ``global`` (the store's global one) or ``none`` (no store)
    calibrator_scope: str
    #: ``identity``, ``temperature`` or ``isotonic``
    calibrator_kind: str
    #: the calibrator store's method, None without a store
    calibration_method: str | None
    #: ``mapped_label_name`` of the user's last outputs, oldest first (at most ``RECENT_WINDOWS``)
    recent_labels: tuple[str, ...]
    #: the last output value produced for the user (a WindowPrediction JSON document)
    last_prediction: bytes | None
    #: the learning loop's view of the user (evidence, eligibility, model in force, last
    #: decision, top head features); None without a feedback topic or before the first span
    personalisation: dict[str, Any] | None = None
