"""What a job document is: parsing, validation, sizes, and the fields queuectl fills in.

Pure functions: no file system, and time comes in as `now`. The one parser (parse_text,
parse_bytes) and the one validator (validate) serve every reader: enqueue, adoption, claims,
recovery, dlq and the views. Whatever they accept, dumps() can write, and whatever dumps() writes
they accept again, in any process: nothing here depends on how deep the caller's stack is or on
the interpreter's integer-digit setting.
"""

import json
import os
import re
from datetime import datetime

from queuectl.errors import JobInvalid
from queuectl.layout import CONTENT_STATES, LOG_RE, valid_id  # noqa: F401 - valid_id: the id rule is part of a job
from queuectl.timeutil import iso, parse_iso
_SURROGATE = re.compile("[\ud800-\udfff]")

# json's own nesting limit is the interpreter's recursion limit less the caller's stack, so it
# differs between `enqueue` and a worker: a fixed limit, well inside both, makes them agree
MAX_DEPTH = 100
# the lowest limit sys.set_int_max_str_digits() accepts: an integer this long converts to and from
# text in every interpreter, whatever PYTHONINTMAXSTRDIGITS says
MAX_INT_DIGITS = 640
INT64 = 1 << 63  # whole-number fields must fit a signed 64-bit integer (the range other writers have)
# timeouts and the time settings: ten years is no limit in practice, and an unbounded integer
# (10**400) overflowed the worker's float time arithmetic
MAX_SECONDS = 10 * 365 * 86400

# -- what execve(2) can take --------------------------------------------------------------------
MAX_ARG_STRLEN = 131072  # Linux: one argument or environment string, its NUL included
_ARG_MAX_CAP = 6 << 20  # Linux caps the room at 3/4 of _STK_LIM (8 MiB) whatever the stack rlimit says
# the worker's own environment and the QUEUECTL_* variables come on top of the job's; they are not
# known where a job is validated, so this much is kept for them (a typical environment is 2-8 KiB)
ENV_RESERVE = 64 * 1024

# -- sizes --------------------------------------------------------------------------------------
# max-job-bytes limits what a writer submits. Once accepted, a job grows: queuectl's fields, then
# one history entry per attempt and one previous run per `dlq retry`. Those are capped (policy.py
# trims them), so a stored job never outgrows read_limit(max-job-bytes).
HISTORY_KEEP = 10  # history entries kept per round: the first and the latest
RUNS_KEEP = 5  # previous_runs entries kept: the first, one merging the dropped middle, the latest
ERROR_MAX = 500  # characters of an attempt's error that are stored
FIELDS_BUDGET = 2048  # room for the fields queuectl adds at acceptance (id, token, original_name...)
_ERROR_BYTES = 6 * ERROR_MAX + 2  # as a JSON string, every character escaped at worst
_ENTRY_BYTES = 1024 + _ERROR_BYTES  # keys, two times, numbers, worker id (<= 255), log name (<= 153)
_RUN_BYTES = 256 + HISTORY_KEEP * (_ENTRY_BYTES + 1)
GROWTH_BUDGET = HISTORY_KEEP * (_ENTRY_BYTES + 1) + RUNS_KEEP * (_RUN_BYTES + 1) + _ERROR_BYTES + 256


def read_limit(max_job_bytes):
    """The most bytes a job file queuectl has accepted may hold (what readers of accepted files pass
    to spool.read): what its writer could submit, plus what queuectl adds over its life."""
    return max_job_bytes + FIELDS_BUDGET + GROWTH_BUDGET


def check_size(job, max_job_bytes, submitted):
    """Refuse a new job that could outgrow read_limit: the writer's SUBMITTED bytes (the enqueue
    argument or line, the drop-in file) over max-job-bytes, or its stored form over max-job-bytes
    plus FIELDS_BUDGET (numbers are stored in Python's spelling: 1e15 takes 18 bytes). Returns the
    stored bytes."""
    if submitted > max_job_bytes:
        raise JobInvalid(f"the job is {submitted} bytes, over the max-job-bytes limit of {max_job_bytes}")
    data = dumps(job)
    if len(data) > max_job_bytes + FIELDS_BUDGET:
        raise JobInvalid(
            f"the job takes {len(data)} bytes as stored (its numbers written out in full), over the "
            f"max-job-bytes limit of {max_job_bytes} plus {FIELDS_BUDGET} for queuectl's fields"
        )
    return data


