"""The settings: one table that `config`, its error messages and the README's table come from.

config.json holds only the keys that were set. Readers just read it (writers replace it
atomically); writers hold config.json.lock so that two `config set` calls cannot lose an update.
"""

import json
import os
import sys
from collections import namedtuple

from queuectl.errors import BadInput, JobInvalid, SpoolError
from queuectl.job import MAX_SECONDS

Setting = namedtuple("Setting", "key kind default low high help low_open", defaults=(False,))

# kind: "int" (a whole number), "number", "seconds" (a number of seconds), "duration" (seconds, or
# with a unit: 90, 15m, 2h, 7d; stored as seconds), "users" (comma-separated
# user names or uids; no range). Values run from LOW (excluded when low_open) to HIGH: every value
# in range is safe for the worker's arithmetic and timers (heartbeat-seconds 1e10 overflowed them).
TABLE = (
    Setting("max-retries", "int", 3, 0, 1_000_000, "retries after the first attempt, for jobs that set no max_retries"),
    Setting("backoff-base", "number", 2, 1, 1000, "a failed job waits backoff-base ** attempts seconds before its retry"),
    Setting("backoff-max", "seconds", 3600, 0, MAX_SECONDS, "the longest wait between two attempts, in seconds"),
    Setting("job-timeout", "seconds", 0, 0, MAX_SECONDS, "seconds an attempt may run when the job sets no timeout; 0: no limit"),
    Setting("lease-seconds", "seconds", 30, 0, 86400, "a worker whose heartbeat is older than this is lost; its job is recovered", True),
    Setting("heartbeat-seconds", "seconds", 5, 0, 28800, "how often a worker refreshes its heartbeat file; at most a third of lease-seconds", True),
    Setting("max-job-bytes", "int", 1048576, 256, 1 << 28, "the largest job a writer may submit (enqueue argument or line, drop-in file)"),
    Setting("max-log-bytes", "int", 10485760, 0, 1 << 40, "output kept per attempt; the rest is dropped and noted in the log; 0: no limit"),
    Setting("max-worker-log-bytes", "int", 10485760, 4096, 1 << 40, "size at which a detached pool's worker log is renamed to .1 (one kept) and a new one started"),
    Setting("trusted-users", "users", "", None, None, "other users whose job files workers run (comma-separated); files of anyone else are left waiting for a worker that trusts their owner"),
    Setting("completed-retention", "duration", 604800, 0, MAX_SECONDS, "completed jobs (with their logs and ids) are removed by workers this long after they finished (7d); 0: kept forever"),
    Setting("dead-retention", "duration", 7776000, 0, MAX_SECONDS, "dead jobs (with their logs and ids) are removed by workers this long after they died (90d); 0: kept forever"),
    Setting("rejected-retention", "duration", 2592000, 0, MAX_SECONDS, "rejected files and their reasons are removed by workers this long after they were rejected (30d); 0: kept forever"),
)
BY_KEY = {s.key: s for s in TABLE}
_NOUN = {"int": "a whole number", "number": "a number", "seconds": "a number of seconds", "duration": "a duration in seconds (or 15m, 2h, 7d)"}
HEARTBEATS_PER_LEASE = 3  # a live worker misses two heartbeats before it looks lost


def describe(s):
    """What a value of setting S must be, as error messages and README's table say it."""
    if s.kind == "users":
        return "comma-separated user names or uids"
    return f"{_NOUN[s.kind]} {'>' if s.low_open else '>='} {s.low} and <= {s.high}"


def _setting(key):
    try:
        return BY_KEY[key]
    except KeyError:
        raise BadInput(f"unknown setting {key!r}; valid keys: {', '.join(BY_KEY)}") from None


