"""Which C accelerators serve (``taskclf_daemon.native``), and the switch that turns them off."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from taskclf_daemon import native

PROBE = (
    "import json; from taskclf_daemon import native, timeutil; from taskclf_daemon.pipeline import features, matrix, output;"
    "print(json.dumps([native.in_force(), features.NATIVE_PUSH is None, output.NATIVE_ROWS is None, output.NATIVE_FIELDS is None, timeutil.NATIVE_PARSE is None, matrix.NATIVE_FILL is None]))"
)


def _probe(**env: str) -> list:
    e = {k: v for k, v in os.environ.items() if k != "TASKCLF_DAEMON_NO_NATIVE"} | env
    out = subprocess.run([sys.executable, "-c", PROBE], env=e, capture_output=True, text=True, check=True).stdout
    return list(json.loads(out))


def test_all_built_and_in_force() -> None:
    # the install compiles every accelerator (CI has gcc): a silently skipped build fails here
    assert _probe() == [["overlay", "output", "timestamps", "matrix"], False, False, False, False, False]
    assert _probe(TASKCLF_DAEMON_NO_NATIVE="0") == [["overlay", "output", "timestamps", "matrix"], False, False, False, False, False]


def test_the_switch_turns_every_accelerator_off() -> None:
    assert _probe(TASKCLF_DAEMON_NO_NATIVE="1") == [[], True, True, True, True, True]


def test_load_names_what_it_finds() -> None:
    assert native.load("_no_such_module") is None
    got = native.load("_timestamps", "parse_utc")
    assert got is not None and got[0]("1970-01-01T00:00:01Z") == 1_000_000


def test_a_build_with_other_constants_is_left_out_and_named() -> None:
    from taskclf_daemon import _overlay
    from taskclf_daemon.labels import HISTORY_ROWS

    assert _overlay.HISTORY_ROWS == HISTORY_ROWS and _overlay.LOOKBACK_US == 15 * 60 * 1_000_000
    native.STALE.discard("_overlay")
    try:
        assert native.load("_overlay", "push_window", constants={"HISTORY_ROWS": HISTORY_ROWS + 1}) is None
        assert "_overlay" in native.STALE and "overlay" not in native.in_force()
    finally:
        native.STALE.discard("_overlay")
    assert native.load("_overlay", "push_window", constants={"HISTORY_ROWS": HISTORY_ROWS}) is not None
