"""The pure inference pipeline: synchronous, deterministic, free of I/O (artifact loaders aside)."""
