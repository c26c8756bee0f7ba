"""Deadlines: an aware datetime, or a duration counted from the first launch.

Pure parsing, no Airflow. Accepted forms:

* ``datetime`` with a timezone; ``timedelta``;
* ISO 8601 instants with an offset: ``"2026-12-01T06:00:00+00:00"``, ``"...Z"``;
* durations: ``"90m"``, ``"6h"``, ``"1d12h"``, ``"2h30m"``, ``"45s"``, ISO ``"PT6H"``,
  or a bare number of seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_SHORT = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*"
                    r"(?:(\d+(?:\.\d+)?)\s*s)?\s*$", re.I)
_ISO_DURATION = re.compile(r"^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?"
                           r"(?:(\d+(?:\.\d+)?)S)?)?$", re.I)

FORMS = ("an aware datetime (with tzinfo), a timedelta, an ISO 8601 instant with an offset such as "
         "'2026-12-01T06:00:00+00:00', or a duration such as '6h', '1d12h', '90m' or 'PT6H'")


class DeadlineError(ValueError):
    pass


@dataclass(frozen=True)
class Deadline:
    """Either an absolute instant (epoch seconds) or a duration from the first launch."""

    at: float | None = None
    after_seconds: float | None = None

    def resolve(self, first_launch_at: float) -> float:
        if self.at is not None:
            return self.at
        assert self.after_seconds is not None
        return first_launch_at + self.after_seconds


def _duration(text: str) -> float | None:
    for pattern in (_ISO_DURATION, _SHORT):
        m = pattern.match(text)
        if m and any(m.groups()):
            return sum(float(v) * u for v, u in zip(m.groups(), _UNITS.values()) if v)
    try:
        return float(text)
    except ValueError:
        return None


def parse_deadline(value: Any, *, argument: str = "deadline") -> Deadline | None:
    """Parse a deadline; raise :class:`DeadlineError` naming ``argument`` and the accepted forms."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise DeadlineError(
                f"{argument}={value!r} is a naive datetime: give it a timezone, e.g. "
                "pendulum.datetime(..., tz='UTC') or datetime(..., tzinfo=timezone.utc)."
            )
        return Deadline(at=value.timestamp())
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        seconds = _duration(text)
        if seconds is None:
            try:
                instant = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise DeadlineError(f"{argument}={value!r} is not understood: use {FORMS}.") from None
            return parse_deadline(instant, argument=argument)
    else:
        raise DeadlineError(f"{argument}={value!r} has type {type(value).__name__}: use {FORMS}.")
    if seconds <= 0:
        raise DeadlineError(f"{argument}={value!r} is not a positive duration: use {FORMS}.")
    return Deadline(after_seconds=seconds)
