"""Ages as operators type them (prune_jobs) and read them (queue_status)."""

from datetime import timedelta

import pytest

from async_jobs.durations import format_age, parse_age


@pytest.mark.parametrize(
    "text, age",
    [
        ("45", timedelta(seconds=45)),
        ("90s", timedelta(seconds=90)),
        ("90m", timedelta(minutes=90)),
        ("1.5h", timedelta(minutes=90)),
        ("30d", timedelta(days=30)),
        (" 2W ", timedelta(weeks=2)),
        ("never", None),
    ],
)
def test_parse_age(text, age):
    assert parse_age(text) == age


@pytest.mark.parametrize("text", ["", "5x", "-3d", "d", "1e3", "30 days"])
def test_parse_age_refuses_what_is_not_an_age(text):
    with pytest.raises(ValueError, match="is not an age; write a number with a unit"):
        parse_age(text)


@pytest.mark.parametrize(
    "age, text",
    [
        (timedelta(seconds=0.4), "0s"),
        (timedelta(seconds=59), "59s"),
        (timedelta(seconds=65), "1m 05s"),
        (timedelta(hours=2, minutes=3, seconds=40), "2h 03m"),
        (timedelta(days=3, hours=4), "3d 4h"),
        (timedelta(days=30), "30d"),
        (timedelta(seconds=-5), "0s"),
        (None, "never"),
    ],
)
def test_format_age(age, text):
    assert format_age(age) == text
