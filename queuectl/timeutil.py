"""Time formats. Every decision that depends on time takes `now` (epoch seconds) as an argument."""

import time
from datetime import datetime, timezone

from queuectl.errors import JobInvalid

now = time.time


def iso(ts):
    """Epoch seconds -> '2026-11-28T12:00:00.000000Z'."""
    dt = datetime.fromtimestamp(ts, timezone.utc)
    return f"{dt.year:04d}" + dt.strftime("-%m-%dT%H:%M:%S.%fZ")  # %Y does not pad years < 1000


def parse_iso(text, field="time"):
    """ISO-8601 -> epoch seconds. A time without an offset is the host's local time."""
    if not isinstance(text, str):
        raise JobInvalid(f"{field} must be an ISO-8601 string, got {type(text).__name__}")
    s = text.strip()
    if s[-1:] in ("Z", "z"):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
        if dt.tzinfo is None:
            dt = dt.astimezone()  # local time of this host
        ts = dt.timestamp()
        iso(ts)  # the time must also be writable back
    except (ValueError, OverflowError, OSError):
        raise JobInvalid(f"{field} is not an ISO-8601 time: {text!r}") from None
    return ts


def stamp(ts):
    """Epoch seconds -> the not-before prefix of a pending name, 'YYYYMMDDTHHMMSS.ffffffZ'."""
    dt = datetime.fromtimestamp(ts, timezone.utc)
    return f"{dt.year:04d}" + dt.strftime("%m%dT%H%M%S.%fZ")


def parse_stamp(text):
    """The not-before prefix -> epoch seconds (fraction optional). Raises ValueError."""
    fmt = "%Y%m%dT%H%M%S.%fZ" if "." in text else "%Y%m%dT%H%M%SZ"
    return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()
