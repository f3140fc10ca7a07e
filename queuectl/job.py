"""What a job document is: parsing, validation, and the fields queuectl fills in.

Pure functions: no file system, and time comes in as `now`.
"""

import json
import os
import re

from queuectl.errors import JobInvalid
from queuectl.timeutil import iso, parse_iso

ID_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
_ID_RE = re.compile(ID_PATTERN + r"\Z")
_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_id(value):
    return isinstance(value, str) and _ID_RE.match(value) is not None


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


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def parse_bytes(data):
    """Bytes of a job file or an enqueue argument -> dict. Raises JobInvalid, nothing else."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JobInvalid(f"not UTF-8 (byte {e.start})") from None
    return parse_text(text)


def parse_text(text):
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise JobInvalid("JSON nested too deeply") from None
    except ValueError as e:
        raise JobInvalid(f"not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise JobInvalid(f"a job must be a JSON object, got {_json_type(doc)}")
    # a lone surrogate (a JSON escape such as "\ud800", or a non-UTF-8 argument) cannot be stored
    # as UTF-8; only text with a \u escape or a surrogate character can hold one (the common case
    # is decided by two substring searches instead of re-encoding the whole job)
    if "\\u" not in text and not _SURROGATE.search(text):
        return doc
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise JobInvalid(f"not valid Unicode: {e.object[e.start:e.end]!r} is a lone surrogate") from None
    except RecursionError:
        raise JobInvalid("JSON nested too deeply") from None
    return doc


def _json_type(value):
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _no_nul(field, s):
    if "\0" in s:
        raise JobInvalid(f"{field} must not contain a NUL character")


def validate(doc):
    """Check the fields a user may give (spool_layout.md); return a normalised copy.

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
    if job.get("max_retries") is not None and not (_is_int(job["max_retries"]) and job["max_retries"] >= 0):
        raise JobInvalid("max_retries must be a whole number >= 0")
    if job.get("timeout") is not None and not (_is_number(job["timeout"]) and job["timeout"] > 0):
        raise JobInvalid("timeout must be a number of seconds > 0")
    if job.get("priority") is not None and not _is_int(job["priority"]):
        raise JobInvalid("priority must be a whole number")
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
    if job.get("attempts") is not None and not (_is_int(job["attempts"]) and job["attempts"] >= 0):
        raise JobInvalid("attempts must be a whole number >= 0")
    for field in ("history", "previous_runs"):
        if job.get(field) is not None and not isinstance(job[field], list):
            raise JobInvalid(f"{field} must be an array")
    if job.get("token") is not None and not isinstance(job["token"], str):
        raise JobInvalid("token must be a string")
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
    """One line of JSON: json's C encoder only runs without indent, and workers write one per attempt."""
    return (json.dumps(job, ensure_ascii=False) + "\n").encode("utf-8")
