"""Offline tools around the daemon: synthetic data, LightGBM training, calibration, replay.

Everything here writes artifacts in taskclf's own formats (model bundle, calibrator store,
inference policy), so that bundles trained here load in taskclf and vice versa.
"""