def new_id(now):
    """A fresh id: milliseconds in base 36 (so generated ids sort by creation) and 8 random hex digits."""
    ms = int(now * 1000)
    digits = ""
    while ms:
        ms, r = divmod(ms, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
    return f"{digits or '0'}-{os.urandom(4).hex()}"


def new_token():
    return os.urandom(8).hex()


# -- parsing ------------------------------------------------------------------------------------


class _Refused(ValueError):
    """A number json reads but that could not be written back the same way."""


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text):
    value = float(text)
    if value - value != 0.0:  # 1e400 reads as inf, which json.dumps would write as Infinity
        raise _Refused(f"number {_clip(text)} is out of range: JSON numbers must fit a 64-bit float")
    return value


def _bounded_int(text):
    if len(text) > MAX_INT_DIGITS + (text[:1] == "-"):
        raise _Refused(f"integer {_clip(text)} has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _clip(text, n=24):
    return text if len(text) <= n else text[:n] + "..."


# one decoder, built once: json.loads with hooks would build a new one per call
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int)


def parse_bytes(data):
    """Bytes of a job file or an enqueue argument -> dict. Raises JobInvalid, nothing else."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JobInvalid(f"not UTF-8 (byte {e.start})") from None
    return parse_text(text)


def parse_text(text):
    try:
        doc = _DECODER.decode(text)
    except RecursionError:
        raise JobInvalid(f"JSON nested too deeply (more than {MAX_DEPTH} levels)") from None
    except _Refused as e:
        raise JobInvalid(str(e)) from None
    except ValueError as e:
        raise JobInvalid(f"not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise JobInvalid(f"a job must be a JSON object, got {_json_type(doc)}")
    # a document cannot be deeper than it has brackets: most jobs are decided by two counts
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(doc) > MAX_DEPTH:
        raise JobInvalid(f"JSON nested too deeply (more than {MAX_DEPTH} levels)")
    # a lone surrogate (a JSON escape such as "\ud800", or a non-UTF-8 argument) cannot be stored
    # as UTF-8; only text with a \u escape or a surrogate character can hold one (the common case
    # is decided by two substring searches instead of re-encoding the whole job)
    if "\\u" not in text and not _SURROGATE.search(text):
        return doc
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise JobInvalid(f"not valid Unicode: {e.object[e.start:e.end]!r} is a lone surrogate") from None
    return doc


def _depth(doc):
    """Levels of nested arrays and objects in DOC (iterative: it must not hit the recursion limit)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if deepest > MAX_DEPTH:
                break
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return deepest


def _json_type(value):
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


# -- validation ---------------------------------------------------------------------------------


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _no_nul(field, s):
    if "\0" in s:
        raise JobInvalid(f"{field} must not contain a NUL character")


def _whole(field, v, low, nullable=False):
    """V must be a whole number from LOW up to 2**63-1 (or null when NULLABLE)."""
    if v is None and nullable:
        return
    if not _is_int(v) or v < low:
        bound = "" if low == -INT64 else f" >= {low}"
        raise JobInvalid(f"{field} must be a whole number{bound}{' or null' if nullable else ''}, got {_shown(v)}")
    if v >= INT64:
        raise JobInvalid(f"{field} must be less than 2**63 (64 bits), got {_shown(v)}")


def _text(field, v, nullable=False):
    if v is None and nullable:
        return
    if not isinstance(v, str):
        raise JobInvalid(f"{field} must be a string{' or null' if nullable else ''}, got {_json_type(v)}")


_CANONICAL_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z\Z")


def _time(field, v):
    """V must be a time parse_iso reads (recovery parses created_at to re-file a job)."""
    if not isinstance(v, str):
        raise JobInvalid(f"{field} must be an ISO-8601 time string, got {_json_type(v)}")
    # the form iso() writes, away from the ends of the calendar, only needs a calendar check
    if _CANONICAL_TIME.match(v) and "0001" < v[:4] < "9999":
        try:
            datetime.fromisoformat(v[:-1])
            return
        except ValueError:
            pass
    parse_iso(v, field)


def _shown(v):
    if isinstance(v, float):
        return repr(v)
    if not _is_int(v):
        return _json_type(v)
    return str(v) if abs(v) < 10**24 else "a number of %d digits" % len(str(abs(v)))


