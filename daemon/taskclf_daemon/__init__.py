"""taskclf-daemon: streaming online inference for taskclf task-type models."""

__version__ = "0.1.0"