def parse_value(key, value):
    """Text or JSON value -> the typed value for KEY. Raises BadInput naming the type and range."""
    s = _setting(key)
    if s.kind == "users":
        return ",".join(str(u) for u in _users(key, value))
    if isinstance(value, str) and s.kind == "duration" and "_" not in value:
        from queuectl.timeutil import parse_duration

        seconds = parse_duration(value)
        value = value if seconds is None else seconds
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
    if ok:
        ok = (value > s.low if s.low_open else value >= s.low) and value <= s.high
    if ok and s.kind == "int":
        ok = float(value).is_integer()
    if not ok:
        raise BadInput(f"{key} must be {describe(s)}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value


def _too_slow(heartbeat, lease):
    return heartbeat * HEARTBEATS_PER_LEASE > lease * (1 + 1e-9)  # tolerance: 0.2 * 3 is 0.6000000000000001


def _users(key, value):
    if not isinstance(value, str):
        raise BadInput(f"{key} must be {describe(BY_KEY[key])}")
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


def untrusted_writer(st, path):
    """Why config.json (fstat ST) must not count, or None: only the spool's owner (the owner of
    its root folder) or root may set what every worker obeys; a group member's file, written or
    moved over config.json, is ignored."""
    try:
        owner = os.stat(os.path.dirname(path) or ".").st_uid
    except OSError:
        owner = None
    if st.st_uid in (owner, 0):
        return None
    from queuectl.owners import user_name

    return (f"ignoring {path}: it belongs to user {user_name(st.st_uid)}, not to the spool's owner "
            f"{user_name(owner)} (or root); the defaults apply")


def _stderr(line):
    print(f"queuectl: warning: {line}", file=sys.stderr)


class Ignored(SpoolError):
    """config.json is not a regular file (a FIFO would block every reader for good): it is
    ignored, the defaults apply, and the message says so."""


def read_file(path, warn=_stderr):
    """The settings that were set, as a dict; {} when there is no config.json, or when it was not
    written by the spool's owner or root (then WARN(line) is told why). The owner is checked on the
    very file read (fstat), so a file moved over config.json meanwhile cannot slip through. Never
    blocks: anything but a regular file raises Ignored at once."""
    from queuectl import fsio

    try:
        raw, st = fsio.read_regular_stat(path, 1 << 20)
    except FileNotFoundError:
        return {}
    except fsio.NotRegular as e:
        raise Ignored(
            f"{path} is {e.describe()}, not a settings file: ignored, the defaults apply; "
            "the spool's owner should remove it (queuectl config set writes a new one)"
        ) from None
    except (OSError, JobInvalid) as e:
        raise SpoolError(f"cannot read settings {path}: {e}") from None
    why = untrusted_writer(st, path)
    if why is not None:
        if warn is not None:
            warn(why)
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as e:
        raise SpoolError(f"cannot read settings {path}: {e}") from None
    if not isinstance(data, dict):
        raise SpoolError(f"cannot read settings {path}: not a JSON object")
    return data


def effective(raw):
    """Defaults overlaid with the valid values of RAW (an invalid or out-of-range stored value keeps
    the default). A heartbeat too slow for the lease (config.json edited by hand) is read as a
    third of the lease: workers must never look lost while alive."""
    values = {s.key: s.default for s in TABLE}
    for key, value in raw.items():
        if key in BY_KEY:
            try:
                values[key] = parse_value(key, value)
            except BadInput:
                pass
    if _too_slow(values["heartbeat-seconds"], values["lease-seconds"]):
        values["heartbeat-seconds"] = values["lease-seconds"] / HEARTBEATS_PER_LEASE
    return values


def load(path, warn=_stderr):
    try:
        return effective(read_file(path, warn))
    except Ignored as e:
        if warn is not None:
            warn(str(e))
        return effective({})


def get(path, key):
    _setting(key)
    return load(path)[key]


def set_value(path, key, text, lock=None):
    """Validate, then rewrite config.json under its lock (LOCK: its checked path, Spool.lock_path).
    Nothing changes on a bad key or value."""
    from queuectl.owners import check_may_configure

    root = os.path.dirname(path) or "."
    check_may_configure(root, path)  # before the lock file or anything else is touched
    value = parse_value(key, text)
    from filelock import FileLock  # only `config set` needs it: keep other commands fast

    from queuectl.fsio import write_atomic

    st = os.stat(root)
    owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 and st.st_uid != 0 else None  # root's edit stays the owner's
    mode = 0o640 if st.st_mode & 0o070 else 0o600  # a group's spool: 0640, writable by its owner only
    from queuectl import sysspool
    from queuectl.spool import is_system_spool

    if is_system_spool(root):
        mode = sysspool.CONFIG_MODE  # every user's enqueue reads max-job-bytes; only root writes
    try:
        held = FileLock(lock or path + ".lock", timeout=10, mode=mode)
    except TypeError:  # filelock < 3.10 has no mode: the spool made the lock with it (Spool.lock_path)
        held = FileLock(lock or path + ".lock", timeout=10)
    with held:
        if owner is not None:  # root's lock file must not lock the owner out of later changes
            _give_lock(lock or path + ".lock", owner)
        try:
            raw = read_file(path)
        except Ignored as e:  # replaced below by a regular file
            _stderr(str(e))
            raw = {}
        _check_pair(key, value, effective(raw))
        raw[key] = value
        write_atomic(path, (json.dumps(raw, indent=2, sort_keys=True) + "\n").encode(), mode, owner=owner)
    return value


def _give_lock(lock, owner):
    """The lock file root just made goes to the spool's owner (never through a planted symlink)."""
    import stat

    try:
        st = os.lstat(lock)
        if stat.S_ISREG(st.st_mode) and st.st_uid == 0:
            os.chown(lock, *owner, follow_symlinks=False)
    except OSError:
        pass  # the owner's next `config set` says what is wrong with it


def _check_pair(key, value, current):
    """Refuse a heartbeat-seconds / lease-seconds pair that would make live workers look lost."""
    if key == "heartbeat-seconds" and _too_slow(value, current["lease-seconds"]):
        lease = current["lease-seconds"]
        raise BadInput(
            f"heartbeat-seconds {value:g} is too slow for lease-seconds {lease:g}: a heartbeat must be at most a "
            f"third of the lease; set heartbeat-seconds to {_advice(lease / HEARTBEATS_PER_LEASE, lambda h: not _too_slow(h, lease))} or less, or raise lease-seconds first"
        )
    if key == "lease-seconds" and _too_slow(current["heartbeat-seconds"], value):
        hb = current["heartbeat-seconds"]
        raise BadInput(
            f"lease-seconds {value:g} is too short for heartbeat-seconds {hb:g}: a lease must last at least three "
            f"heartbeats; set lease-seconds to {_advice(hb * HEARTBEATS_PER_LEASE, lambda v: not _too_slow(hb, v))} or more, or lower heartbeat-seconds first"
        )


def _advice(x, fits):
    """X shown with at most 6 decimals, nudged by one in the last place if needed so that the
    advice given with it holds (FITS(value) is True)."""
    for v in (round(x, 6), round(x - 1e-6, 6), round(x + 1e-6, 6)):
        if fits(v):
            return str(int(v)) if float(v).is_integer() else f"{v:.6f}".rstrip("0")
    return repr(x)


class Watched:
    """Settings that a long-running worker re-reads when config.json's mtime changes."""

    def __init__(self, path, warn=_stderr):
        self.path = path
        self.warn = warn  # told once per version of config.json that does not count (read_file)
        self._mtime = None
        self.values = effective({})
        self.refresh()

    def refresh(self):
        try:
            st = os.stat(self.path)
            # a file moved over config.json keeps its mtime: its inode, ctime and owner tell it
            mtime = (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_uid)
        except OSError:
            mtime = None
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                self.values = load(self.path, self.warn)
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
        rows.append(f"| `{s.key}` | {describe(s)} | {default} | {s.help} |")
    return "\n".join(rows)
