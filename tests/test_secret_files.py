"""``sasl_password_file`` / ``ssl_password_file``: secrets from mounted files, never shown."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from taskclf_daemon.config import KEYS, SECRET_KEYS, load_settings
from taskclf_daemon.errors import ConfigError
from taskclf_daemon.secret_files import MAX_SECRET_BYTES, SECRET_FILES

SECRET = "s3cr3t-Pässword with spaces "  # trailing space and non-ASCII are part of it
PAIRS = sorted(SECRET_FILES.items())


def load(env: dict[str, str], tmp_path: Path, toml: str = "") -> object:
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    return load_settings(cfg, env=env, require_model=False)


def test_table_rows_are_config_keys_in_the_section_of_their_secret() -> None:
    for file_key, key in SECRET_FILES.items():
        assert KEYS[file_key].section == KEYS[key].section and KEYS[file_key].type == "optstr" and KEYS[file_key].default is None
        assert key in SECRET_KEYS
        assert file_key not in SECRET_KEYS  # a path is not a secret: shown in the config dump


@pytest.mark.parametrize(("file_key", "key"), PAIRS)
@pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
def test_secret_is_read_from_the_file(tmp_path: Path, file_key: str, key: str, ending: str) -> None:
    f = tmp_path / "secret"
    f.write_bytes((SECRET + ending).encode())
    s = load({"TASKCLF_" + file_key.upper(): str(f)}, tmp_path)
    assert getattr(s, key) == SECRET  # one trailing line break dropped, nothing else
    assert s.sources[key] == f"{file_key} {f}"
    dump = json.dumps(s.masked())
    assert SECRET.strip() not in dump and s.masked()[key] == "***"
    assert str(f) in dump  # the path is shown


def test_file_key_from_toml_and_only_one_line_break_dropped(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("pw\n\n")
    s = load({}, tmp_path, f'[kafka]\nsasl_password_file = "{f}"\n')
    assert s.sasl_password == "pw\n"


def errors(tmp_path: Path, file_key: str, path: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load({"TASKCLF_" + file_key.upper(): path, **(env or {})}, tmp_path)
    assert ei.value.key == file_key, str(ei.value)
    assert f"env TASKCLF_{file_key.upper()}" in str(ei.value)  # where the path came from
    assert "Fix:" in str(ei.value)
    return ei.value


@pytest.mark.parametrize(("file_key", "key"), PAIRS)
def test_missing_file(tmp_path: Path, file_key: str, key: str) -> None:
    e = errors(tmp_path, file_key, str(tmp_path / "nope"))
    assert "does not exist" in e.problem and "mount" in e.fix


@pytest.mark.parametrize(("file_key", "key"), PAIRS)
def test_directory(tmp_path: Path, file_key: str, key: str) -> None:
    assert "is a directory" in errors(tmp_path, file_key, str(tmp_path)).problem


@pytest.mark.parametrize("content", [b"", b"\n", b"   \n", b"\r\n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "empty"
    f.write_bytes(content)
    assert "is empty" in errors(tmp_path, "sasl_password_file", str(f)).problem


def test_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "bin"
    f.write_bytes(b"\xff\xfe\x00Hidden-Value")
    e = errors(tmp_path, "ssl_password_file", str(f))
    assert "UTF-8" in e.problem and "Hidden-Value" not in str(e)


def test_too_large(tmp_path: Path) -> None:
    f = tmp_path / "big"
    f.write_bytes(b"x" * (MAX_SECRET_BYTES + 1))
    assert "not a password file" in errors(tmp_path, "sasl_password_file", str(f)).problem


def test_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "locked"
    f.write_text(SECRET)
    if os.geteuid() != 0:
        f.chmod(0)
    else:  # root reads anything: simulate the kernel's answer
        def deny(self: Path) -> bytes:
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "read_bytes", deny)
    e = errors(tmp_path, "sasl_password_file", str(f))
    assert "not readable" in e.problem and "defaultMode" in e.fix


@pytest.mark.parametrize(("file_key", "key"), PAIRS)
def test_password_and_file_both_set(tmp_path: Path, file_key: str, key: str) -> None:
    f = tmp_path / "pw"
    f.write_text(SECRET)
    e = errors(tmp_path, file_key, str(f), env={"TASKCLF_" + key.upper(): "other-Secret-value"})
    assert key in e.problem and "set only one" in e.fix
    assert "other-Secret-value" not in str(e) and SECRET not in str(e)


def test_no_file_key_leaves_the_password_alone(tmp_path: Path) -> None:
    s = load({"TASKCLF_SASL_PASSWORD": "direct"}, tmp_path)
    assert s.sasl_password == "direct" and s.sasl_password_file is None
