"""Compatibility alias: ``helpers_rows.TOOLS_DIR / "compare.py"`` (the comparison tool that used to live outside the repo).

The comparison now lives in ``tests/golden_compare.py`` (same ``main(argv)`` command line:
``--expected``, ``--actual``, ``--mode``, ``--tol``, ``--fail-on-extra``, ``--strict-meta``). Prefer
``golden_compare.compare(...)``, which returns a report.
"""

from golden_compare import main

__all__ = ["main"]
