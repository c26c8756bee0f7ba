"""One way to turn the clouds' many time formats into epoch seconds.

boto3 gives ``datetime`` objects, proto-plus gives ``DatetimeWithNanoseconds`` (or a
protobuf ``Timestamp`` with ``seconds``/``nanos``), Compute Engine's REST API gives
RFC 3339 strings, result records give numbers. :func:`epoch_seconds` takes any of them.
Pure: no Airflow, no cloud SDK.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def epoch_seconds(value: Any) -> float | None:
    """Epoch seconds of ``value``; ``None`` when it is missing, empty, unset (0) or unreadable.

    Accepts a number, an ISO 8601 / RFC 3339 string (``...Z`` included), a ``datetime``
    (naive ones are taken as UTC), or an object with ``timestamp()`` or
    ``seconds``/``nanos`` (protobuf timestamps). A zero timestamp means "not set" in
    protobuf and in most cloud APIs, so it gives ``None``.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_iso(value)
    elif isinstance(value, datetime):
        seconds = (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    elif hasattr(value, "timestamp"):
        seconds = float(value.timestamp())
    elif hasattr(value, "seconds"):
        seconds = float(getattr(value, "seconds", 0)) + float(getattr(value, "nanos", 0)) / 1e9
    else:
        return None
    return seconds if seconds and seconds > 0 else None


def _parse_iso(text: str) -> float:
    if not text.strip():
        return 0.0
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()
