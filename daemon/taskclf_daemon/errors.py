"""One exception tree for the whole daemon.

* :class:`InvalidRecord` -- one input record is bad; it is dead-lettered, never fatal.
* :class:`ArtifactError` / :class:`ConfigError` -- a file or setting is bad; fail fast at start-up
  with a message naming the file, the field and the fix.
"""

from __future__ import annotations


class TaskclfDaemonError(Exception):
    """Base of every error raised on purpose by taskclf-daemon."""


class InvalidRecord(TaskclfDaemonError):
    """An input record that cannot be processed.

    :param reason: short machine-readable reason (metric label / DLQ header), e.g. ``missing_field``
    :param detail: human-readable detail naming the field and the problem
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ArtifactError(TaskclfDaemonError):
    """A model bundle, calibrator store, policy or taxonomy file is unusable.

    The message always names the file, the field (when there is one) and the fix.
    """

    def __init__(self, path: object, problem: str, fix: str, field: str | None = None) -> None:
        where = f"{path}" + (f" (field {field!r})" if field else "")
        super().__init__(f"{where}: {problem}. Fix: {fix}")
        self.path = str(path)
        self.field = field
        self.problem = problem
        self.fix = fix


class ConfigError(TaskclfDaemonError):
    """An invalid configuration value (file, env var or flag)."""

    def __init__(self, key: str, problem: str, fix: str, source: str | None = None) -> None:
        where = f"{key}" + (f" (from {source})" if source else "")
        super().__init__(f"config {where}: {problem}. Fix: {fix}")
        self.key = key
        self.problem = problem
        self.fix = fix
        self.source = source
