#!/usr/bin/env python3
"""Per-user state cost and changelog restore time.

    python scripts/bench_state.py [--users 100000] [--bootstrap-servers HOST:PORT] [--pipeline-workers 0,1]

1. **bytes per user**: serialized size (the changelog value) and Python heap (tracemalloc, 20k
   users) of realistic states: 15-row histories built by running the golden fixture's windows
   through the real overlay, cloned under new user ids. ``heap``: decoded states held in a dict
   (incl. the entry and key); ``shard``: in a :class:`PipelineShard` (its per-user maps too), as
   restored (``deferred``: the changelog value held until first use) and after every user was
   used once (decoded: what an active user costs); ``metric``: what ``taskclf_state_bytes``
   reports per user for the same shard (``state.USER_HEAP_BYTES``).
2. **restore**: one changelog partition holding ``--users`` users (plus one stale update per
   tenth user, as an uncompacted changelog has) is restored with the daemon's own
   ``Rebalancer._restore`` -- the code path of a partition assignment -- once per
   ``--pipeline-workers`` value (0: state in the daemon process, 1: in a worker process).
   Reported as seconds and users/s. Its own Tansu broker unless ``--bootstrap-servers`` is given.

Last line: ``bench_state: users=N value_bytes_per_user=N heap_bytes_per_user=N shard_heap_bytes_per_user=N
deferred_heap_bytes_per_user=N metric_bytes_per_user=N restore_users_per_s_inproc=N restore_users_per_s_workers=N``
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
from taskclf_daemon.shard import PipelineShard  # noqa: E402
from taskclf_daemon.state import UserState  # noqa: E402
from taskclf_daemon.workers import tune_gc  # noqa: E402


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
    tune_gc()  # as the daemon does once its shards are up (Daemon._start)
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


def heap_per_user(templates: list[bytes], pipe, n: int) -> dict[str, float]:
    """tracemalloc bytes per user: decoded states in a dict; a shard's users deferred, then used."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = {str(uuid.UUID(int=i + 1)): UserState.from_bytes(templates[i % len(templates)], 3) for i in range(n)}
    heap = (tracemalloc.get_traced_memory()[0] - before) / n
    del held
    shard = PipelineShard(pipe)
    before = tracemalloc.get_traced_memory()[0]
    # distinct value objects, as read from Kafka (a deferred user holds its own)
    records = [(0, str(uuid.UUID(int=i + 1)).encode(), bytes(bytearray(templates[i % len(templates)]))) for i in range(n)]
    shard.adopt(records, int(time.time()))
    del records
    deferred = (tracemalloc.get_traced_memory()[0] - before) / n
    for st in shard.states.users.values():
        assert st.history is not None  # first use: decoded
    used = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    return {"heap": heap, "deferred": deferred, "shard": used, "metric": shard.state_bytes() / n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--bootstrap-servers")
    ap.add_argument("--pipeline-workers", default="0,1", help="where restored state is installed, one restore each: 0 = in-process, 1 = a worker process (the default daemon)")
    a = ap.parse_args()
    configure_logging("warning", "console")
    pipe, _ = build_pipeline(policy=GOLDEN / "models" / "inference_policy.json")
    templates = realistic_states(pipe)
    value_bytes = statistics.mean(len(t) for t in templates)
    h = heap_per_user(templates, pipe, 20_000)
    print(
        f"state value: {value_bytes:.0f} bytes/user (JSON, 15-row history); heap: {h['heap']:.0f} bytes/user decoded (incl. dict entry and key); "
        f"in a shard: {h['deferred']:.0f} deferred, {h['shard']:.0f} used; the metric says {h['metric']:.0f}",
        file=sys.stderr,
    )
    broker = None
    bs = a.bootstrap_servers
    if not bs:
        from taskclf_daemon.devbroker import LocalBroker

        broker = LocalBroker()
        broker.start()
        bs = broker.bootstrap_servers
    rates = {}
    try:
        for workers in (int(x) for x in a.pipeline_workers.split(",")):
            took, restored = asyncio.run(restore_bench(bs, a.users, templates, pipe, workers))
            assert restored == a.users, (restored, a.users)
            rates[workers] = restored / took
            print(f"restore (pipeline_workers={workers}): {restored} users ({int(a.users * 1.1)} records) in {took:.2f}s = {rates[workers]:.0f} users/s", file=sys.stderr)
    finally:
        if broker is not None:
            broker.stop()
    print(
        f"bench_state: users={a.users} value_bytes_per_user={value_bytes:.0f} heap_bytes_per_user={h['heap']:.0f} shard_heap_bytes_per_user={h['shard']:.0f} "
        f"deferred_heap_bytes_per_user={h['deferred']:.0f} metric_bytes_per_user={h['metric']:.0f} "
        f"restore_users_per_s_inproc={rates.get(0, 0):.0f} restore_users_per_s_workers={rates.get(1, 0):.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
