"""Shared helpers for the project's Kafka benchmarks (``bench_daemon.py``, ``bench_replay.py``).

Everything here follows the protocol of ``shared/spec/perf_anchors.md`` section 6:

* :func:`build_workload` -- a realistic keyed workload cloned from the golden taskclf inputs
  (new deterministic user ids, whole-week time shifts so ``day_of_week``/``hour_of_day`` stay
  consistent with the timestamps, per-user order preserved, users interleaved);
* :class:`CpuMonitor` -- noise accounting: CPU used by other processes (``/proc/stat`` minus
  this process and all its descendants), plus a fixed pure-Python probe;
* :func:`read_topic` -- read a topic back with confluent-kafka ``assign()`` (never
  ``end_offsets``, which is wrong on Tansu) and count, deduplicate and time the records;
* :func:`passthrough` -- the raw aiokafka baseline: consume -> produce -> commit with the
  daemon's own client factories, batch sink, offset tracker and batch sizes, no decode/model;
* :func:`naive_daemon` -- one message at a time: one model call, ``send_and_wait`` and a commit
  per message, through the daemon's own pipeline code;
* :class:`Procs` -- every subprocess in its own process group, all killed on exit.

Run as a script it is the pass-through worker process used by the benchmarks::

    python scripts/benchlib.py passthrough --bootstrap-servers H:P --input-topic T \
        --output-topic O --group-id G --expect N [--fetch-max-wait-ms 5] [--events FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def golden_dir() -> Path:
    """The taskclf golden fixture of the repository (``tests/fixtures/golden``, its JSONL files
    decompressed once into the temp dir and checked against their sha256): nothing outside the
    checkout is needed."""
    sys.path.insert(0, str(REPO / "tests"))
    from golden_fixture import golden_home

    return golden_home()


GOLDEN = golden_dir()
GOLDEN_POLICY = GOLDEN / "models" / "inference_policy.json"

try:  # the package is installed editable in the project venv; fall back to the source tree
    import taskclf_daemon  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(REPO / "daemon"))

#: uuid5 namespace of the benchmark's cloned users (fixed: the workload is deterministic)
BENCH_NS = uuid.UUID("6b1f3c1e-8a52-5c0e-9d39-7a3f0c2b9e41")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
CONTENDED_CORES = 0.3  # perf_anchors 6.2: others_cores above this = contended run


def log(msg: str) -> None:
    """Progress line on stderr."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- workload


