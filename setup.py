"""The optional C accelerators of the hot path (``daemon/taskclf_daemon/native.py`` lists them).

Everything else is configured in pyproject.toml. ``optional=True``: where no C compiler or Python
headers are at hand the install still succeeds, without them, and the Python code they mirror
(the reference: the same values and bytes, tests/pipeline/test_overlay_native.py and
tests/pipeline/test_output.py) serves instead.
"""

from setuptools import Extension, setup

# IEEE doubles as Python computes them: no fused multiply-add, no fast-math
FLAGS = ["-O2", "-ffp-contract=off", "-fno-fast-math"]

setup(
    ext_modules=[
        Extension(f"taskclf_daemon.{name}", [f"daemon/taskclf_daemon/{name}.c"], extra_compile_args=FLAGS, optional=True)
        for name in ("_overlay", "_output", "_timestamps", "_matrix")
    ]
)
