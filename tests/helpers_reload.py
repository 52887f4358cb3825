"""A writable taskclf home for hot-reload tests: the golden bundle, store and policy, plus a
second bundle with the same schema hash and label set (a small synthetic training, ~0.2 s)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from golden_fixture import golden_home
from taskclf_daemon.offline.synthetic import generate_labelled
from taskclf_daemon.offline.train import train_bundle

GOLDEN_RUN = "2026-04-06_000000_run-0001"
#: the second bundle's directory name (its bundle id)
NEW_RUN = "2026-05-01_000000_run-0002"


def make_home(root: Path) -> Path:
    """``root/home`` with ``models/<golden run>``, ``artifacts/calibrator_store`` and
    ``models/inference_policy.json`` (the golden policy), and ``models/<NEW_RUN>`` (trained)."""
    golden = golden_home()
    home = root / "home"
    shutil.copytree(golden / "models", home / "models")
    shutil.copytree(golden / "artifacts", home / "artifacts")
    scratch = root / "train"
    trained = train_bundle(generate_labelled(seed=3, n_users=4, days=2), scratch / "models", seed=3, num_boost_round=10, data_provenance="synthetic")
    shutil.copytree(trained, home / "models" / NEW_RUN)
    shutil.rmtree(scratch)
    return home


def policy_path(home: Path) -> Path:
    return home / "models" / "inference_policy.json"


def write_policy(home: Path, **changes: Any) -> Path:
    """Rewrite the policy atomically (as taskclf does: temp file + rename), with ``changes``
    (e.g. ``model_dir="models/<run>"``, ``calibrator_store_dir=None``) over the golden one."""
    p = policy_path(home)
    pol = json.loads((golden_home() / "models" / "inference_policy.json").read_text())
    pol.update(changes)
    tmp = p.with_name(".inference_policy.json.tmp")
    tmp.write_text(json.dumps(pol, indent=2))
    os.replace(tmp, p)
    return p


def broken_bundle(home: Path, name: str = "2026-05-02_000000_run-0003") -> str:
    """A copy of the new bundle whose model.txt is not a LightGBM model; returns its model_dir."""
    d = home / "models" / name
    shutil.copytree(home / "models" / NEW_RUN, d)
    (d / "model.txt").write_text("this is not a model\n")
    return f"models/{name}"