def _parse_ts(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def _fmt_ts(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Workload:
    """Keyed records in produce order (users interleaved, each user's rows in order)."""

    records: list[tuple[bytes, bytes]]
    users: int
    rows_per_user_max: int
    source: str

    def __len__(self) -> int:
        return len(self.records)

    def mean_value_bytes(self) -> float:
        return sum(len(v) for _, v in self.records) / max(1, len(self.records))


def build_workload(records: int, users: int, golden_inputs: Path = GOLDEN / "inputs.jsonl") -> Workload:
    """Clone the golden users' row sequences into ``users`` new users, ``records`` rows in all.

    Clone ``k`` of golden user ``g`` gets user id ``uuid5(BENCH_NS, f"{g}/{k}")``, a contiguous
    slice of ``g``'s rows starting at a deterministic offset, and a time shift of whole weeks
    (so ``day_of_week`` and ``hour_of_day`` stay true): ``k`` weeks back, and when a user needs
    more rows than its golden user has, the sequence repeats, each lap 2 weeks after the last,
    the last lap 2 weeks back -- every window lies in the past. The
    produce order is round-robin over users (row 0 of every user, then row 1, ...), i.e. all
    users active at once, as a fleet of agents would produce.
    """
    import orjson

    if records < 1 or users < 1:
        raise ValueError("records and users must be >= 1")
    users = min(users, records)
    by_user: dict[str, list[dict[str, Any]]] = {}
    with open(golden_inputs, "rb") as f:
        for line in f:
            if line.strip():
                row = orjson.loads(line)
                by_user.setdefault(row["user_id"], []).append(row)
    golden_users = sorted(by_user)
    base = records // users
    extra = records % users
    per_user: list[list[bytes]] = []
    for u in range(users):
        g = golden_users[u % len(golden_users)]
        k = u // len(golden_users)
        src = by_user[g]
        n = base + (1 if u < extra else 0)
        uid = str(uuid.uuid5(BENCH_NS, f"{g}/{k}"))
        start = (k * 37) % len(src)
        laps = (start + n - 1) // len(src) + 1 if n else 0
        seq: list[bytes] = []
        for j in range(n):
            idx = start + j
            lap, pos = divmod(idx, len(src))
            # into the past, the last lap 2 weeks back, each earlier lap 2 weeks before the next
            # (the golden stream spans ~1 day): a window ahead of its record's Kafka timestamp
            # would be dead-lettered
            shift = dt.timedelta(weeks=-k - 2 * (laps - lap))
            row = dict(src[pos])
            row["user_id"] = uid
            row["bucket_start_ts"] = _fmt_ts(_parse_ts(row["bucket_start_ts"]) + shift)
            if row.get("bucket_end_ts"):
                row["bucket_end_ts"] = _fmt_ts(_parse_ts(row["bucket_end_ts"]) + shift)
            seq.append(orjson.dumps(row))
        per_user.append(seq)
    keys = [str(uuid.uuid5(BENCH_NS, f"{golden_users[u % len(golden_users)]}/{u // len(golden_users)}")).encode() for u in range(users)]
    out: list[tuple[bytes, bytes]] = []
    longest = max(len(s) for s in per_user)
    for j in range(longest):
        for u, seq in enumerate(per_user):
            if j < len(seq):
                out.append((keys[u], seq[j]))
    return Workload(out, users, longest, str(golden_inputs))


def write_jsonl(records: Iterable[tuple[bytes, bytes]], path: Path) -> Path:
    with open(path, "wb") as f:
        for _, v in records:
            f.write(v + b"\n")
    return path


# --------------------------------------------------------------------------- noise


def _proc_stat_busy() -> tuple[int, int]:
    """(busy ticks, total ticks) of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    v = [int(x) for x in parts]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    total = sum(v[:8])  # guest/guest_nice are already inside user/nice
    return total - idle, total


def _pid_ticks(pid: int) -> tuple[int, int] | None:
    """(utime+stime ticks, ppid) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    return int(rest[11]) + int(rest[12]), int(rest[1])


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        t = _pid_ticks(int(name))
        if t is not None:
            children.setdefault(t[1], []).append(int(name))
    out: set[int] = set()
    stack = [root]
    while stack:
        p = stack.pop()
        for c in children.get(p, ()):
            if c not in out:
                out.add(c)
                stack.append(c)
    return out


def probe_ms(reps: int = 15) -> float:
    """A fixed pure-Python workload (about 1 ms on a quiet core of this machine); median ms."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        acc = 0
        for i in range(20000):
            acc += i * i % 7
        times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    return times[len(times) // 2]


class DrainCpu:
    """Where the CPU of a drain goes, per window: the daemon process, its pipeline workers (its
    descendants) and the broker, from ``/proc`` ticks taken at the first poll that sees an output
    and at the last (start-up, group join and restore excluded), plus the machine's busy cores
    over the same span. ``first(done)`` / ``last(done)`` take the samples; :meth:`result` gives
    ``{"daemon_process_us", "workers_us", "broker_us", "total_us", "machine_busy_cores", ...}``
    per window (``None`` before both samples). Resolution: one tick (10 ms) per process."""

    def __init__(self, daemon_pid: int, broker_pid: int | None) -> None:
        self.daemon_pid = daemon_pid
        self.broker_pid = broker_pid
        self._a: tuple[float, int, dict[str, int], tuple[int, int]] | None = None
        self._b: tuple[float, int, dict[str, int], tuple[int, int]] | None = None

    def _ticks(self) -> dict[str, int]:
        main = _pid_ticks(self.daemon_pid)
        out = {"daemon_process": main[0] if main else 0, "workers": 0, "broker": 0}
        for c in _descendants(self.daemon_pid):
            t = _pid_ticks(c)
            out["workers"] += t[0] if t else 0
        if self.broker_pid is not None:
            b = _pid_ticks(self.broker_pid)
            out["broker"] = b[0] if b else 0
        return out

    def first(self, done: int) -> None:
        if self._a is None:
            self._a = (time.monotonic(), done, self._ticks(), _proc_stat_busy())

    def last(self, done: int) -> None:
        self._b = (time.monotonic(), done, self._ticks(), _proc_stat_busy())

    def result(self) -> dict[str, Any] | None:
        if self._a is None or self._b is None or self._b[1] <= self._a[1]:
            return None
        (t0, d0, k0, m0), (t1, d1, k1, m1) = self._a, self._b
        n = d1 - d0
        per = {f"{k}_us": round((k1[k] - k0[k]) / _CLK_TCK / n * 1e6, 1) for k in k0}
        per["total_us"] = round(sum(per.values()), 1)
        busy, total = m1[0] - m0[0], m1[1] - m0[1]
        cores = os.cpu_count() or 1
        return {**per, "windows": n, "seconds": round(t1 - t0, 2), "machine_busy_cores": round(busy / total * cores, 2) if total else None}


class ProcessCpu:
    """CPU per window of named groups of processes (each pid with its descendants), from
    ``/proc`` ticks taken at construction and at :meth:`per_window`, and the machine's busy cores
    meanwhile -- :class:`DrainCpu` for a process that reports its own progress (the pass-through:
    from its ``assigned`` event to its ``drained`` one; what it did before the first sample is
    not counted). Resolution: one tick (10 ms) per process."""

    def __init__(self, groups: Mapping[str, Sequence[int]]) -> None:
        self.groups = {k: list(v) for k, v in groups.items()}
        self._t0 = time.monotonic()
        self._k0 = self._ticks()
        self._m0 = _proc_stat_busy()

    def _ticks(self) -> dict[str, int]:
        out = {}
        for name, pids in self.groups.items():
            total = 0
            for pid in pids:
                for q in (pid, *_descendants(pid)):
                    t = _pid_ticks(q)
                    total += t[0] if t else 0
            out[name] = total
        return out

    def per_window(self, n: int) -> dict[str, Any]:
        """``{"<group>_us": .., "total_us": .., "machine_busy_cores": ..}`` for ``n`` windows."""
        k1, m1 = self._ticks(), _proc_stat_busy()
        per = {f"{k}_us": round((k1[k] - self._k0[k]) / _CLK_TCK / max(1, n) * 1e6, 1) for k in k1}
        per["total_us"] = round(sum(per.values()), 1)
        busy, total = m1[0] - self._m0[0], m1[1] - self._m0[1]
        cores = os.cpu_count() or 1
        return {**per, "windows": n, "seconds": round(time.monotonic() - self._t0, 2), "machine_busy_cores": round(busy / total * cores, 2) if total else None}


class CpuMonitor:
    """Samples machine CPU and the CPU of this process tree (plus named pids) in a thread.

    ``others_cores`` of a phase = (machine busy ticks - ticks of this process and all its
    descendants) / wall seconds / tick rate. CPU a descendant used between its last sample
    and its exit is lost (at most one sample period), so stop a phase before stopping its
    processes. An external broker (``--bootstrap-servers``) counts as "others".
    """

    def __init__(self, period: float = 0.5) -> None:
        self.period = period
        self.root = os.getpid()
        self._lock = threading.Lock()
        self._last: dict[int, int] = {}
        self._tagged: dict[str, set[int]] = {}
        self._own = 0
        self._tag_ticks: dict[str, int] = {}
        self._busy0, _ = _proc_stat_busy()
        self._busy = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpumon", daemon=True)
        self._phase: dict[str, Any] | None = None
        self._initialized = False
        self.phases: dict[str, dict[str, Any]] = {}
        self._sample()
        self._thread.start()

    def tag(self, name: str, pid: int) -> None:
        """Account ``pid`` (and its descendants) also under ``name`` (e.g. broker, daemon)."""
        with self._lock:
            self._tagged.setdefault(name, set()).add(pid)

    def tagged(self, name: str) -> set[int]:
        """The pids tagged ``name`` (e.g. the broker's)."""
        with self._lock:
            return set(self._tagged.get(name, ()))

    def _sample(self) -> None:
        pids = {self.root} | _descendants(self.root)
        with self._lock:
            tagged = {n: set(ps) for n, ps in self._tagged.items()}
        tag_members: dict[str, set[int]] = {}
        for n, ps in tagged.items():
            members: set[int] = set()
            for p in ps:
                members |= {p} | _descendants(p)
            tag_members[n] = members
            pids |= members
        busy, _ = _proc_stat_busy()
        with self._lock:
            for pid in pids:
                t = _pid_ticks(pid)
                if t is None:
                    continue
                prev = self._last.get(pid)
                # a pid first seen after the first sample started after the monitor: all its CPU counts
                d = t[0] - prev if prev is not None else (t[0] if self._initialized else 0)
                self._last[pid] = t[0]
                if d > 0:
                    self._own += d
                    for n, members in tag_members.items():
                        if pid in members:
                            self._tag_ticks[n] = self._tag_ticks.get(n, 0) + d
            self._busy = busy - self._busy0
            self._initialized = True

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self._sample()
            except Exception:  # noqa: BLE001 - monitoring must never kill the benchmark
                pass

    def snapshot(self) -> dict[str, Any]:
        self._sample()
        with self._lock:
            return {"t": time.monotonic(), "busy": self._busy, "own": self._own, "tags": dict(self._tag_ticks), "self_ru": resource.getrusage(resource.RUSAGE_SELF)}

    def begin(self, name: str) -> None:
        self._phase = {"name": name, "probe_before_ms": probe_ms(), "start": self.snapshot()}

    def end(self) -> dict[str, Any]:
        ph = self._phase
        if ph is None:
            return {}
        self._phase = None
        s0, s1 = ph["start"], self.snapshot()
        wall = max(1e-6, s1["t"] - s0["t"])
        k = 1.0 / (wall * _CLK_TCK)
        busy = (s1["busy"] - s0["busy"]) * k
        own = (s1["own"] - s0["own"]) * k
        res = {
            "wall_s": round(wall, 2),
            "machine_busy_cores": round(busy, 2),
            "own_cores": round(own, 2),
            "others_cores": round(max(0.0, busy - own), 2),
        }
        for n in set(s0["tags"]) | set(s1["tags"]):
            res[f"{n}_cores"] = round((s1["tags"].get(n, 0) - s0["tags"].get(n, 0)) * k, 2)
        res["probe_ms"] = [round(ph["probe_before_ms"], 3), round(probe_ms(), 3)]
        res["contended"] = res["others_cores"] > CONTENDED_CORES
        res["state"] = "C" if res["contended"] else "Q"
        self.phases[ph["name"]] = res
        return res

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


# --------------------------------------------------------------------------- processes


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Procs:
    """Subprocesses started in their own process groups; :meth:`kill_all` stops every one."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def spawn(self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None, log_path: Path | None = None) -> subprocess.Popen:
        out: Any = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
        try:
            p = subprocess.Popen(
                list(cmd), env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            if log_path is not None:
                out.close()
        self.procs.append(p)
        return p

    @staticmethod
    def stop(p: subprocess.Popen, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the process group, wait up to ``timeout`` s, then SIGKILL it. Returns the exit code."""
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
        # stragglers of the group (none expected)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        return p.returncode

    def kill_all(self, timeout: float = 5.0) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(p, timeout)
        self.procs.clear()


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set (VmHWM) of a live process in MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def prom_sum(body: bytes, name: str, label_filter: str = "") -> float:
    """Sum of the samples of metric ``name`` (optionally only lines containing ``label_filter``)."""
    total = 0.0
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("#"):
            continue
        metric = line.split(" ", 1)[0]
        if metric == name or metric.startswith(name + "{"):
            if label_filter and label_filter not in line:
                continue
            with contextlib.suppress(ValueError):
                total += float(line.rsplit(" ", 1)[1])
    return total


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- asyncio runner

#: set by :func:`run_async`'s SIGINT/SIGTERM handler; long async loops check it
STOP = threading.Event()


def run_async(coro: Any, timeout: float | None = None) -> Any:
    """``asyncio.run(coro)`` with a time limit, where SIGINT/SIGTERM always end in
    ``KeyboardInterrupt`` (asyncio.run alone can lose a Ctrl-C when a client library swallows
    the cancellation): the handler sets :data:`STOP` and cancels the task; if the coroutine
    still returns, ``KeyboardInterrupt`` is raised afterwards."""

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        inner = asyncio.ensure_future(coro)

        def on_signal() -> None:
            STOP.set()
            inner.cancel()

        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, on_signal)
                installed.append(sig)
        try:
            return await asyncio.wait_for(inner, timeout)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    if STOP.is_set():
        coro.close()
        raise KeyboardInterrupt
    try:
        result = asyncio.run(main())
    except asyncio.CancelledError:
        if STOP.is_set():
            raise KeyboardInterrupt from None
        raise
    except TimeoutError:
        if STOP.is_set():
            raise KeyboardInterrupt from None
        raise TimeoutError(f"async phase exceeded {timeout:.0f}s") from None
    if STOP.is_set():
        raise KeyboardInterrupt
    return result


def _check_stop() -> None:
    if STOP.is_set():
        raise KeyboardInterrupt


# --------------------------------------------------------------------------- Kafka helpers


def plus_minute(ts: str) -> str:
    """``bucket_start_ts`` + 60 s in the same ISO 8601 UTC form (a one-window label span's end)."""
    from taskclf_daemon.timeutil import format_ts_us, parse_ts_us

    return format_ts_us(parse_ts_us(ts) + 60_000_000)


def bench_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment without any TASKCLF_* setting (plus ``extra``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKCLF_") or k in ("TASKCLF_TANSU_BIN", "TASKCLF_MODEL_BACKEND", "TASKCLF_MODEL_CACHE_DIR", "TASKCLF_PIPELINE_WORKERS")}
    env.update(extra or {})
    return env


def settings_for(bootstrap: str, group_id: str = "bench", **overrides: Any) -> Any:
    """The daemon's :class:`Settings` (defaults) for a benchmark client; ``overrides`` by key."""
    from taskclf_daemon.config import load_settings

    env = {"TASKCLF_SESSION_TIMEOUT_MS": "6000"}
    flags = {"bootstrap_servers": bootstrap, "group_id": group_id, "client_id": "taskclf-bench", "http_port": 0}
    s = load_settings(None, env=env, flags=flags, require_model=False)
    return s.replace(**overrides) if overrides else s


async def create_topics(bootstrap: str, topics: Sequence[str], partitions: int, config: Mapping[str, str] | None = None) -> None:
    """Create ``topics`` (those missing) with ``partitions`` and the topic ``config`` given."""
    from taskclf_daemon import kafka_io as kio

    await kio.ensure_topics(settings_for(bootstrap), list(topics), partitions=partitions, config=config)


async def preload(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]], progress: Callable[[int, float], None] | None = None) -> int:
    """Produce ``records`` as fast as possible with the project's producer (batch API)."""
    from taskclf_daemon.offline.produce import produce

    return await produce(settings_for(bootstrap), topic, records, progress=progress)


@dataclass
class TopicRead:
    """What :func:`read_topic` found."""

    count: int = 0
    unique: int = 0
    duplicates: int = 0
    ts_ms: list[int] = field(default_factory=list)
    sources: list[bytes | None] = field(default_factory=list)  # taskclf-source header per record
    positions: dict[tuple[int, int], int] = field(default_factory=dict)  # (partition, offset) -> ts (input reads)
    partitions: int = 0
    values: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (user_id, bucket_start_ts) -> value (keep_values)
    value_conflicts: int = 0  # re-emitted outputs whose bytes differ from the first copy (keep_values)

    def span_s(self) -> float:
        return (max(self.ts_ms) - min(self.ts_ms)) / 1000.0 if len(self.ts_ms) > 1 else 0.0

    def rate(self) -> float:
        """records / (last CreateTime - first CreateTime)."""
        span = self.span_s()
        return self.count / span if span > 0 else float("nan")


def read_topic(bootstrap: str, topic: str, *, expect: int | None = None, timeout: float = 120.0, idle: float = 3.0,
               dedupe: bool = True, keep_sources: bool = False, keep_positions: bool = False, keep_values: bool = False) -> TopicRead:
    """Read ``topic`` from the start with confluent-kafka ``assign()`` (no group).

    Stops at ``expect`` distinct records (then reads ``idle`` s more to catch re-emitted
    duplicates), after ``idle`` s without records, or at ``timeout``. Deduplicates on the
    value's (user_id, bucket_start_ts); ``keep_values`` keeps the first value per key and counts
    re-emitted copies whose bytes differ (``value_conflicts``).
    """
    import orjson
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                  "log_level": 3, "fetch.wait.max.ms": 10, "auto.offset.reset": "earliest"})
    out = TopicRead()
    seen: set[tuple[str, str]] = set()
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        out.partitions = len(md.partitions)
        c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        tail_until: float | None = None
        while time.monotonic() < deadline:
            msgs = c.consume(num_messages=5000, timeout=0.3)
            now = time.monotonic()
            if not msgs:
                if tail_until is not None and now >= tail_until:
                    break
                if now - last > idle:
                    break
                continue
            for m in msgs:
                if m.error():
                    continue
                last = now
                out.count += 1
                ts_type, ts = m.timestamp()
                out.ts_ms.append(ts)
                if keep_sources:
                    src = None
                    for k, v in m.headers() or ():
                        if k == "taskclf-source":
                            src = v
                    out.sources.append(src)
                if keep_positions:
                    out.positions[(m.partition(), m.offset())] = ts
                if dedupe:
                    try:
                        rec = orjson.loads(m.value())
                        key = (str(rec.get("user_id")), str(rec.get("bucket_start_ts")))
                    except (orjson.JSONDecodeError, AttributeError, TypeError):
                        key = ("?", f"{m.partition()}:{m.offset()}")
                    if key in seen:
                        out.duplicates += 1
                        if keep_values and out.values.get(key) != m.value():
                            out.value_conflicts += 1
                    else:
                        seen.add(key)
                        if keep_values:
                            out.values[key] = m.value()
            if expect is not None and tail_until is None and (len(seen) if dedupe else out.count) >= expect:
                tail_until = time.monotonic() + min(idle, 1.0)
        out.unique = len(seen) if dedupe else out.count
        return out
    finally:
        c.close()


