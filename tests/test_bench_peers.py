"""``scripts/bench_peers.py`` and its peer jobs, without a broker: the result line, the argument
checks, the ``na`` path when a framework is not installed, the plot, and the peers' state
hand-over (state as bytes between micro-batches gives the replay's values)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest

from golden_fixture import golden_home

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


sys.path[:0] = [str(SCRIPTS), str(SCRIPTS / "peers")]
import faststream_job  # noqa: E402  (FastStream itself is imported only when the job runs)
import peerlib  # noqa: E402

import bench_peers  # noqa: E402
import bench_plot  # noqa: E402
import bench_verify  # noqa: E402


def test_result_line_names_every_system_and_the_ratio_to_the_fastest_peer() -> None:
    eps = {"daemon": 31800.4, "passthrough": 78600.0, "faststream": 12000.0, "faust": 3100.0, "quix": 4100.6}
    assert bench_peers.peers_line(eps) == (
        "peers: daemon_eps=31800 faststream_eps=12000 faust_eps=3100 quix_eps=4101 passthrough_eps=78600 best_peer_ratio=2.65")
    assert bench_peers.best_peer_ratio(eps) == pytest.approx(31800.4 / 12000.0)


def test_a_system_that_did_not_run_prints_na() -> None:
    eps = {"daemon": 20000.0, "passthrough": 80000.0, "faststream": None, "faust": 2500.0, "quix": None}
    assert bench_peers.peers_line(eps) == "peers: daemon_eps=20000 faststream_eps=na faust_eps=2500 quix_eps=na passthrough_eps=80000 best_peer_ratio=8.00"
    assert bench_peers.peers_line({"daemon": 20000.0}) == "peers: daemon_eps=20000 faststream_eps=na faust_eps=na quix_eps=na passthrough_eps=na best_peer_ratio=na"
    assert bench_peers.peers_line({}) == "peers: daemon_eps=na faststream_eps=na faust_eps=na quix_eps=na passthrough_eps=na best_peer_ratio=na"


def test_arguments_defaults_quick_and_system_checks() -> None:
    a = bench_peers.parse_args([])
    assert (a.records, a.users, a.rounds, a.partitions, a.model_backend) == (100_000, 1000, 2, 4, "lleaves")
    assert a.systems == ["daemon", "passthrough", "faststream", "faust", "quix"]
    q = bench_peers.parse_args(["--quick", "--systems", "quix, daemon,quix", "--model-backend", "lightgbm"])
    assert (q.records, q.users, q.rounds, q.systems, q.model_backend) == (3000, 100, 1, ["quix", "daemon"], "lightgbm")
    for bad in (["--systems", "daemon,flink"], ["--systems", ","], ["--rounds", "0"], ["--records", "0"]):
        with pytest.raises(SystemExit) as exc:
            bench_peers.parse_args(bad)
        assert exc.value.code == 2


def test_missing_frameworks_are_split_off_in_order() -> None:
    installed = {"faststream": True, "faust": False, "quix": False}
    run, missing = bench_peers.split_installed(["quix", "daemon", "faust", "faststream", "passthrough"], lambda p: installed[p])
    assert (run, missing) == (["daemon", "faststream", "passthrough"], ["quix", "faust"])
    hint = bench_peers.missing_hint(missing)
    assert "quix (quixstreams)" in hint and "faust (faust)" in hint and "[bench]" in hint


def test_without_the_extra_the_script_prints_na_and_says_what_to_install(tmp_path: Path) -> None:
    # a sitecustomize that hides the frameworks, as in an environment without the bench extra
    (tmp_path / "sitecustomize.py").write_text(
        "import importlib.util as u\n_real = u.find_spec\n"
        "u.find_spec = lambda name, *a, **k: None if name in ('faststream', 'faust', 'quixstreams') else _real(name, *a, **k)\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{REPO / 'daemon'}:{REPO / 'tests'}"}
    proc = subprocess.run([sys.executable, str(SCRIPTS / "bench_peers.py"), "--systems", "faststream,faust,quix"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "peers: daemon_eps=na faststream_eps=na faust_eps=na quix_eps=na passthrough_eps=na best_peer_ratio=na"
    assert "faststream (faststream), faust (faust), quix (quixstreams)" in proc.stderr and "pip install 'taskclf-daemon[bench]'" in proc.stderr
    assert "started Tansu" not in proc.stderr  # nothing to run: no broker started


def test_plot_has_one_bar_per_system_that_ran_to_scale() -> None:
    res = {"workload": {"records": 100000, "users": 1000}, "runs": {"daemon": [{}, {}], "faust": [{}, {}]},
           "summary": {"daemon_eps": 30000, "passthrough_eps": 60000, "faststream_eps": None, "faust_eps": 3000, "quix_eps": None,
                       "best_peer_ratio": 10.0, "contended_phases": ["faust1"]}}
    root = ET.fromstring(bench_plot.render_peers_svg(res))
    svg = "{http://www.w3.org/2000/svg}"
    bars = [r for r in root.iter(f"{svg}rect") if r.get("fill") in bench_plot.PEER_COLORS.values()]
    full = bench_plot.PANEL_BOTTOM - bench_plot.PANEL_TOP
    assert [round(float(r.get("height")), 1) for r in bars] == [round(full * v / 60000, 1) for v in (60000, 30000, 3000)]
    assert [r.get("fill") for r in bars] == [bench_plot.PEER_COLORS[n] for n in ("passthrough", "daemon", "faust")]
    text = " ".join(t.text or "" for t in root.iter(f"{svg}text"))
    assert "60,000" in text and "3,000" in text and "daemon / fastest peer = 10.0" in text and "contended: 1 of 4 drains" in text


def test_output_partition_is_kafkas_default_partitioner() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    parts = list(range(4))
    keys = [f"user-{i}".encode() for i in range(200)]
    assert [faststream_job.output_partition(k, 4) for k in keys] == [DefaultPartitioner()(k, parts, parts) for k in keys]
    assert len({faststream_job.output_partition(k, 4) for k in keys}) == 4


def test_state_handed_over_as_bytes_between_batches_gives_the_replay_values(tmp_path: Path) -> None:
    lines = [ln for ln in (golden_home() / "inputs.jsonl").read_bytes().splitlines() if ln.strip()][:300]
    policy = golden_home() / "models" / "inference_policy.json"
    a = peerlib.parse_args("test", ["--bootstrap-servers", "127.0.0.1:9", "--input-topic", "in", "--output-topic", "out", "--group-id", "g",
                            "--expect", str(len(lines)), "--policy", str(policy), "--events", str(tmp_path / "ev")])
    job = peerlib.Job(a)
    want = bench_verify.reference_values(job.settings, [(b"", ln) for ln in lines])
    saved: dict[str, bytes] = {}
    got: dict[tuple[str, str], bytes] = {}
    for i in range(0, len(lines), 7):  # batches of 7: every user's state goes through bytes many times
        windows = job.decode([(None, ln, 0, i + j) for j, ln in enumerate(lines[i:i + 7])], "in")
        for p in job.process_with_bytes(windows, saved.get, saved.__setitem__):
            got[bench_verify.output_key(p.value)] = p.value
    res = bench_verify.compare_values(got, want)
    assert (res["compared"], res["differing"], res["missing"], res["extra"]) == (len(lines), 0, 0, 0)
    assert len(saved) == len({orjson.loads(ln)["user_id"] for ln in lines}) > 1
    assert job.count(len(lines) - 1) is False and job.count(1) is True and job.count(5) is False  # 'drained' once
