"""The optional C accelerators of the hot path, and whether they are in force.

``pip install`` compiles them where a C compiler and the Python headers are at hand
(``setup.py``; the Docker image always has them); each mirrors a piece of Python that stays the
reference -- the same values and bytes, held equal by the tests -- and declines anything but the
plain case, so the reference runs there. Without a compiler the install succeeds without them.
``TASKCLF_DAEMON_NO_NATIVE=1`` in the environment turns them all off (the Python code serves).

* ``_overlay``: the history overlay of a window (``pipeline/features.py``);
* ``_output``: the output records' splice and timestamps (``pipeline/output.py``);
* ``_timestamps``: the usual input timestamp, ``YYYY-MM-DDTHH:MM:SSZ`` (``timeutil.py``);
* ``_matrix``: the model input matrix of a batch (``pipeline/matrix.py``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

MODULES = ("_overlay", "_output", "_timestamps", "_matrix")
#: ``TASKCLF_DAEMON_NO_NATIVE`` set (not empty, not ``0``): every accelerator off
DISABLED = os.environ.get("TASKCLF_DAEMON_NO_NATIVE", "") not in ("", "0")
#: accelerators left out because they were compiled with other constants than the Python code
STALE: set[str] = set()


def load(module: str, *names: str, constants: Mapping[str, int] | None = None) -> tuple[Any, ...] | None:
    """The functions ``names`` of the accelerator ``module``; None when it is not built, off, or
    was compiled with other ``constants`` than the Python code's (a stale build of an older
    source: the Python code serves, and :data:`STALE` names it)."""
    if DISABLED:
        return None
    try:
        mod = importlib.import_module(f"taskclf_daemon.{module}")
    except ImportError:  # not built: no compiler at install time
        return None
    for k, v in (constants or {}).items():
        if getattr(mod, k, None) != v:
            STALE.add(module)
            return None
    return tuple(getattr(mod, n) for n in names)


def in_force() -> list[str]:
    """The accelerators that serve in this process (for the start-up log line)."""
    return [m.lstrip("_") for m in MODULES if m not in STALE and load(m) is not None]
