"""``taskclf-daemon replay``: the daemon's pipeline over a JSONL file, in input order.

Same code path as the streaming daemon: :func:`taskclf_daemon.codec.decode_window` then
:meth:`InferencePipeline.process` in micro-batches, with per-user state carried across the file.
"""

from __future__ import annotations

import gzip
import io
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from taskclf_daemon.codec import DEFAULT_MAX_RECORD_BYTES, RowValidator, decode_window
from taskclf_daemon.errors import InvalidRecord
from taskclf_daemon.pipeline.batch import BatchResult, InferencePipeline
from taskclf_daemon.records import FeatureWindow


@dataclass
class ReplaySummary:
    lines: int = 0
    ok: int = 0
    bad: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)

    def line(self) -> str:
        rr = self.rejected / self.ok if self.ok else 0.0
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items())) or "none"
        return f"replay: {self.lines} lines, {self.ok} predicted, {self.bad} bad ({reasons}), reject rate {rr:.4f}"


def open_input(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def open_output(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdout.buffer
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if path.endswith(".gz"):
        return gzip.open(path, "wb")  # type: ignore[return-value]
    return open(path, "wb")


def _windows(src: IO[bytes], validator: RowValidator, summary: ReplaySummary, on_bad: Callable[[int, InvalidRecord], None], max_bytes: int) -> Iterator[FeatureWindow]:
    for lineno, line in enumerate(src, 1):
        if not line.strip():
            continue
        summary.lines += 1
        try:
            yield decode_window(line.rstrip(b"\r\n"), validator, max_bytes)
        except InvalidRecord as exc:
            summary.bad += 1
            summary.reasons[exc.reason] += 1
            on_bad(lineno, exc)


def replay(
    pipeline: InferencePipeline,
    src: IO[bytes],
    dst: IO[bytes],
    *,
    batch_size: int = 512,
    on_bad: Callable[[int, InvalidRecord], None] | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    observe: Callable[[BatchResult], None] | None = None,
) -> ReplaySummary:
    """Predict every valid line of ``src`` into ``dst`` (one JSON record per line, input order);
    ``observe`` sees each micro-batch's result (the drift reference uses it)."""
    summary = ReplaySummary()
    validator = RowValidator(pipeline.bundle.schema)
    states = pipeline.new_state_store()
    report = on_bad or (lambda n, e: None)
    batch: list[FeatureWindow] = []

    def flush() -> None:
        res = pipeline.process(batch, states)
        if observe is not None:
            observe(res)
        buf = io.BytesIO()
        for p in res.predictions:
            buf.write(p.value)
            buf.write(b"\n")
            summary.ok += 1
            summary.rejected += p.is_rejected
            summary.labels[p.label] += 1
        dst.write(buf.getvalue())
        batch.clear()

    for w in _windows(src, validator, summary, report, max_record_bytes):
        batch.append(w)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    dst.flush()
    return summary
