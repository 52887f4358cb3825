"""The command line, end to end in-process: replay against the taskclf golden, errors, train/calibrate."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pytest

from fixtures_daemon import GOLDEN, compare_files
from golden_fixture import golden_home
from taskclf_daemon.cli import main

POLICY = GOLDEN / "models" / "inference_policy.json"
INPUTS = GOLDEN / "inputs.jsonl"
BUNDLE = GOLDEN / "models" / "2026-04-06_000000_run-0001"
N_GOLDEN = 3030
#: README: the golden match is to 2.2e-16, not the compare tool's default 1e-5
TOL = ("--tol", "1e-12")


@pytest.fixture(autouse=True)
def _golden_present() -> None:
    assert golden_home() == GOLDEN and INPUTS.is_file() and POLICY.is_file(), f"golden fixture missing at {GOLDEN}"


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        return [json.loads(ln) for ln in f if ln.strip()]


def summary_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if re.match(r"^replay: \d+ lines", ln)]
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------- golden replay


def test_replay_golden_w3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    rc = main(["replay", "--policy", str(POLICY), "--input", str(INPUTS), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert len(read_jsonl(out)) == N_GOLDEN
    assert f"replay: {N_GOLDEN} lines, {N_GOLDEN} predicted, 0 bad (none)" in summary_line(err)
    assert compare_files(GOLDEN / "expected_w3.jsonl", out, *TOL) == 0
    # the check is able to fail: the w5 golden differs from a w3 run
    assert compare_files(GOLDEN / "expected_w5.jsonl", out) != 0


def test_replay_golden_w5(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out5.jsonl"
    rc = main(["replay", "--policy", str(POLICY), "--input", str(INPUTS), "--output", str(out), "--smooth-window", "5"])
    assert rc == 0, capsys.readouterr().err
    assert compare_files(GOLDEN / "expected_w5.jsonl", out, *TOL) == 0


def test_replay_gzip_in_and_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gz_in = tmp_path / "inputs.jsonl.gz"
    gz_in.write_bytes(gzip.compress(INPUTS.read_bytes()))
    gz_out = tmp_path / "sub" / "out.jsonl.gz"
    rc = main(["replay", "--policy", str(POLICY), "--input", str(gz_in), "--output", str(gz_out), "--batch-size", "97"])
    assert rc == 0, capsys.readouterr().err
    raw = gz_out.read_bytes()
    assert raw[:2] == b"\x1f\x8b", "output .gz must be gzip-compressed"
    assert len(gzip.decompress(raw).splitlines()) == N_GOLDEN
    assert compare_files(GOLDEN / "expected_w3.jsonl", gz_out, *TOL) == 0


def test_replay_reports_bad_lines_and_keeps_good_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = INPUTS.read_bytes().splitlines()
    assert len(good) == N_GOLDEN
    row = json.loads(good[4])
    missing = {k: v for k, v in row.items() if k != "user_id"}
    raw_field = {**json.loads(good[9]), "raw_window_title": "secret.docx - Word"}
    bad = {
        3: (b'{"user_id": "u1", "bucket_start_ts": ', "invalid_json"),
        8: (json.dumps(missing).encode(), "missing_field"),
        15: (json.dumps(raw_field).encode(), "privacy_raw_field"),
    }
    # insert the bad lines as *extra* lines among the first 20 (every golden row stays)
    lines: list[bytes] = []
    expected_bad: dict[int, str] = {}
    gi = 0
    while gi < len(good):
        idx = len(lines)  # 0-based position of the next line
        if idx in bad:
            lines.append(bad[idx][0])
            expected_bad[idx + 1] = bad[idx][1]
        else:
            lines.append(good[gi])
            gi += 1
    assert sorted(expected_bad) == [4, 9, 16]
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"

    rc = main(["replay", "--policy", str(POLICY), "--input", str(src), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err

    reported = {}
    for ln in err.splitlines():
        m = re.match(rf"^{re.escape(str(src))}:(\d+): (\w+): (.+)$", ln)
        if m:
            reported[int(m.group(1))] = (m.group(2), m.group(3))
    assert {n: r for n, (r, _) in reported.items()} == expected_bad, err
    assert "'user_id'" in reported[9][1]
    assert "raw_window_title" in reported[16][1]

    summ = summary_line(err)
    assert f"{N_GOLDEN + 3} lines, {N_GOLDEN} predicted, 3 bad" in summ, summ
    assert "invalid_json=1" in summ and "missing_field=1" in summ and "privacy_raw_field=1" in summ

    assert len(read_jsonl(out)) == N_GOLDEN
    assert compare_files(GOLDEN / "expected_w3.jsonl", out, *TOL) == 0


def test_tampered_bundle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / BUNDLE.name
    shutil.copytree(BUNDLE, bundle)
    meta_path = bundle / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["schema_hash"] = "000000000000"
    meta_path.write_text(json.dumps(meta))
    out = tmp_path / "out.jsonl"
    rc = main(["replay", "--model-dir", str(bundle), "--input", str(INPUTS), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "taskclf-daemon replay: error:" in err
    assert "metadata.json" in err and "schema_hash" in err
    assert "000000000000" in err


def test_reject_threshold_out_of_range_is_an_argparse_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["replay", "--policy", str(POLICY), "--reject-threshold", "2", "--input", str(INPUTS), "--output", str(tmp_path / "o.jsonl")])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "--reject-threshold" in err and "outside [0, 1]" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_reject_threshold_none_rejects_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    golden_rejected = sum(r["is_rejected"] for r in read_jsonl(GOLDEN / "expected_w3.jsonl"))
    assert golden_rejected > 0  # with the policy's 0.55 some rows are rejected
    out = tmp_path / "out.jsonl"
    rc = main(["replay", "--policy", str(POLICY), "--reject-threshold", "none", "--input", str(INPUTS), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    recs = read_jsonl(out)
    assert len(recs) == N_GOLDEN
    assert not any(r["is_rejected"] for r in recs)
    assert "reject rate 0.0000" in summary_line(err)


# --------------------------------------------------------------------------- train / calibrate / replay


def test_train_calibrate_replay_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from taskclf_daemon.offline.synthetic import iter_stream

    models = tmp_path / "models"
    rc = main(["train", "--synthetic", "--seed", "1", "--users", "4", "--days", "4", "--rounds", "10", "--out", str(models)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    bundle = Path(cap.out.strip().splitlines()[-1])
    assert bundle.parent == models and (bundle / "model.txt").is_file() and (bundle / "metadata.json").is_file()
    assert "train: wrote" in cap.err

    store = tmp_path / "store"
    rc = main(["calibrate", "--model-dir", str(bundle), "--synthetic", "--seed", "1", "--users", "4", "--days", "4", "--out", str(store)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert (store / "store.json").is_file() and (store / "global.json").is_file()

    rows = list(iter_stream(seed=1, n_users=4, minutes=30))
    assert len(rows) == 120
    src = tmp_path / "stream.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pred.jsonl"
    rc = main(["replay", "--model-dir", str(bundle), "--calibrator-store", str(store), "--input", str(src), "--output", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert f"replay: {len(rows)} lines, {len(rows)} predicted, 0 bad" in summary_line(cap.err)

    recs = read_jsonl(out)
    assert len(recs) == len(rows)
    for r, row in zip(recs, rows):
        assert (r["user_id"], r["bucket_start_ts"]) == (row["user_id"], row["bucket_start_ts"])
        probs = r["core_probs"]
        assert len(probs) == 8
        assert all(0.0 <= p <= 1.0 for p in probs)
        assert abs(sum(probs) - 1.0) <= 1e-4, probs

    # the values: the same replay without the store gives the raw probabilities; each record is
    # the user's calibrator (or the global one) applied to them, then taskclf's reject rule
    import numpy as np

    from taskclf_daemon.labels import LABELS, MIXED_UNKNOWN
    from taskclf_daemon.pipeline.calibration import CalibratorStore
    from taskclf_daemon.pipeline.model import ModelBundle

    raw_out = tmp_path / "raw.jsonl"
    rc = main(["replay", "--model-dir", str(bundle), "--input", str(src), "--output", str(raw_out)])
    assert rc == 0, capsys.readouterr().err
    raws = read_jsonl(raw_out)
    cal_store = CalibratorStore.load(store)
    b = ModelBundle.load(bundle)
    assert (cal_store.model_schema_hash, cal_store.model_bundle_id) == (b.schema_hash, b.bundle_id)
    assert cal_store.user_ids and cal_store.method == "temperature"
    changed = 0
    for r, raw in zip(recs, raws):
        assert raw["calibrator_scope"] == "none"
        assert r["calibrator_scope"] == ("user" if r["user_id"] in cal_store.user_ids else "global")
        cal, _scope = cal_store.get(r["user_id"])
        want = cal.apply(np.array([[raw["mapped_probs"][k] for k in LABELS]]))[0]
        got = np.array([r["mapped_probs"][k] for k in LABELS])
        assert np.max(np.abs(got - want)) <= 1e-12
        assert r["core_probs"] == np.round(want, 6).tolist()
        assert r["confidence"] == max(r["core_probs"])
        assert r["core_label_name"] == LABELS[int(np.argmax(want))]
        assert r["is_rejected"] == bool(want.max() < 0.55)
        assert r["mapped_label_name"] == (MIXED_UNKNOWN if r["is_rejected"] else r["core_label_name"])  # window 3
        changed += r["mapped_probs"] != raw["mapped_probs"]
    assert {r["calibrator_scope"] for r in recs} >= {"user"}
    assert changed > len(recs) // 2  # the fitted temperatures are not 1
    assert len({r["core_label_name"] for r in recs}) >= 2