def percentiles(values: Sequence[float], ps: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    import numpy as np

    if not values:
        return {f"p{int(p)}": float("nan") for p in ps}
    a = np.asarray(values, dtype=np.float64)
    return {f"p{int(p)}": float(np.percentile(a, p)) for p in ps}


def join_latencies(outputs: TopicRead, inputs: TopicRead, input_topic: str) -> list[float]:
    """Per output record: its CreateTime minus its input record's CreateTime (ms), joined on the
    ``taskclf-source`` header ``topic:partition:offset``."""
    lat: list[float] = []
    prefix = input_topic + ":"
    for ts, src in zip(outputs.ts_ms, outputs.sources):
        if not src:
            continue
        s = src.decode()
        if not s.startswith(prefix):
            continue
        part, off = s[len(prefix):].split(":")
        t_in = inputs.positions.get((int(part), int(off)))
        if t_in is not None:
            lat.append(float(ts - t_in))
    return lat


# --------------------------------------------------------------------------- baselines


async def passthrough(s: Any, input_topic: str, output_topic: str, expect: int, *, on_assigned: Callable[[], None] | None = None,
                      on_drained: Callable[[dict[str, Any]], None] | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """Raw aiokafka pass-through with the daemon's settings, sink and offset tracking.

    Same as ``Daemon._loop``/``_process`` minus decode and model: ``getmany`` of up to
    ``max_batch_records``, each value forwarded as-is keyed by the input key (with the daemon's
    ``taskclf-source``/``taskclf-processed-ms`` headers) through ``OutputSink`` (batch API),
    ``PendingBatch`` per poll, acknowledged offsets committed every ``commit_interval_ms``,
    partitions paused at ``max_in_flight_records``. Stops after ``expect`` records, drained and
    committed.
    """
    from taskclf_daemon import kafka_io as kio
    from taskclf_daemon.offsets import OffsetTracker, PendingBatch

    deadline = time.monotonic() + timeout
    producer = kio.make_producer(s)
    await producer.start()
    consumer = None
    res: dict[str, Any] = {"consumed": 0, "commits": 0, "commit_failures": 0, "batches": 0}
    try:
        sink = kio.OutputSink(producer)
        await sink.prepare([output_topic])
        consumer = kio.make_consumer(s, max_records=s.max_batch_records)
        consumer.subscribe([input_topic])
        t_start = time.monotonic()
        await consumer.start()
        tracker = OffsetTracker()
        next_commit = time.monotonic() + s.commit_interval_ms / 1000.0
        assigned = False

        async def commit() -> None:
            owned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            offsets = tracker.take_committable(owned)
            if offsets:
                try:
                    await consumer.commit({kio.TopicPartition(t, p): o for (t, p), o in offsets.items()})
                    res["commits"] += 1
                except kio.KafkaError:
                    res["commit_failures"] += 1
                    tracker.restore(offsets)

        while res["consumed"] < expect:
            _check_stop()
            if time.monotonic() > deadline:
                raise TimeoutError(f"pass-through: only {res['consumed']}/{expect} records after {timeout:.0f}s")
            if tracker.in_flight_records >= s.max_in_flight_records:
                parts = list(consumer.assignment())
                consumer.pause(*parts)
                while tracker.in_flight_records >= s.max_in_flight_records:
                    oldest = tracker.oldest()
                    if oldest is None:
                        break
                    await asyncio.wait(oldest.futures, timeout=1.0)
                    tracker.collect()
                consumer.resume(*[tp for tp in parts if tp in consumer.assignment()])
            data = await consumer.getmany(timeout_ms=100, max_records=s.max_batch_records)
            if not assigned and consumer.assignment():
                assigned = True
                res["join_s"] = round(time.monotonic() - t_start, 3)
                if on_assigned is not None:
                    on_assigned()
            if data:
                owned = consumer.assignment()
                next_offsets: dict[tuple[str, int], int] = {}
                ts_ms: list[int] = []
                n = 0
                for tp, msgs in data.items():
                    if not msgs or tp not in owned:
                        continue
                    if "first_append_wall_ms" not in res:
                        res["first_append_wall_ms"] = int(time.time() * 1000)
                    for msg in msgs:
                        n += 1
                        ts_ms.append(msg.timestamp)
                        headers = [("taskclf-source", f"{tp.topic}:{tp.partition}:{msg.offset}".encode()),
                                   ("taskclf-processed-ms", str(int(time.time() * 1000)).encode())]
                        await sink.append(output_topic, msg.key, msg.value, headers)
                    next_offsets[(tp.topic, tp.partition)] = msgs[-1].offset + 1
                futures = await sink.flush()
                if n:
                    tracker.add(PendingBatch(futures, next_offsets, n, ts_ms))
                    res["consumed"] += n
                    res["batches"] += 1
            now = time.monotonic()
            if now >= next_commit:
                next_commit = now + s.commit_interval_ms / 1000.0
                tracker.collect()
                await commit()
        futs = tracker.all_futures()
        if futs:
            await asyncio.wait(futs, timeout=max(1.0, deadline - time.monotonic()))
        tracker.collect()
        res["all_acked_wall_ms"] = int(time.time() * 1000)
        await commit()
        res["in_flight_left"] = tracker.in_flight_records
        if "first_append_wall_ms" in res and res["all_acked_wall_ms"] > res["first_append_wall_ms"]:
            # the same records over the time from the first output appended to the last acknowledged
            res["acked_eps"] = round(res["consumed"] / ((res["all_acked_wall_ms"] - res["first_append_wall_ms"]) / 1000.0))
        if on_drained is not None:
            on_drained(res)
        return res
    finally:
        if consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 10)


async def naive_daemon(s: Any, pipeline: Any, input_topic: str, output_topic: str, expect: int, *, timeout: float = 600.0) -> dict[str, Any]:
    """The naive design: per message decode -> ``pipeline.process([window])`` (one model call on
    a 1-row matrix) -> ``send_and_wait`` -> commit of that message's offset."""
    from taskclf_daemon import kafka_io as kio
    from taskclf_daemon.codec import RowValidator, decode_window
    from taskclf_daemon.errors import InvalidRecord
    from taskclf_daemon.records import SourceRef

    deadline = time.monotonic() + timeout
    validator = RowValidator(pipeline.bundle.schema)
    states = pipeline.new_state_store()
    producer = kio.make_producer(s)
    await producer.start()
    consumer = kio.make_consumer(s, max_records=1)
    res: dict[str, Any] = {"consumed": 0, "invalid": 0}
    acc = {"decode_and_pipeline": 0.0, "send_and_wait": 0.0, "commit": 0.0}
    try:
        consumer.subscribe([input_topic])
        t0 = time.monotonic()
        await consumer.start()
        while res["consumed"] < expect:
            _check_stop()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"naive: only {res['consumed']}/{expect} records after {timeout:.0f}s")
            try:
                msg = await asyncio.wait_for(consumer.getone(), timeout=left)
            except TimeoutError:
                continue
            if "join_s" not in res:
                res["join_s"] = round(time.monotonic() - t0, 3)
            res["consumed"] += 1
            t1 = time.perf_counter()
            try:
                w = decode_window(msg.value, validator, s.max_record_bytes)
            except InvalidRecord:
                res["invalid"] += 1
            else:
                w.source = SourceRef(msg.topic, msg.partition, msg.offset)
                r = pipeline.process([w], states)
                t2 = time.perf_counter()
                acc["decode_and_pipeline"] += t2 - t1
                for p in r.predictions:
                    headers = [("taskclf-source", f"{msg.topic}:{msg.partition}:{msg.offset}".encode()),
                               ("taskclf-processed-ms", str(int(time.time() * 1000)).encode())]
                    await producer.send_and_wait(output_topic, p.value, key=w.user_id.encode(), headers=headers)
                t1 = time.perf_counter()
                acc["send_and_wait"] += t1 - t2
            await consumer.commit({kio.TopicPartition(msg.topic, msg.partition): msg.offset + 1})
            acc["commit"] += time.perf_counter() - t1
        res["us_per_message"] = {k: round(v / max(1, res["consumed"]) * 1e6, 1) for k, v in acc.items()}
        return res
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 10)


