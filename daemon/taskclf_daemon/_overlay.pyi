from typing import Any

def push_window(state: Any, window: Any, idle_gap_seconds: float, /) -> Any: ...

HISTORY_ROWS: int
ROLLING_SHORT: int
ROLLING_LONG: int
LOOKBACK_US: int
