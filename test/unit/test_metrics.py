"""Tests for ace_ros.core.metrics: accuracy percentages, medians and timing means."""

from __future__ import annotations

import math
import re

from ace_ros.core.metrics import format_table, summarize
import pytest

INF = math.inf
# (translation m, rotation deg), chosen to sit on both sides of every threshold.
ERRORS = [
    (0.005, 0.5),   # within all four
    (0.010, 1.0),   # within all four (thresholds are inclusive)
    (0.015, 1.5),   # 2cm/2deg and up
    (0.030, 3.0),   # 5cm/5deg and up
    (0.080, 4.0),   # 10cm/5deg only
    (0.050, 6.0),   # rotation too large for every threshold
    (0.200, 1.0),   # translation too large for every threshold
    (INF, INF),     # failed
]


def test_summarize_percentages_and_medians():
    s = summarize(ERRORS, [])
    assert s['n_frames'] == 8
    assert s['n_failed'] == 1
    assert s['pct_10cm_5deg'] == pytest.approx(100 * 5 / 8)
    assert s['pct_5cm_5deg'] == pytest.approx(100 * 4 / 8)
    assert s['pct_2cm_2deg'] == pytest.approx(100 * 3 / 8)
    assert s['pct_1cm_1deg'] == pytest.approx(100 * 2 / 8)
    # sorted t: .005 .010 .015 .030 .050 .080 .200 inf -> (0.030 + 0.050) / 2 m
    assert s['median_t_cm'] == pytest.approx(4.0)
    # sorted r: 0.5 1 1 1.5 3 4 6 inf -> (1.5 + 3) / 2
    assert s['median_r_deg'] == pytest.approx(2.25)


def test_failures_count_as_infinitely_wrong():
    s = summarize([(0.01, 1.0), (INF, INF), (INF, INF)], [])
    assert s['n_failed'] == 2
    assert s['pct_10cm_5deg'] == pytest.approx(100 / 3)
    assert s['median_t_cm'] == INF and s['median_r_deg'] == INF
    s = summarize([(0.01, 1.0), (0.03, 2.0), (INF, INF)], [])
    assert s['median_t_cm'] == pytest.approx(3.0)
    assert s['median_r_deg'] == pytest.approx(2.0)


def test_odd_count_median_is_the_middle_value():
    s = summarize([(0.3, 7.0), (0.1, 5.0), (0.2, 9.0)], [])
    assert s['median_t_cm'] == pytest.approx(20.0)
    assert s['median_r_deg'] == pytest.approx(7.0)
    assert s['pct_10cm_5deg'] == pytest.approx(100 / 3)


def test_timing_means():
    timings = [{'prepare': 1.0, 'encoder': 10.0, 'head': 4.0, 'ransac': 5.0, 'total': 20.0},
               {'prepare': 3.0, 'encoder': 30.0, 'head': 2.0, 'ransac': 15.0, 'total': 50.0}]
    s = summarize([(0.0, 0.0), (0.0, 0.0)], iter(timings))
    assert s['ms_per_frame'] == pytest.approx(35.0)
    assert (s['prepare_ms'], s['encoder_ms'], s['head_ms'], s['ransac_ms']) == \
        pytest.approx((2.0, 20.0, 3.0, 10.0))


def test_empty_inputs_give_nan():
    s = summarize([], [])
    assert s['n_frames'] == 0 and s['n_failed'] == 0
    for key in ('pct_10cm_5deg', 'pct_1cm_1deg', 'median_t_cm', 'median_r_deg',
                'ms_per_frame', 'encoder_ms'):
        assert math.isnan(s[key]), key


def test_format_table():
    timings = [{'prepare': 1.0, 'encoder': 10.0, 'head': 4.0, 'ransac': 5.0, 'total': 20.0}]
    text = format_table(summarize(ERRORS, timings * 8))
    assert '8 (1 failed)' in text
    assert re.search(r'^10cm / 5deg +62\.5 %$', text, re.MULTILINE)
    assert re.search(r'^1cm / 1deg +25\.0 %$', text, re.MULTILINE)
    assert '4.0 cm, 2.25 deg' in text
    assert '20.0 ms (prepare 1.0, encoder 10.0, head 4.0, ransac 5.0)' in text