def _history(field, entries):
    """Each entry of an attempt history: an object whose known keys have queuectl's types."""
    if not isinstance(entries, list):
        raise JobInvalid(f"{field} must be an array, got {_json_type(entries)}")
    for i, e in enumerate(entries):
        # the entries queuectl writes pass this one test; anything else gets the detailed check
        if type(e) is dict and _plain_entry(e):
            continue
        where = f"{field}[{i}]"
        if not isinstance(e, dict):
            raise JobInvalid(f"{where} must be an object, got {_json_type(e)}")
        if "attempt" in e:
            _whole(f"{where}.attempt", e["attempt"], 0)
        for key in ("started_at", "finished_at", "worker"):
            if key in e:
                _text(f"{where}.{key}", e[key], nullable=True)
        if "exit_code" in e:
            _whole(f"{where}.exit_code", e["exit_code"], -INT64, nullable=True)
        if "error" in e:
            _text(f"{where}.error", e["error"], nullable=True)
        log = e.get("log")
        if log is not None and not (isinstance(log, str) and LOG_RE.match(log)):
            raise JobInvalid(f"{where}.log must be null or a log file name ID.N.log, got {_clip(repr(log))}")


def _plain_entry(e):
    a, x, log = e.get("attempt", 0), e.get("exit_code"), e.get("log")
    return (
        type(a) is int and 0 <= a < INT64
        and (x is None or type(x) is int and -INT64 <= x < INT64)
        and type(e.get("started_at")) in _STR_OR_NONE
        and type(e.get("finished_at")) in _STR_OR_NONE
        and type(e.get("error")) in _STR_OR_NONE
        and type(e.get("worker")) in _STR_OR_NONE
        and (log is None or type(log) is str and LOG_RE.match(log) is not None)
    )


_STR_OR_NONE = (str, type(None))


def _previous_runs(runs):
    if not isinstance(runs, list):
        raise JobInvalid(f"previous_runs must be an array, got {_json_type(runs)}")
    for i, r in enumerate(runs):
        where = f"previous_runs[{i}]"
        if not isinstance(r, dict):
            raise JobInvalid(f"{where} must be an object, got {_json_type(r)}")
        if "retried_at" in r:
            _text(f"{where}.retried_at", r["retried_at"], nullable=True)
        if "attempts" in r:
            _whole(f"{where}.attempts", r["attempts"], 0)
        if "runs" in r:
            _whole(f"{where}.runs", r["runs"], 1)
        if r.get("history") is not None:
            _history(f"{where}.history", r["history"])


def _utf8_len(s):
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


_exec_limit_cache = []


def exec_limit():
    """Bytes of arguments and environment a command can be started with here: ARG_MAX (from the
    stack limit, as sysconf reports it), capped where Linux caps it."""
    if not _exec_limit_cache:
        try:
            arg_max = os.sysconf("SC_ARG_MAX")
        except (AttributeError, ValueError, OSError):
            arg_max = -1
        _exec_limit_cache.append(min(arg_max if arg_max > 0 else MAX_ARG_STRLEN, _ARG_MAX_CAP))
    return _exec_limit_cache[0]


def _check_exec(cmd, env):
    """Refuse a job whose `/bin/sh -c COMMAND` with its env could never be started (E2BIG): it
    would fail every attempt until dead. Strings count with their NUL, each with a pointer."""
    n = _utf8_len(cmd)
    if n + 1 > MAX_ARG_STRLEN:
        raise JobInvalid(
            f"command is {n} bytes, over the {MAX_ARG_STRLEN - 1} bytes one argument can hold (Linux's MAX_ARG_STRLEN)"
        )
    need = len("/bin/sh") + 1 + len("-c") + 1 + n + 1 + 8 * 4
    for k, v in (env or {}).items():
        s = _utf8_len(k) + 1 + _utf8_len(v)
        if s + 1 > MAX_ARG_STRLEN:
            raise JobInvalid(
                f"env[{_clip(k, 40)!r}] is {s} bytes as NAME=VALUE, over the {MAX_ARG_STRLEN - 1} bytes one "
                "environment string can hold (Linux's MAX_ARG_STRLEN)"
            )
        need += s + 1 + 8
    room = exec_limit() - ENV_RESERVE
    if need > room:
        raise JobInvalid(
            f"command and env need {need} bytes to start, over the {room} bytes a command can have here "
            f"(ARG_MAX {exec_limit()} less {ENV_RESERVE} kept for the worker's own environment)"
        )