def stage_profile(pipeline: Any, records: Sequence[tuple[bytes, bytes]], batch: int = 1000) -> dict[str, Any]:
    """Offline cost of the daemon's stages in µs per record, on ``records`` in micro-batches of
    ``batch`` (the daemon's ``max_batch_records``), in this process: ``decode`` is
    ``codec.decode_window`` (orjson + validation), the rest are ``InferencePipeline.process``'s
    own stage timings. ``raw_booster_predict`` times ``Booster.predict(X, num_threads=1)`` on the
    very matrices the pipeline built, so ``R_model`` = pipeline predict / raw predict."""
    from taskclf_daemon.codec import RowValidator, decode_window

    bundle = pipeline.bundle
    validator = RowValidator(bundle.schema)
    states = pipeline.new_state_store()
    acc: dict[str, float] = {"decode": 0.0}
    captured: list[Any] = []
    real = bundle.predict_proba

    def capture(X: Any) -> Any:
        captured.append(X)
        return real(X)

    raw_predict = 0.0
    n = 0
    bundle.predict_proba = capture  # instance attribute: this process's bundle only
    try:
        for i in range(0, len(records), batch):
            chunk = records[i:i + batch]
            t0 = time.perf_counter()
            ws = [decode_window(v, validator) for _, v in chunk]
            acc["decode"] += time.perf_counter() - t0
            captured.clear()
            r = pipeline.process(ws, states)
            for k, v in r.timings.items():
                acc[k] = acc.get(k, 0.0) + v
            for X in captured:
                t0 = time.perf_counter()
                bundle.booster.predict(X, num_threads=1)
                raw_predict += time.perf_counter() - t0
            n += len(chunk)
    finally:
        del bundle.predict_proba
    out: dict[str, Any] = {k: round(v / n * 1e6, 2) for k, v in acc.items()}
    out["total"] = round(sum(acc.values()) / n * 1e6, 2)
    out["raw_booster_predict"] = round(raw_predict / n * 1e6, 2)
    out["R_model"] = round(acc["predict"] / raw_predict, 3) if raw_predict else float("nan")
    out["records"] = n
    out["batch"] = batch
    return out


