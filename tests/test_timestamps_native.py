"""The C timestamp parser (``taskclf_daemon._timestamps.parse_utc``) against ``parse_ts_us``.

It reads exactly ``YYYY-MM-DDTHH:MM:SSZ`` in 1970..2199 and must give the Python parser's
microseconds for every such string; for anything else it must answer None (then the Python
parser accepts or refuses, as always) -- never a value the Python parser would not give.
"""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given, settings, strategies as st

from taskclf_daemon import timeutil
from taskclf_daemon.timeutil import MAX_TS_US, format_ts_us, parse_ts_us

try:
    from taskclf_daemon._timestamps import parse_utc
except ImportError:  # pragma: no cover - the install builds it wherever a C compiler is at hand
    pytest.fail("taskclf_daemon._timestamps is not built: `pip install -e .` compiles it (needs gcc and the Python headers)")


def _python(s: str) -> int | None:
    """parse_ts_us without the C parser: the reference (None where it refuses)."""
    keep = timeutil.NATIVE_PARSE
    timeutil.NATIVE_PARSE = None
    try:
        return parse_ts_us(s)
    except ValueError:
        return None
    finally:
        timeutil.NATIVE_PARSE = keep


def test_every_day_and_random_times_of_the_range() -> None:
    rnd = random.Random(11)
    day = dt.date(1970, 1, 1)
    n = 0
    while day.year < 2200:  # every date of the range, each at a random time of day
        s = f"{day.isoformat()}T{rnd.randrange(24):02d}:{rnd.randrange(60):02d}:{rnd.randrange(60):02d}Z"
        assert parse_utc(s) == _python(s) is not None, s
        day += dt.timedelta(days=1)
        n += 1
    assert n == 84_006
    for s in ("1970-01-01T00:00:00Z", "2199-12-31T23:59:59Z", "2000-02-29T12:00:00Z", "2024-02-29T00:00:00Z"):
        assert parse_utc(s) == _python(s) is not None
    assert parse_utc(format_ts_us(MAX_TS_US - 1_000_000)) == MAX_TS_US - 1_000_000


@pytest.mark.parametrize(
    "s",
    [
        "1969-12-31T23:59:59Z", "2200-01-01T00:00:00Z", "0000-01-01T00:00:00Z", "1900-02-29T00:00:00Z",
        "2023-02-29T00:00:00Z", "2026-02-30T00:00:00Z", "2026-04-31T00:00:00Z", "2026-13-01T00:00:00Z",
        "2026-00-10T00:00:00Z", "2026-01-00T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T00:60:00Z",
        "2026-01-01T00:00:60Z", "2026-01-01t00:00:00Z", "2026-01-01T00:00:00z", "2026-01-01 00:00:00Z",
        "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00.5Z", "2026-01-01T00:00:00", " 2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00Z ", "2026/01/01T00:00:00Z", "2026-01-01T00:00:0\u0661Z", "２026-01-01T00:00:00Z",
        "-026-01-01T00:00:00Z", "+026-01-01T00:00:00Z", "2026-1-01T00:00:00ZZ", "",
    ],
)
def test_other_forms_are_left_to_the_python_parser(s: str) -> None:
    assert parse_utc(s) is None
    # and through parse_ts_us the Python parser's answer stands
    want = _python(s)
    if want is None:
        with pytest.raises(ValueError):
            parse_ts_us(s)
    else:
        assert parse_ts_us(s) == want


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="0123456789-T:Z+. zt", min_size=18, max_size=22))
def test_any_string_of_timestamp_characters(s: str) -> None:
    got = parse_utc(s)
    assert got is None or got == _python(s)


def test_parse_ts_us_uses_it() -> None:
    assert timeutil.NATIVE_PARSE is parse_utc or timeutil.native.DISABLED
