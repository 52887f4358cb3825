"""Secrets read from mounted files, as Kubernetes and Docker provide them.

``sasl_password_file = "/var/run/secrets/kafka/sasl-password"`` sets ``sasl_password`` to that
file's content when the settings are loaded. The file is read once, at start; one trailing line
break (``echo``, ``kubectl create secret --from-file`` of such a file) is not part of the secret.
The value is then an ordinary secret setting: masked (``***``) in the start-up config dump, never
echoed by an error message. The file's path is not secret and is shown.

A new ``<key>_file`` setting is one row in :data:`SECRET_FILES` (and its row in config.KEYS).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from taskclf_daemon.errors import ConfigError

#: ``<key>_file`` setting -> the secret setting it fills
SECRET_FILES: dict[str, str] = {
    "sasl_password_file": "sasl_password",
    "ssl_password_file": "ssl_password",
    "http_auth_token_file": "http_auth_token",
}

#: a password file larger than this is the wrong file (a certificate bundle, a log...)
MAX_SECRET_BYTES = 64 * 1024


def read_secret_file(file_key: str, path: str, source: str | None = None) -> str:
    """The secret held by ``path``; :class:`ConfigError` naming ``file_key`` and the fix otherwise."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_SECRET_BYTES:
            raise ConfigError(file_key, f"{p} is larger than {MAX_SECRET_BYTES} bytes: not a password file", f"point {file_key} at the file holding only the secret", source)
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(file_key, f"file {p} does not exist", f"mount the secret at {p} (Kubernetes: a secret volume; Docker: a secret or a read-only volume) or fix {file_key}", source) from None
    except IsADirectoryError:
        raise ConfigError(file_key, f"{p} is a directory", f"point {file_key} at the file inside it that holds the secret (a secret volume holds one file per key)", source) from None
    except PermissionError:
        raise ConfigError(file_key, f"{p} is not readable by this process (uid {os.getuid()})", "let the daemon's user read it (Kubernetes: defaultMode / fsGroup of the secret volume)", source) from None
    except OSError as exc:
        raise ConfigError(file_key, f"cannot read {p}: {exc.strerror or type(exc).__name__}", f"check the mount of {p}", source) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(file_key, f"{p} is not UTF-8 text", f"store the secret as UTF-8 text in {p}", source) from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text.strip():
        raise ConfigError(file_key, f"{p} is empty", f"write the secret into {p} (one trailing line break is ignored)", source)
    return text


def resolve_secret_files(values: MutableMapping[str, Any], sources: MutableMapping[str, str]) -> None:
    """Fill each secret setting from its ``<key>_file`` setting, in place; both set is an error."""
    for file_key, key in SECRET_FILES.items():
        path = values.get(file_key)
        if path is None:
            continue
        src = sources.get(file_key)
        if values.get(key) is not None:
            raise ConfigError(
                file_key,
                f"both {key} (from {sources.get(key)}) and {file_key} are set",
                f"set only one: keep {file_key} (the mounted secret) and remove {key}, or the reverse",
                src,
            )
        values[key] = read_secret_file(file_key, path, src)
        sources[key] = f"{file_key} {path}"
