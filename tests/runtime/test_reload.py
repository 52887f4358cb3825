"""Hot reload without a broker: what is watched, the file signature, refusal, errors and their
retry, all-or-none across shards, and outputs after a swap equal the new artifacts' predictions
on the continuing per-user history."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from helpers_reload import GOLDEN_RUN, NEW_RUN, broken_bundle, make_home, policy_path, write_policy
from helpers_rows import GOLDEN_DIR
from taskclf_daemon.artifacts import pipeline_from_settings
from taskclf_daemon.codec import RowValidator, decode_window
from taskclf_daemon.config import load_settings
from taskclf_daemon.metrics import Metrics
from taskclf_daemon.offline.synthetic import generate_labelled
from taskclf_daemon.offline.train import train_bundle
from taskclf_daemon.records import SourceRef
from taskclf_daemon.reload import Reloader, redact, signature, watched_file
from taskclf_daemon.schema import SCHEMAS
from taskclf_daemon.shard import PipelineShard, RawBatch
from taskclf_daemon.workers import LocalShard


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    return [ln for ln in (GOLDEN_DIR / "inputs.jsonl").read_bytes().splitlines() if ln.strip()]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return make_home(tmp_path)


def _settings(home: Path, **flags: Any) -> Any:
    return load_settings(env={}, flags={"policy": str(policy_path(home)), "pipeline_workers": 0, "reload_interval_s": 0, **flags})


class _Setup:
    def __init__(self, home: Path, shards: list[Any] | None = None) -> None:
        self.settings = _settings(home)
        self.pipe, _ = pipeline_from_settings(self.settings)
        self.shard = PipelineShard(self.pipe)
        self.metrics = Metrics()
        self.swaps: list[str] = []
        self.reloader = Reloader(self.settings, shards or [LocalShard(self.shard)], self.pipe, self.metrics, lambda p, d: self.swaps.append(p.bundle.bundle_id))

    def count(self, result: str) -> float:
        return self.metrics.model_reloads.labels(result)._value.get()


def _batch(lines: list[bytes], start: int) -> RawBatch:
    b = RawBatch("in")
    for i, ln in enumerate(lines):
        b.add(0, start + i, ln, orjson.loads(ln)["user_id"].encode())
    return b


# --------------------------------------------------------------------------- what is watched


def test_watched_file_is_the_policy_else_taskclfs_files_beside_the_bundle(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "run-1").mkdir(parents=True)
    assert watched_file(SimpleNamespace(policy="/etc/p.json", model_dir=str(models / "run-1"))) == Path("/etc/p.json")
    only_dir = SimpleNamespace(policy=None, model_dir=str(models / "run-1"))
    assert watched_file(only_dir) == models / "active.json"  # taskclf's registry pointer
    (models / "inference_policy.json").write_text("{}")
    assert watched_file(only_dir) == models / "inference_policy.json"  # the policy once it exists
    assert watched_file(SimpleNamespace(policy=None, model_dir=None)) is None


def test_signature_sees_a_new_mtime_and_a_configmap_symlink_swap(tmp_path: Path) -> None:
    """A ConfigMap volume: ``policy.json -> ..data/policy.json``, ``..data -> ..<timestamp>``; an
    update writes a new ``..<timestamp>`` dir and swaps ``..data``. Even with the same mtime and
    size, the resolved file is another inode: the signature changes."""
    v1, v2 = tmp_path / "..2026_01", tmp_path / "..2026_02"
    for d, text in ((v1, '{"a": 1}'), (v2, '{"a": 2}')):
        d.mkdir()
        (d / "policy.json").write_text(text)
        os.utime(d / "policy.json", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    (tmp_path / "..data").symlink_to(v1.name)
    link = tmp_path / "policy.json"
    link.symlink_to("..data/policy.json")
    first = signature(link)
    assert first is not None and first[0] == 1_700_000_000_000_000_000 and signature(link) == first
    tmp_link = tmp_path / "..data_tmp"
    tmp_link.symlink_to(v2.name)
    os.replace(tmp_link, tmp_path / "..data")  # what the kubelet does
    second = signature(link)
    assert second is not None and second[:2] == first[:2] and second != first
    os.utime(v2 / "policy.json", ns=(1_700_000_000_000_000_001, 1_700_000_000_000_000_001))
    assert signature(link)[0] == 1_700_000_000_000_000_001
    assert signature(tmp_path / "missing.json") is None and signature(None) is None


def test_redact_keeps_user_ids_out_of_the_reason() -> None:
    msg = "ArtifactError: /h/artifacts/store/users/alice@x.json: not valid JSON; policy.json: per_user_reject_thresholds['bob']: must be a number"
    out = redact(msg)
    assert "alice" not in out and "bob" not in out
    assert out == "ArtifactError: /h/artifacts/store/users/<user>.json: not valid JSON; policy.json: per_user_reject_thresholds[<user>]: must be a number"


# --------------------------------------------------------------------------- a reload


def test_a_reload_swaps_the_artifacts_and_keeps_every_users_state(home: Path, lines: list[bytes]) -> None:
    s = _Setup(home)
    head, tail = lines[: len(lines) // 2], lines[len(lines) // 2 :]
    host = s.reloader.shards[0]

    async def run() -> Any:
        before = await host.process(_batch(head, 0), 0)
        write_policy(home, model_dir=f"models/{NEW_RUN}", calibrator_store_dir=None, reject_threshold=0.4)
        outcome = await s.reloader.reload("file")
        after = await host.process(_batch(tail, len(head)), 0)
        return before, outcome, after

    before, outcome, after = asyncio.run(run())
    assert (outcome.result, outcome.model_bundle_id, outcome.calibrator_store_id, outcome.error, outcome.trigger) == ("ok", NEW_RUN, None, None, "file")
    assert s.shard.pipeline.bundle.bundle_id == NEW_RUN and s.shard.pipeline.store is None and s.shard.pipeline.config.reject_threshold == 0.4
    assert s.swaps == [NEW_RUN] and (s.count("ok"), s.count("error"), s.count("refused")) == (1, 0, 0)
    assert s.reloader.loaded == signature(policy_path(home))
    # outputs: the old artifacts before, the new ones after, on the continuing per-user history
    old_pipe, new_pipe = s.pipe, s.shard.pipeline
    v = RowValidator(old_pipe.bundle.schema)

    def windows(ls: list[bytes], start: int) -> list[Any]:
        out = []
        for i, ln in enumerate(ls):
            w = decode_window(ln, v)
            w.source = SourceRef("in", 0, start + i)
            out.append(w)
        return out

    states = old_pipe.new_state_store()
    want_before = [p.value for p in old_pipe.process(windows(head, 0), states).predictions]
    want_after = [p.value for p in new_pipe.process(windows(tail, len(head)), states).predictions]
    got_before = [val for _k, val, _s in before.outputs]
    got_after = [val for _k, val, _s in after.outputs]
    assert got_before == want_before and got_after == want_after and len(got_after) == len(tail)
    recs = [json.loads(x) for x in got_after]
    assert {(r["model_bundle_id"], r["calibrator_store_id"], r["calibrator_scope"]) for r in recs} == {(NEW_RUN, None, "none")}
    assert {json.loads(x)["model_bundle_id"] for x in got_before} == {GOLDEN_RUN}
    # the kept history matters: the new model on a fresh state predicts other values
    fresh = [p.value for p in new_pipe.process(windows(tail, len(head)), new_pipe.new_state_store()).predictions]
    assert sum(a != b for a, b in zip(fresh, want_after)) > 10


def test_a_broken_bundle_is_an_error_retried_until_fixed(home: Path) -> None:
    s = _Setup(home)
    loaded = s.reloader.loaded
    write_policy(home, model_dir=broken_bundle(home))

    async def run() -> list[Any]:
        return [await s.reloader.reload("file"), await s.reloader.reload("file")]

    first, second = asyncio.run(run())
    for o in (first, second):
        assert (o.result, o.model_bundle_id) == ("error", GOLDEN_RUN) and "model.txt" in o.error
    assert s.shard.pipeline is s.pipe and s.swaps == [] and s.count("error") == 2 and s.count("ok") == 0
    assert s.reloader.loaded == loaded  # the failed file is not remembered: the next check retries
    write_policy(home, model_dir=f"models/{NEW_RUN}", calibrator_store_dir=None)
    assert asyncio.run(s.reloader.reload("file")).result == "ok" and s.shard.pipeline.bundle.bundle_id == NEW_RUN


def test_a_bundle_with_another_schema_is_refused(home: Path, tmp_path: Path) -> None:
    s = _Setup(home)
    v2 = train_bundle(generate_labelled(seed=4, n_users=4, days=2, schema_version="v2"), tmp_path / "v2" / "models", schema_version="v2", seed=4, num_boost_round=5, data_provenance="synthetic")
    shutil.copytree(v2, home / "models" / "run-v2")
    write_policy(home, model_dir="models/run-v2", model_schema_hash=SCHEMAS["v2"].hash, calibrator_store_dir=None)
    out = asyncio.run(s.reloader.reload("sighup"))
    assert (out.result, out.model_bundle_id, out.trigger) == ("refused", GOLDEN_RUN, "sighup")
    assert SCHEMAS["v2"].hash in out.error and "new consumer group" in out.error
    assert s.shard.pipeline is s.pipe and s.count("refused") == 1 and s.count("ok") == 0


class _FakeHost:
    """A shard host that answers the reload steps as told and records them."""

    def __init__(self, name: str, status: str | None) -> None:
        self.name = name
        self.status = status
        self.steps: list[str] = []

    async def reload(self, step: str, arg: Any = None) -> str | None:
        self.steps.append(step)
        if step == "status":
            st, self.status = self.status, self.status if self.status != "loading" else "ready " + self.ready
            return st
        return None


@pytest.mark.parametrize("bad", ["error FileNotFoundError: model.txt", "ready some-other-run -"])
def test_all_shards_switch_or_none(home: Path, bad: str) -> None:
    good, failing = _FakeHost("pipeline-0", "loading"), _FakeHost("pipeline-1", bad)
    s = _Setup(home, shards=[good, failing])
    write_policy(home, model_dir=f"models/{NEW_RUN}", calibrator_store_dir=None)
    good.ready = failing.ready = f"{NEW_RUN} -"
    out = asyncio.run(s.reloader.reload("file"))
    assert out.result == "error" and "pipeline-1" in out.error and s.swaps == []
    assert good.steps == failing.steps == ["prepare", "status", "abort"]
    # and when every shard loads what the daemon loaded: prepare, status until ready, commit
    a, b = _FakeHost("pipeline-0", "loading"), _FakeHost("pipeline-1", f"ready {NEW_RUN} -")
    a.ready = b.ready = f"{NEW_RUN} -"
    s2 = _Setup(home, shards=[a, b])
    assert asyncio.run(s2.reloader.reload("file")).result == "ok"
    assert a.steps == ["prepare", "status", "status", "commit"] and b.steps == ["prepare", "status", "commit"]


def test_the_watch_loop_reloads_on_a_change_and_on_request_only(home: Path) -> None:
    s = _Setup(home)
    s.reloader.s = s.settings.replace(reload_interval_s=0.02)

    async def run() -> list[str]:
        task = asyncio.create_task(s.reloader.run())
        try:
            await asyncio.sleep(0.2)
            assert s.reloader.last is None  # nothing changed: no reload
            write_policy(home, model_dir=f"models/{NEW_RUN}", calibrator_store_dir=None)
            for _ in range(200):
                if s.reloader.last is not None:
                    break
                await asyncio.sleep(0.02)
            first = s.reloader.last
            await asyncio.sleep(0.2)
            assert s.reloader.last is first  # the same file is not loaded twice
            s.reloader.request()
            for _ in range(200):
                if s.reloader.last is not first:
                    break
                await asyncio.sleep(0.02)
            return [first.trigger + ":" + first.result, s.reloader.last.trigger + ":" + s.reloader.last.result]
        finally:
            task.cancel()

    assert asyncio.run(run()) == ["file:ok", "sighup:ok"]
    assert s.count("ok") == 2 and s.swaps == [NEW_RUN, NEW_RUN]


def test_the_shard_side_loads_in_the_background_and_commits_only_what_it_loaded(home: Path) -> None:
    """``shard_reload.reload_step`` as a pipeline worker runs it (here in-process)."""
    import time

    from taskclf_daemon.artifacts import resolve_from_settings
    from taskclf_daemon.shard_reload import ReloadSpec, reload_step

    s = _Setup(home)

    def wait(shard: PipelineShard) -> str:
        for _ in range(500):
            st = reload_step(shard, "status")
            if st != "loading":
                return st
            time.sleep(0.01)
        raise AssertionError("still loading")

    write_policy(home, model_dir=broken_bundle(home))
    assert reload_step(s.shard, "prepare", ReloadSpec(resolve_from_settings(s.settings), s.settings)) is None
    st = wait(s.shard)
    assert st.startswith("error ArtifactError") and "model.txt" in st
    with pytest.raises(ValueError, match="without a loaded pipeline"):
        reload_step(s.shard, "commit")
    assert s.shard.pipeline is s.pipe
    write_policy(home, model_dir=f"models/{NEW_RUN}", calibrator_store_dir=None)
    reload_step(s.shard, "prepare", ReloadSpec(resolve_from_settings(s.settings), s.settings))
    assert wait(s.shard) == f"ready {NEW_RUN} -"
    assert reload_step(s.shard, "abort") is None and reload_step(s.shard, "status") == "error nothing is being loaded"
    reload_step(s.shard, "prepare", ReloadSpec(resolve_from_settings(s.settings), s.settings))
    wait(s.shard)
    assert reload_step(s.shard, "commit") == NEW_RUN and s.shard.pipeline.bundle.bundle_id == NEW_RUN
    with pytest.raises(ValueError, match="unknown reload step"):
        reload_step(s.shard, "rollback")


def test_a_policy_changed_while_the_daemon_loads_is_reloaded_at_the_first_check(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon process and its workers load at different moments: the signature the
    reloader starts from is the one before any load, so such a change is never missed."""
    from taskclf_daemon import artifacts, cli

    settings = _settings(home)
    before = signature(policy_path(home))
    real = artifacts.pipeline_from_settings

    def load_then_change(s: Any) -> Any:
        out = real(s)
        write_policy(home, model_dir=f"models/{NEW_RUN}", calibrator_store_dir=None)
        return out

    monkeypatch.setattr(artifacts, "pipeline_from_settings", load_then_change)
    d = cli.build_daemon(settings)
    assert d.pipeline.bundle.bundle_id == GOLDEN_RUN and d.reloader.loaded == before != signature(policy_path(home))
