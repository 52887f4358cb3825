"""The optional C accelerator of the history overlay (``taskclf_daemon._overlay``).

Everything else is configured in pyproject.toml. ``optional=True``: where no C compiler or Python
headers are at hand the install still succeeds, without the extension, and the pure-Python
overlay (the reference: same floats, tests/test_overlay_native.py) serves instead.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "taskclf_daemon._overlay",
            ["daemon/taskclf_daemon/_overlay.c"],
            # IEEE doubles as Python computes them: no fused multiply-add, no fast-math
            extra_compile_args=["-O2", "-ffp-contract=off", "-fno-fast-math"],
            optional=True,
        )
    ]
)
