#!/usr/bin/env python3
"""Per-user state cost and changelog restore time.

    python scripts/bench_state.py [--users 100000] [--bootstrap-servers HOST:PORT]

1. **bytes per user**: serialized size (the changelog value) and Python heap per active user
   (tracemalloc) of realistic states: 15-row histories built by running the golden fixture's
   windows through the real overlay, cloned under new user ids.
2. **restore**: one changelog partition holding ``--users`` users (plus one stale update per
   tenth user, as an uncompacted changelog has) is restored with the daemon's own
   ``Rebalancer._restore`` -- the code path of a partition assignment. Reported as seconds and
   users/s. Its own Tansu broker unless ``--bootstrap-servers`` is given.

Last line: ``bench_state: users=N value_bytes_per_user=N heap_bytes_per_user=N restore_s=X restore_users_per_s=N``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "daemon"))

from benchlib import GOLDEN  # noqa: E402 - the repository's golden fixture
from taskclf_daemon import kafka_io as kio  # noqa: E402
from taskclf_daemon.artifacts import build_pipeline  # noqa: E402
from taskclf_daemon.checkpoint import Checkpointer  # noqa: E402
from taskclf_daemon.codec import RowValidator, decode_window  # noqa: E402
from taskclf_daemon.config import load_settings  # noqa: E402
from taskclf_daemon.daemon import Daemon  # noqa: E402
from taskclf_daemon.log import configure_logging  # noqa: E402
from taskclf_daemon.rebalance import Rebalancer  # noqa: E402
from taskclf_daemon.state import UserState  # noqa: E402


def realistic_states(pipe) -> list[bytes]:
    v = RowValidator(pipe.bundle.schema)
    st = pipe.new_state_store()
    ws = [decode_window(ln, v) for ln in (GOLDEN / "inputs.jsonl").read_bytes().splitlines() if ln.strip()]
    for i in range(0, len(ws), 512):
        pipe.process(ws[i : i + 512], st)
    return [s.to_bytes() for s in st.users.values()]


async def restore_bench(bootstrap: str, users: int, templates: list[bytes], pipe, workers: int) -> tuple[float, int]:
    topic = f"bench-state-{uuid.uuid4().hex[:8]}"
    settings = load_settings(None, env={}, flags={"bootstrap_servers": bootstrap, "input_topic": topic + "-in", "group_id": "bench", "model_dir": str(pipe.bundle.path), "changelog_topic": topic, "pipeline_workers": workers})
    await kio.ensure_topics(settings, [topic], partitions=1, config={"cleanup.policy": "compact"})
    producer = kio.make_producer(settings)
    await producer.start()
    sink = kio.OutputSink(producer)
    await sink.prepare([topic])
    ids = [str(uuid.UUID(int=i + 1)) for i in range(users)]
    futs = []
    t0 = time.monotonic()
    for i, u in enumerate(ids):
        if i % 10 == 0:  # a stale version first, as an uncompacted changelog holds
            await sink.append(topic, u.encode(), templates[(i + 1) % len(templates)], partition=0)
        await sink.append(topic, u.encode(), templates[i % len(templates)], partition=0)
        if i % 5000 == 4999:
            futs += await sink.flush()
            print(f"  loading changelog: {i + 1}/{users} users", file=sys.stderr)
    futs += await sink.flush()
    await asyncio.gather(*futs)
    await producer.stop()
    print(f"  loaded {users} users in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    d = Daemon(settings, pipe)
    await asyncio.gather(*(sh.start() for sh in d.shards))
    reader = kio.make_reader(settings)
    await reader.start()
    # the restore path of a partition assignment: the daemon's parts, without a consumer group
    cp = Checkpointer(hosts=d.shards, tracker=d.tracker, sink=None, consumer=None, changelog_topic=d.changelog, metrics=d.metrics, finish=d._finish_all, shard_users=d.shard_users)
    rb = Rebalancer(
        hosts=d.shards, scheduler=d.scheduler, checkpointer=cp, lock=asyncio.Lock(), consumer=None, reader=reader, changelog_topic=d.changelog,
        restore_timeout_s=600.0, revoke_budget_s=1.0, metrics=d.metrics, on_failure=print, group="bench",
    )
    try:
        t = time.monotonic()
        await rb._restore([(topic + "-in", 0)])
        took = time.monotonic() - t
        await rb.refresh_stats()
    finally:
        await reader.stop()
        await asyncio.gather(*(sh.stop() for sh in d.shards))
    return took, d.state_users


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--bootstrap-servers")
    ap.add_argument("--pipeline-workers", type=int, default=1, help="where restored state is installed: 1 = a worker process (the default daemon), 0 = in-process")
    a = ap.parse_args()
    configure_logging("warning", "console")
    pipe, _ = build_pipeline(policy=GOLDEN / "models" / "inference_policy.json")
    templates = realistic_states(pipe)
    value_bytes = statistics.mean(len(t) for t in templates)
    n_heap = 20_000
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = {str(uuid.UUID(int=i + 1)): UserState.from_bytes(templates[i % len(templates)], 3) for i in range(n_heap)}
    heap = (tracemalloc.get_traced_memory()[0] - before) / n_heap
    tracemalloc.stop()
    del held
    print(f"state value: {value_bytes:.0f} bytes/user (JSON, 15-row history); heap: {heap:.0f} bytes/user (incl. dict entry and key)", file=sys.stderr)
    broker = None
    bs = a.bootstrap_servers
    if not bs:
        from taskclf_daemon.devbroker import LocalBroker

        broker = LocalBroker()
        broker.start()
        bs = broker.bootstrap_servers
    try:
        took, restored = asyncio.run(restore_bench(bs, a.users, templates, pipe, a.pipeline_workers))
    finally:
        if broker is not None:
            broker.stop()
    assert restored == a.users, (restored, a.users)
    print(f"restore: {restored} users ({int(a.users * 1.1)} records) in {took:.2f}s", file=sys.stderr)
    print(f"bench_state: users={restored} value_bytes_per_user={value_bytes:.0f} heap_bytes_per_user={heap:.0f} restore_s={took:.2f} restore_users_per_s={restored / took:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
