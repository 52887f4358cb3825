#!/usr/bin/env python3
"""Example consumer of the daemon's output topic: predictions, deduplicated, as JSON lines.

    python scripts/consume_predictions.py --bootstrap-servers HOST:PORT [--topic taskclf.predictions]
        [--group-id taskclf-predictions-example] [--max-records N] [--timeout S] [--output FILE]
        [--mode watermark|exact]

Reads the output topic in a consumer group (confluent-kafka), writes every prediction it has
not seen before -- the record's value exactly as the daemon produced it, one per line -- to
``--output`` (default stdout), commits the offsets once they are written, and prints a summary
(``{"read": ..., "written": ..., "duplicates": ..., "invalid": ...}``) to stderr at the end.
It stops after ``--max-records`` records read (0 = no limit) or ``--timeout`` seconds without a
record (0 = never).

Why deduplicate: delivery is at-least-once (docs/asyncapi.yaml). After a restart or a rebalance
the daemon reprocesses input from its last committed offset with the state of its last
checkpoint, so it produces some predictions a second time -- byte-identical values. A
prediction is identified by ``(user_id, bucket_start_ts)``.

How, in bounded memory (``--mode watermark``, the default): per user, the latest
``bucket_start_ts`` seen; a record not after it is a duplicate. That is exact because

* the record key is ``user_id`` and the daemon uses Kafka's default (murmur2) partitioner, so all
  of a user's predictions are in one partition, which a consumer reads in order;
* with the daemon's default ``event_time_policy = skip`` it emits a user's windows in strictly
  increasing ``bucket_start_ts`` (a duplicate or late window gets no output), and a re-emission
  after a restart repeats a suffix of what it had already produced -- every record of it is at
  or before the user's watermark.

Memory is one entry per user, at most ``--max-users`` (least recently seen forgotten first;
forgetting a user can only let a later duplicate of theirs through, never drop a new record).
If the daemon runs with ``event_time_policy = process`` (it then emits late windows too), or
once it forgot a user's state (``state_retention_s``, ``max_state_users``) and receives an older
window of theirs, a genuinely new record can be older than the watermark and would be dropped:
use ``--mode exact`` there, which remembers the last ``--max-keys`` ``(user_id,
bucket_start_ts)`` pairs (LRU) -- enough to cover the re-emissions of one restart (records
produced since the daemon's last commit, a few seconds' worth).

Either way the memory is this process's: when this consumer restarts, or its partitions move
to another member of the group, records after the last commit are read again and may be
written again. A sink that must hold every prediction exactly once should upsert on
``(user_id, bucket_start_ts)``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections import OrderedDict
from typing import IO, Any

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def instant_us(ts: str) -> int:
    """``bucket_start_ts`` as epoch microseconds (compare instants, not strings: ``...:00Z`` sorts
    after ``...:00.500000Z``)."""
    t = dt.datetime.fromisoformat(ts)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return (t - _EPOCH) // dt.timedelta(microseconds=1)


class Deduper:
    """Decides, record by record in partition order, whether a prediction is new."""

    def __init__(self, mode: str = "watermark", max_users: int = 1_000_000, max_keys: int = 1_000_000) -> None:
        if mode not in ("watermark", "exact"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.max_users = max_users
        self.max_keys = max_keys
        #: watermark mode: user_id -> latest bucket start (epoch us), least recently seen first
        self._latest: OrderedDict[str, int] = OrderedDict()
        #: exact mode: (user_id, bucket start) pairs, least recently seen first
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()

    def is_new(self, user_id: str, bucket_start_us: int) -> bool:
        if self.mode == "exact":
            key = (user_id, bucket_start_us)
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            if len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
            return True
        last = self._latest.get(user_id)
        if last is not None:
            self._latest.move_to_end(user_id)
            if bucket_start_us <= last:
                return False
        self._latest[user_id] = bucket_start_us
        if len(self._latest) > self.max_users:
            self._latest.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._seen) if self.mode == "exact" else len(self._latest)


def identity(value: bytes) -> tuple[str, int] | None:
    """``(user_id, bucket start in epoch us)`` of a prediction, or None if it is not one."""
    try:
        rec = json.loads(value)
        user, ts = rec["user_id"], rec["bucket_start_ts"]
        if not isinstance(user, str) or not isinstance(ts, str):
            return None
        return user, instant_us(ts)
    except (ValueError, TypeError, KeyError):
        return None


def consume(args: argparse.Namespace, out: IO[bytes]) -> dict[str, int]:
    from confluent_kafka import Consumer, KafkaException

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap_servers,
            "group.id": args.group_id,
            "auto.offset.reset": args.offset_reset,
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )
    dedupe = Deduper(args.mode, args.max_users, args.max_keys)
    stats = {"read": 0, "written": 0, "duplicates": 0, "invalid": 0}
    consumer.subscribe([args.topic])
    last_record = time.monotonic()
    try:
        while not args.max_records or stats["read"] < args.max_records:
            want = 500 if not args.max_records else min(500, args.max_records - stats["read"])
            msgs = consumer.consume(num_messages=want, timeout=0.5)
            if not msgs:
                if args.timeout and time.monotonic() - last_record > args.timeout:
                    break
                continue
            last_record = time.monotonic()
            got = False
            for m in msgs:
                if m.error():
                    print(f"consume_predictions: {m.error()}", file=sys.stderr)
                    continue
                got = True
                stats["read"] += 1
                value = m.value()
                ident = identity(value) if value is not None else None
                if ident is None:
                    stats["invalid"] += 1
                elif dedupe.is_new(*ident):
                    out.write(value + b"\n")
                    stats["written"] += 1
                else:
                    stats["duplicates"] += 1
            if got:
                out.flush()
                try:  # after the records are written: at-least-once on this side too
                    consumer.commit(asynchronous=False)
                except KafkaException as exc:  # e.g. a rebalance took the partitions meanwhile
                    print(f"consume_predictions: commit failed: {exc}", file=sys.stderr)
    finally:
        consumer.close()
    return stats


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Read taskclf-daemon predictions, deduplicated on (user_id, bucket_start_ts), as JSON lines.")
    ap.add_argument("--bootstrap-servers", required=True, help="host:port[,host:port] of the brokers")
    ap.add_argument("--topic", default="taskclf.predictions", help="the daemon's output topic (default taskclf.predictions)")
    ap.add_argument("--group-id", default="taskclf-predictions-example", help="consumer group (offsets are committed in it)")
    ap.add_argument("--max-records", type=int, default=0, help="stop after this many records read (0 = no limit)")
    ap.add_argument("--timeout", type=float, default=10.0, help="stop after this many seconds without a record (0 = never; default 10)")
    ap.add_argument("--output", default="-", help="JSON-lines file to append to (default - = stdout)")
    ap.add_argument("--offset-reset", choices=("earliest", "latest"), default="earliest", help="where a new group starts (default earliest)")
    ap.add_argument("--mode", choices=("watermark", "exact"), default="watermark", help="per-user latest bucket (default) or an LRU of (user_id, bucket_start_ts) keys; see the module docstring")
    ap.add_argument("--max-users", type=int, default=1_000_000, help="watermark mode: users remembered (default 1,000,000)")
    ap.add_argument("--max-keys", type=int, default=1_000_000, help="exact mode: keys remembered (default 1,000,000)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Any
    if args.output == "-":
        out = sys.stdout.buffer
        stats = consume(args, out)
    else:
        with open(args.output, "ab") as out:
            stats = consume(args, out)
    print(json.dumps(stats), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
