"""`taskclf-daemon demo`, the README's run command, end to end (its own embedded broker)."""

from __future__ import annotations

import asyncio
import io
import os
import time

import pytest

from taskclf_daemon.demo import run_demo

pytestmark = pytest.mark.broker


def _tansu_pids() -> set[int]:
    pids = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if b"tansu" in cmd and b"broker" in cmd:
                pids.add(int(d))
    return pids


def test_demo_runs_everything_and_leaves_nothing_behind(tmp_path):
    before = _tansu_pids()
    out = io.StringIO()
    res = asyncio.run(run_demo(workdir=tmp_path / "demo", seconds=4, users=40, rate=300, http_port=0, out=out))
    text = out.getvalue()
    assert res["exit_code"] == 0
    assert res["produced"] > 500 and res["emitted"] == res["produced"]
    assert sum(res["label_mix"].values()) == res["emitted"]
    assert "emitted" in text and "demo summary" in text and "label mix" in text
    # the model was trained and cached: a second run reuses it
    bundles = list((tmp_path / "demo" / "models").glob("*_run-*"))
    assert len(bundles) == 1 and (tmp_path / "demo" / "calibrator_store" / "store.json").is_file()
    deadline = time.monotonic() + 5
    while _tansu_pids() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (_tansu_pids() - before), "demo left a broker running"
