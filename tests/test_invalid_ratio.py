"""The invalid-ratio guard of the daemon (a flood of bad input stops it loudly)."""

from taskclf_daemon.daemon import _InvalidRatio


def test_ratio_is_over_the_last_window_records_only():
    g = _InvalidRatio(window=10, limit=0.5)
    g.add_batch(4, [0, 1, 2, 3])
    assert g.ratio == 1.0 and not g.exceeded()  # fewer than `window` records seen: no verdict
    g.add_batch(6, [5])
    assert g.ratio == 0.5 and not g.exceeded()  # 5 of 10: not above the limit
    g.add_batch(3, [0, 1])
    # the first 3 (all bad) fell out; window = 1 bad + 5 good + 1 bad ... = 4 of 10
    assert g.ratio == 0.4
    g.add_batch(10, list(range(6)))
    assert g.ratio == 0.6 and g.exceeded()
    assert not _InvalidRatio(window=10, limit=1.0).exceeded()