def validate(doc):
    """Check every field spool_layout.md defines, the writer's and queuectl's; return a normalised copy.

    Unknown fields are kept. Raises JobInvalid with a message naming the field.
    """
    if not isinstance(doc, dict):
        raise JobInvalid(f"a job must be a JSON object, got {_json_type(doc)}")
    job = dict(doc)
    cmd = job.get("command")
    if "command" not in job:
        raise JobInvalid("missing field 'command'")
    if not isinstance(cmd, str):
        raise JobInvalid(f"command must be a string, got {_json_type(cmd)}")
    if not cmd.strip():
        raise JobInvalid("command must not be empty")
    _no_nul("command", cmd)
    if "id" in job and job["id"] is not None and not valid_id(job["id"]):
        raise JobInvalid(
            f"bad id {job['id']!r}: use 1-128 characters of A-Za-z0-9._- not starting with '.'"
        )
    if job.get("max_retries") is not None:
        _whole("max_retries", job["max_retries"], 0)
    if job.get("timeout") is not None and not (_is_number(job["timeout"]) and 0 < job["timeout"] <= MAX_SECONDS):
        raise JobInvalid(f"timeout must be a number of seconds > 0 and <= {MAX_SECONDS}")
    if job.get("priority") is not None:
        _whole("priority", job["priority"], -INT64)
    if job.get("run_at") is not None:
        job["run_at"] = iso(parse_iso(job["run_at"], "run_at"))
    if job.get("cwd") is not None:
        if not isinstance(job["cwd"], str) or not job["cwd"]:
            raise JobInvalid("cwd must be a non-empty string")
        _no_nul("cwd", job["cwd"])
    env = job.get("env")
    if env is not None:
        if not isinstance(env, dict):
            raise JobInvalid(f"env must be an object of strings, got {_json_type(env)}")
        for k, v in env.items():
            if not k or "=" in k or "\0" in k:
                raise JobInvalid(f"env has a bad variable name {k!r}")
            if not isinstance(v, str):
                raise JobInvalid(f"env[{k!r}] must be a string, got {_json_type(v)}")
            _no_nul(f"env[{k!r}]", v)
    _check_exec(cmd, env)
    # queuectl's own fields: every reader relies on their types (policy, recovery, the views)
    if job.get("state") is not None and job["state"] not in CONTENT_STATES:
        raise JobInvalid(f"state must be one of {', '.join(CONTENT_STATES)}, got {_clip(repr(job['state']))}")
    if job.get("attempts") is not None:
        _whole("attempts", job["attempts"], 0)
    for field in ("created_at", "updated_at"):
        if job.get(field) is not None:
            _time(field, job[field])
    if "exit_code" in job:
        _whole("exit_code", job["exit_code"], -INT64, nullable=True)
    for field in ("last_error", "token", "original_name"):
        if field in job:
            _text(field, job[field], nullable=True)
    if job.get("history") is not None:
        _history("history", job["history"])
    if job.get("previous_runs") is not None:
        _previous_runs(job["previous_runs"])
    return job


def accept(doc, now, max_retries, job_id=None, token=None):
    """A validated document -> the full job queuectl stores, and its not-before time.

    Fields the writer gave are kept; queuectl's own fields start fresh.
    """
    job = validate(doc)
    job["id"] = job.get("id") or job_id or new_id(now)
    if job.get("max_retries") is None:
        job["max_retries"] = max_retries
    if job.get("priority") is None:
        job["priority"] = 0
    job["state"] = "pending"
    job["attempts"] = 0
    job["created_at"] = job["updated_at"] = iso(now)
    job["exit_code"] = None
    job["last_error"] = None
    job["history"] = []
    job["token"] = token or new_token()
    not_before = parse_iso(job["run_at"]) if job.get("run_at") else now
    return job, not_before


def dumps(job):
    """One line of JSON (json's C encoder only runs without indent, and workers write one per
    attempt), compact: a job stored is then never larger than its writer's bytes plus queuectl's
    fields, except for numbers respelled. allow_nan=False: Infinity and NaN are never written."""
    try:
        text = json.dumps(job, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError as e:  # only a document that did not come through parse_text
        raise JobInvalid(f"cannot be stored as JSON: {e}") from None
    return (text + "\n").encode("utf-8")
