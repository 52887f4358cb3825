"""What every peer job of ``scripts/bench_peers.py`` shares: its command line, the daemon's pure
pipeline built from the daemon's settings, the per-user state handed over as bytes, and the
event lines the benchmark waits for.

A peer job is the benchmark's job (decode a taskclf ``FeatureRow``, run the pipeline with the
user's state, produce the ``WindowPrediction`` keyed by ``user_id``, commit) written with another
stream-processing framework, as a competent user of that framework would write it. The model,
calibration, decision and output encoding are always the daemon's own pure pipeline
(``taskclf_daemon.pipeline``), so every system's outputs can be compared with an offline replay
byte for byte. Each job runs as its own process (``python scripts/peers/<name>_job.py``), so a
framework's imports never load into the daemon or the benchmark driver.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchlib as bl

#: one input record as a peer sees it: (key, value, partition, offset)
InRecord = tuple[bytes | None, bytes, int, int]
#: retention of every topic a peer creates, given explicitly (Tansu reports no config for a
#: topic created without one; Quix Streams derives its changelog topics' retention from it)
TOPIC_CONFIG = {"retention.ms": "604800000", "retention.bytes": "-1"}


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--bootstrap-servers", required=True)
    ap.add_argument("--input-topic", required=True)
    ap.add_argument("--output-topic", required=True)
    ap.add_argument("--group-id", required=True, help="consumer group (and application id)")
    ap.add_argument("--expect", type=int, required=True, help="input records to process before reporting 'drained'")
    ap.add_argument("--partitions", type=int, default=4, help="partitions of the topics (state co-partitioned with the input)")
    ap.add_argument("--policy", required=True, help="the inference policy the daemon runs with")
    ap.add_argument("--batch", type=int, default=None, help="most records per micro-batch (default: the daemon's max_batch_records)")
    ap.add_argument("--state-dir", default=None, help="directory for a framework's local state (default: a temp dir)")
    ap.add_argument("--events", required=True, help="append JSON event lines (started, drained, error) to this file")
    return ap.parse_args(argv)


class Job:
    """The daemon's pipeline and codec for one peer process, plus its event file."""

    def __init__(self, a: argparse.Namespace) -> None:
        from taskclf_daemon.artifacts import pipeline_from_settings
        from taskclf_daemon.codec import RowValidator

        self.a = a
        backend = os.environ.get("TASKCLF_MODEL_BACKEND")
        settings = bl.settings_for(a.bootstrap_servers, a.group_id).replace(policy=str(Path(a.policy).resolve()))
        if backend:
            settings = settings.replace(model_backend=backend)
        self.settings = settings
        self.pipeline, _desc = pipeline_from_settings(settings)
        self.validator = RowValidator(self.pipeline.bundle.schema)
        self.batch = a.batch or settings.max_batch_records
        self.processed = 0
        self.invalid = 0
        self._drained = False

    def emit(self, event: str, **fields: Any) -> None:
        with open(self.a.events, "a") as f:
            f.write(json.dumps({"event": event, **fields}) + "\n")

    def started(self, framework: str) -> None:
        self.emit("started", framework=framework, backend=self.backend_in_force())

    def backend_in_force(self) -> str:
        return str(self.pipeline.bundle.backend)

    def count(self, n: int) -> bool:
        """Account ``n`` processed input records; True once when ``--expect`` is reached."""
        self.processed += n
        if not self._drained and self.processed >= self.a.expect:
            self._drained = True
            return True
        return False

    def drained(self, **fields: Any) -> None:
        self.emit("drained", processed=self.processed, invalid=self.invalid, **fields)

    def decode(self, records: Iterable[InRecord], topic: str) -> list[Any]:
        """Validated windows of ``records`` in order, each with its input position; a bad record
        is counted and dropped (the workload has none; the daemon would dead-letter it)."""
        from taskclf_daemon.codec import decode_window
        from taskclf_daemon.errors import InvalidRecord
        from taskclf_daemon.records import SourceRef

        out = []
        max_bytes = self.settings.max_record_bytes
        for _key, value, partition, offset in records:
            try:
                w = decode_window(value, self.validator, max_bytes)
            except InvalidRecord:
                self.invalid += 1
                continue
            w.source = SourceRef(topic, partition, offset)
            out.append(w)
        return out

    def process_with_store(self, windows: Sequence[Any], store: Any) -> list[Any]:
        """The pipeline over ``windows`` with the users' live state in ``store`` (a StateStore)."""
        return self.pipeline.process(windows, store).predictions if windows else []

    def process_with_bytes(self, windows: Sequence[Any], load: Callable[[str], bytes | None], save: Callable[[str, bytes], None]) -> list[Any]:
        """The pipeline over ``windows`` with the users' state kept elsewhere as bytes (a
        framework's state store): each user's state is loaded once per batch and the changed
        states are saved back (``UserState.to_bytes``, the daemon's changelog value)."""
        from taskclf_daemon.state import UserState

        if not windows:
            return []
        store = self.pipeline.new_state_store()
        smooth = store.smooth_window
        for uid in {w.user_id for w in windows}:
            data = load(uid)
            if data is not None:
                store.put(uid, UserState.from_bytes(data, smooth))
        preds = self.pipeline.process(windows, store).predictions
        for uid in store.take_dirty():
            save(uid, store.users[uid].to_bytes())
        return preds


def main_guard(job_main: Callable[[argparse.Namespace], int], description: str) -> int:
    """Run ``job_main`` and report any failure as an ``error`` event (and exit 1)."""
    a = parse_args(description)
    try:
        return job_main(a)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # noqa: BLE001 - report, then fail
        import traceback

        with open(a.events, "a") as f:
            f.write(json.dumps({"event": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}) + "\n")
        return 1
