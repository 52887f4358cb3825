"""The taskclf golden fixture, kept in the repository: nothing outside the checkout is read.

The fixture lives in ``tests/fixtures/golden/taskclf-v1-temperature/`` with its five JSONL files
xz-compressed (see ``PROVENANCE.md`` there). Tests, the ``replay`` CLI and the daemon need a
directory of plain files (the inference policy names the model bundle and the calibrator store
by paths relative to its ``TASKCLF_HOME``), so :func:`golden_home` decompresses the fixture once
into a directory under the system temp dir whose name is derived from the fixture's
``manifest.json``, and checks every file against the manifest's sha256 sums (once per process).
The directory is built aside and renamed into place, so concurrent test runs never see half of it.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import tempfile
from pathlib import Path

NAME = "taskclf-v1-temperature"
#: the fixture as stored in the repository (JSONL files compressed)
SOURCE_DIR = Path(__file__).resolve().parent / "fixtures" / "golden" / NAME
#: files copied beside the manifest's files (they are not listed in it)
_EXTRA_FILES = ("manifest.json", "README.md", "PROVENANCE.md")


def _manifest_bytes() -> bytes:
    return (SOURCE_DIR / "manifest.json").read_bytes()


def _manifest_files() -> dict[str, dict[str, object]]:
    files: dict[str, dict[str, object]] = json.loads(_manifest_bytes())["files"]
    return files


def _cache_root() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"taskclf-daemon-golden-{uid}"


#: the plain-file copy the tests use (created by :func:`golden_home`)
GOLDEN_DIR = _cache_root() / f"{NAME}-{hashlib.sha256(_manifest_bytes()).hexdigest()[:12]}"


def source_bytes(name: str) -> bytes:
    """The original bytes of a fixture file (``inputs.jsonl``, ``models/...``), decompressed."""
    plain = SOURCE_DIR / name
    if plain.is_file():
        return plain.read_bytes()
    return lzma.decompress((SOURCE_DIR / f"{name}.xz").read_bytes())


def _problems(root: Path) -> list[str]:
    """What is wrong with a plain copy of the fixture at ``root`` (empty = good)."""
    bad: list[str] = []
    for name, meta in _manifest_files().items():
        path = root / name
        if not path.is_file():
            bad.append(f"{name}: missing")
            continue
        data = path.read_bytes()
        if len(data) != meta["bytes"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            bad.append(f"{name}: content differs from manifest.json (sha256 {hashlib.sha256(data).hexdigest()})")
    return bad


def materialize(dest: Path) -> Path:
    """Write a plain copy of the fixture to ``dest`` (must not exist) and verify it."""
    for name in _manifest_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source_bytes(name))
    for name in _EXTRA_FILES:
        shutil.copyfile(SOURCE_DIR / name, dest / name)
    bad = _problems(dest)
    if bad:
        raise AssertionError(f"golden fixture in {SOURCE_DIR} does not match its manifest.json: {bad}")
    return dest


_verified = False


def golden_home() -> Path:
    """The plain, verified golden fixture directory (created on first use)."""
    global _verified
    if _verified and GOLDEN_DIR.is_dir():
        return GOLDEN_DIR
    if GOLDEN_DIR.is_dir() and _problems(GOLDEN_DIR):
        shutil.rmtree(GOLDEN_DIR, ignore_errors=True)  # damaged or stale: build it again
    if not GOLDEN_DIR.is_dir():
        GOLDEN_DIR.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=GOLDEN_DIR.parent))
        try:
            materialize(staging)
            os.rename(staging, GOLDEN_DIR)
        except OSError:
            if not GOLDEN_DIR.is_dir():  # not a lost race with another run: a real error
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    bad = _problems(GOLDEN_DIR)
    if bad:
        raise AssertionError(f"golden fixture copy at {GOLDEN_DIR} is damaged: {bad}")
    _verified = True
    return GOLDEN_DIR
