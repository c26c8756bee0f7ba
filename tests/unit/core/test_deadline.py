from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from airflow_spot_training.core.deadline import DeadlineError, parse_deadline


class TestParseDeadline:
    @pytest.mark.parametrize(
        "value, seconds",
        [("6h", 21600), ("90m", 5400), ("1d12h", 129600), ("2h30m", 9000), ("45s", 45), ("PT6H", 21600),
         ("P1DT1H", 90000), ("3600", 3600), (timedelta(minutes=5), 300), (120, 120)],
    )
    def test_durations(self, value, seconds):
        d = parse_deadline(value)
        assert d.at is None and d.after_seconds == seconds
        assert d.resolve(1000.0) == 1000.0 + seconds

    def test_aware_datetime_and_iso(self):
        when = datetime(2030, 1, 1, 6, tzinfo=timezone.utc)
        assert parse_deadline(when).at == when.timestamp()
        assert parse_deadline("2030-01-01T06:00:00Z").at == when.timestamp()
        assert parse_deadline("2030-01-01T07:00:00+01:00").at == when.timestamp()

    def test_none_means_no_deadline(self):
        assert parse_deadline(None) is None
        assert parse_deadline("") is None

    def test_naive_datetime_is_refused(self):
        with pytest.raises(DeadlineError, match=r"deadline=.* is a naive datetime: give it a timezone"):
            parse_deadline(datetime(2030, 1, 1))

    def test_naive_iso_string_is_refused(self):
        with pytest.raises(DeadlineError, match="naive datetime"):
            parse_deadline("2030-01-01T06:00:00")

    @pytest.mark.parametrize("value", ["soon", "6 hours", [1]])
    def test_garbage_names_the_forms(self, value):
        with pytest.raises(DeadlineError, match=r"deadline=.*(not understood|has type).*'6h'"):
            parse_deadline(value)

    @pytest.mark.parametrize("value", [0, -5, timedelta(0), "0s"])
    def test_non_positive_duration(self, value):
        with pytest.raises(DeadlineError, match="not a positive duration"):
            parse_deadline(value)