# --------------------------------------------------------------------------- worker CLI


def _passthrough_main(a: argparse.Namespace) -> int:
    s = settings_for(a.bootstrap_servers, a.group_id, fetch_max_wait_ms=a.fetch_max_wait_ms)
    events = open(a.events, "a", buffering=1) if a.events else None

    def emit(ev: dict[str, Any]) -> None:
        line = json.dumps(ev)
        if events is not None:
            events.write(line + "\n")
        print(line, flush=True)

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        res = run_async(passthrough(s, a.input_topic, a.output_topic, a.expect, on_assigned=lambda: emit({"event": "assigned"}),
                                    on_drained=lambda r: emit({"event": "drained", **r}), timeout=a.timeout), a.timeout + 30)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001
        emit({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    res["cpu_s"] = round((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), 3)
    res["vm_hwm_mb"] = vm_hwm_mb(os.getpid())
    emit({"event": "done", **res})
    if events is not None:
        events.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchlib.py", description="benchmark worker processes")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("passthrough", help="raw aiokafka pass-through worker (consume -> produce -> commit)")
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--input-topic", required=True)
    p.add_argument("--output-topic", required=True)
    p.add_argument("--group-id", required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--fetch-max-wait-ms", type=int, default=50)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--events", help="also append JSON event lines to this file")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return _passthrough_main(a)


if __name__ == "__main__":
    sys.exit(main())
