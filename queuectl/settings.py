"""The settings: one table that `config`, its error messages and the README's table come from.

config.json holds only the keys that were set. Readers just read it (writers replace it
atomically); writers hold config.json.lock so that two `config set` calls cannot lose an update.
"""

import json
import os
from collections import namedtuple

from queuectl.errors import BadInput, SpoolError

Setting = namedtuple("Setting", "key kind default help")

# kind: "int" (whole number >= 0), "seconds" (number >= 0), "positive" (number > 0), "base" (>= 1),
# "users" (comma-separated user names or uids)
TABLE = (
    Setting("max-retries", "int", 3, "retries after the first attempt, for jobs that set no max_retries"),
    Setting("backoff-base", "base", 2, "a failed job waits backoff-base ** attempts seconds before its retry"),
    Setting("backoff-max", "seconds", 3600, "the longest wait between two attempts, in seconds"),
    Setting("job-timeout", "seconds", 0, "seconds an attempt may run when the job sets no timeout; 0: no limit"),
    Setting("lease-seconds", "positive", 30, "a worker whose heartbeat is older than this is lost; its job is recovered"),
    Setting("heartbeat-seconds", "positive", 5, "how often a worker refreshes its heartbeat file"),
    Setting("max-job-bytes", "int", 1048576, "a job file larger than this is rejected"),
    Setting("max-log-bytes", "int", 10485760, "output kept per attempt; the rest is dropped and noted in the log; 0: no limit"),
    Setting("trusted-users", "users", "", "other users whose job files workers run (comma-separated); files of anyone else are rejected"),
)
BY_KEY = {s.key: s for s in TABLE}
KIND_TEXT = {
    "int": "a whole number >= 0",
    "seconds": "a number of seconds >= 0",
    "positive": "a number > 0",
    "base": "a number >= 1",
    "users": "comma-separated user names or uids",
}


def _setting(key):
    try:
        return BY_KEY[key]
    except KeyError:
        raise BadInput(f"unknown setting {key!r}; valid keys: {', '.join(BY_KEY)}") from None


def parse_value(key, value):
    """Text or JSON value -> the typed value for KEY. Raises BadInput naming the expected type."""
    s = _setting(key)
    if s.kind == "users":
        return ",".join(str(u) for u in _users(key, value))
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                value = None
        if "_" in text:  # Python's int()/float() read "1_0" as 10; a setting does not
            value = None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok and value not in (float("inf"), float("-inf")):
        if s.kind == "int":
            ok = float(value).is_integer() and value >= 0
            value = int(value) if ok else value
        elif s.kind == "seconds":
            ok = value >= 0
        elif s.kind == "positive":
            ok = value > 0
        elif s.kind == "base":
            ok = value >= 1
    else:
        ok = False
    if not ok:
        raise BadInput(f"{key} must be {KIND_TEXT[s.kind]}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value


def _users(key, value):
    if not isinstance(value, str):
        raise BadInput(f"{key} must be {KIND_TEXT['users']}")
    import pwd

    out = []
    for item in filter(None, (v.strip() for v in value.split(","))):
        if item.isdigit():
            out.append(item)
            continue
        try:
            pwd.getpwnam(item)
        except KeyError:
            raise BadInput(f"{key}: no user named {item!r}") from None
        out.append(item)
    return out


def trusted_uids(value):
    """The uids named by a trusted-users value (names that no longer resolve are skipped)."""
    import pwd

    uids = set()
    for item in filter(None, value.split(",")):
        if item.isdigit():
            uids.add(int(item))
        else:
            try:
                uids.add(pwd.getpwnam(item).pw_uid)
            except KeyError:
                pass
    return uids


def read_file(path):
    """The settings that were set, as a dict; {} when there is no config.json."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise SpoolError(f"cannot read settings {path}: {e}") from None
    if not isinstance(data, dict):
        raise SpoolError(f"cannot read settings {path}: not a JSON object")
    return data


def effective(raw):
    """Defaults overlaid with the valid values of RAW (an invalid stored value keeps the default)."""
    values = {s.key: s.default for s in TABLE}
    for key, value in raw.items():
        if key in BY_KEY:
            try:
                values[key] = parse_value(key, value)
            except BadInput:
                pass
    return values


def load(path):
    return effective(read_file(path))


def get(path, key):
    _setting(key)
    return load(path)[key]


def set_value(path, key, text):
    """Validate, then rewrite config.json under its lock. Nothing changes on a bad key or value."""
    value = parse_value(key, text)
    from filelock import FileLock  # only `config set` needs it: keep other commands fast

    from queuectl.fsio import write_atomic

    with FileLock(path + ".lock", timeout=10):
        raw = read_file(path)
        raw[key] = value
        shared = os.stat(os.path.dirname(path) or ".").st_mode & 0o070  # a group's spool: 0660
        write_atomic(path, (json.dumps(raw, indent=2, sort_keys=True) + "\n").encode(), 0o660 if shared else 0o600)
    return value


class Watched:
    """Settings that a long-running worker re-reads when config.json's mtime changes."""

    def __init__(self, path):
        self.path = path
        self._mtime = None
        self.values = effective({})
        self.refresh()

    def refresh(self):
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            mtime = None
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                self.values = load(self.path)
            except SpoolError:
                pass  # keep the last good values; a half-edited file by hand must not stop work
        return self.values

    def __getitem__(self, key):
        return self.values[key]


def markdown_table():
    """The settings table as README.md shows it (a test keeps the two identical)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for s in TABLE:
        default = s.default if s.default != "" else '""'
        rows.append(f"| `{s.key}` | {KIND_TEXT[s.kind]} | {default} | {s.help} |")
    return "\n".join(rows)
