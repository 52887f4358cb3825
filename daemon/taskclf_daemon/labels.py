"""taskclf's label set and inference defaults (spec section 0 and 2.1).

The model's probability columns are in **alphabetical** order -- taskclf fits its
LabelEncoder on ``sorted(LABEL_SET_V1)`` -- not in the id order of ``labels_v1.json``.
"""

from __future__ import annotations

LABELS: tuple[str, ...] = (
    "BreakIdle",
    "Build",
    "Communicate",
    "Debug",
    "Meet",
    "ReadResearch",
    "Review",
    "Write",
)
N_LABELS = len(LABELS)
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABELS)}

MIXED_UNKNOWN = "Mixed/Unknown"
#: label id used internally (smoothing state) for a rejected window
REJECT_ID = N_LABELS

LABEL_VERSION = "labels_v1"
DEFAULT_REJECT_THRESHOLD = 0.55
DEFAULT_SMOOTH_WINDOW = 3
DEFAULT_BUCKET_SECONDS = 60
DEFAULT_IDLE_GAP_SECONDS = 300.0
HISTORY_ROWS = 15  # OnlineFeatureState capacity: 15 minutes of 60-s buckets
ROLLING_SHORT = 5
ROLLING_LONG = 15
APP_SWITCH_LOOKBACK_SECONDS = 15 * 60

# personalisation eligibility (spec section 4)
MIN_LABELED_WINDOWS = 200
MIN_LABELED_DAYS = 3
MIN_DISTINCT_LABELS = 3
