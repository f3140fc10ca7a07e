"""Time formats. Every decision that depends on time takes `now` (epoch seconds) as an argument."""

import calendar
import time
from datetime import date, datetime, timezone

from queuectl.errors import JobInvalid

now = time.time
_EPOCH = date(1970, 1, 1)


def iso(ts):
    """Epoch seconds -> '2026-11-28T12:00:00.000000Z' (hand-formatted: workers call it per attempt)."""
    dt = datetime.fromtimestamp(ts, timezone.utc)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, dt.microsecond)


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


DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text):
    """'90', '1.5s', '15m', '2h', '7d' -> seconds (float), or None if TEXT is not a duration."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*", text)
    return float(m.group(1)) * DURATION_UNITS[m.group(2)] if m else None


def stamp(ts):
    """Epoch seconds -> the not-before prefix of a pending name, 'YYYYMMDDTHHMMSS.ffffffZ'."""
    dt = datetime.fromtimestamp(ts, timezone.utc)
    return f"{dt.year:04d}" + dt.strftime("%m%dT%H%M%S.%fZ")


def parse_stamp(text):
    """The not-before prefix -> epoch seconds (fraction optional). Raises ValueError.

    Hand-parsed: a worker parses one per claim, and strptime costs more than the claim's rename.
    """
    if len(text) < 16 or text[8] != "T" or text[-1] != "Z" or not text[:8].isdigit() or not text[9:15].isdigit():
        raise ValueError(f"not a spool time stamp: {text!r}")
    frac = text[15:-1]
    if frac and (frac[0] != "." or not 2 <= len(frac) <= 7 or not frac[1:].isdigit()):
        raise ValueError(f"not a spool time stamp: {text!r}")
    y, mo, d = int(text[0:4]), int(text[4:6]), int(text[6:8])
    h, mi, s = int(text[9:11]), int(text[11:13]), int(text[13:15])
    if not (1 <= mo <= 12 and 1 <= d <= calendar.monthrange(y, mo)[1] and h < 24 and mi < 60 and s < 60) or y < 1:
        raise ValueError(f"not a spool time stamp: {text!r}")
    micro = int(frac[1:].ljust(6, "0")) if frac else 0
    days = (date(y, mo, d) - _EPOCH).days
    return days * 86400 + h * 3600 + mi * 60 + s + micro / 1e6
