"""Issue 8, "exactly once per attempt under every fault": what enqueue accepts, a worker accepts;
queuectl's own fields are checked; a stored job stays within the size its readers allow; commands
that could never start are refused; settings stay in their ranges.

Pure functions only (the parser, validator, policy, settings); nothing here starts queuectl.
test_validation_e2e.py checks the same promises through the installed CLI and real workers.
"""

import json
import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from queuectl import cli
from queuectl import job as jobdoc
from queuectl import policy, settings
from queuectl.errors import BadInput, JobInvalid

HYP = hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T0 = 1795000000.0  # 2026-11-19


# -- 1. one parser, one validator: enqueue's path and the worker's agree ------------------------


def enqueue_path(text, max_job_bytes=1 << 20):
    """What `queuectl enqueue TEXT` stores: cli._accept, then the bytes spool.enqueue writes."""
    job, nb = cli._accept(text, 3, max_job_bytes)
    return job, jobdoc.dumps(job)


def worker_path(data):
    """What a worker makes of a stored file (spool.read: parse_bytes, then validate)."""
    return jobdoc.validate(jobdoc.parse_bytes(data))


def nested(depth, leaf="1"):
    """DEPTH levels of arrays around LEAF."""
    return "[" * depth + leaf + "]" * depth


@pytest.mark.parametrize(
    "text, word",
    [
        ('{"command": "true", "x": 1e400}', "out of range"),
        ('{"command": "true", "x": -1e400}', "out of range"),
        ('{"command": "true", "x": 1E+309}', "out of range"),
        ('{"command": "true", "x": {"y": [1, {"z": 2e308}]}}', "out of range"),
        ('{"command": "true", "timeout": 1e999}', "out of range"),
        ('{"command": "true", "x": ' + "9" * 400 + ".5}", "out of range"),
        ('{"command": "true", "x": ' + "1" * (jobdoc.MAX_INT_DIGITS + 1) + "}", "digits"),
        ('{"command": "true", "x": -' + "1" * (jobdoc.MAX_INT_DIGITS + 1) + "}", "digits"),
        ('{"command": "true", "x": NaN}', "NaN"),
        ('{"command": "true", "x": ' + nested(jobdoc.MAX_DEPTH) + "}", "nested"),
        ('{"command": "true", "x": {"a": ' + nested(jobdoc.MAX_DEPTH - 1, "{}") + "}}", "nested"),
    ],
)
def test_parser_refuses_what_it_could_not_write_back(text, word):
    for parse in (jobdoc.parse_text, lambda t: jobdoc.parse_bytes(t.encode())):
        with pytest.raises(JobInvalid) as e:
            parse(text)
        assert word in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "text",
    [
        '{"command": "true", "x": 1.7976931348623157e308}',
        '{"command": "true", "x": 1e-400}',  # underflows to 0.0: finite, and written back as 0.0
        '{"command": "true", "x": -0.0}',
        '{"command": "true", "x": ' + "7" * jobdoc.MAX_INT_DIGITS + "}",
        '{"command": "true", "x": ' + nested(jobdoc.MAX_DEPTH - 1) + "}",
    ],
)
def test_parser_accepts_the_edges_and_they_round_trip(text):
    job, data = enqueue_path(text)
    again = worker_path(data)
    assert again == job and jobdoc.dumps(again) == data


@pytest.mark.skipif(not hasattr(sys, "set_int_max_str_digits"), reason="Python < 3.11 has no digit limit")
def test_integers_do_not_depend_on_the_interpreters_digit_limit():
    # an enqueue run with PYTHONINTMAXSTRDIGITS=0 and a worker with the lowest setting must agree
    text = '{"command": "true", "x": ' + "7" * jobdoc.MAX_INT_DIGITS + "}"
    old = sys.get_int_max_str_digits()
    try:
        sys.set_int_max_str_digits(0)
        job, data = enqueue_path(text)
        with pytest.raises(JobInvalid):
            jobdoc.parse_text('{"command": "true", "x": ' + "7" * 5000 + "}")
        sys.set_int_max_str_digits(640)
        assert worker_path(data) == job
    finally:
        sys.set_int_max_str_digits(old)


def test_dumps_never_writes_a_non_finite_number():
    with pytest.raises(JobInvalid, match="JSON"):
        jobdoc.dumps({"command": "true", "x": [float("inf")]})


# JSON text, built from the grammar with the spellings a writer may use: numbers of any size and
# exponent, escapes (lone surrogates too), whitespace, nesting past the limit, duplicate keys
_ws = st.sampled_from(["", " ", "\n", "\t", "  \r\n"])
_digits = st.text("0123456789", min_size=1, max_size=30) | st.sampled_from(["9" * 308, "9" * 309, "1" * 640, "1" * 641])
_ints = st.builds(lambda s, d: s + (d.lstrip("0") or "0"), st.sampled_from(["", "-"]), _digits)
_floats = st.builds(
    lambda i, frac, e, sign, exp: i + (("." + frac) if frac else "") + (e + sign + exp if e else ("" if frac else ".0")),
    _ints,
    st.text("0123456789", max_size=20),
    st.sampled_from(["", "e", "E"]),
    st.sampled_from(["", "+", "-"]),
    st.integers(0, 999).map(str) | st.sampled_from(["0400", "308", "309"]),
)
_safe = ["a", "\u00e9", "\U0001f600", "\\n", "\\\"", "\\\\", "\\/", "\\u00e9", "\\ud83d\\ude00", "\x7f", "\u2028"]
_chars = st.sampled_from(_safe * 3 + ["\\u0000", "\\ud800", "\\udfff"])
_strings = st.lists(_chars, max_size=6).map(lambda cs: '"' + "".join(cs) + '"')
_scalars = _ints | _floats | _floats | _strings | st.sampled_from(["true", "false", "null", "NaN", "Infinity", "-Infinity"])


def _array(items):
    return "[" + ",".join(items) + "]"


def _object(pairs):
    return "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"


_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3).map(_array)
    | st.lists(st.tuples(_strings, inner), max_size=3).map(_object)
    | st.builds(lambda d, v: "[" * d + v + "]" * d, st.sampled_from([1, 2, 50, jobdoc.MAX_DEPTH - 3, jobdoc.MAX_DEPTH, 300]), inner),
    max_leaves=10,
)
_known = {
    "command": st.sampled_from(['"true"', '"true"', '"true"', '"echo \\u00e9"', '""', "1"]) | _strings,
    "id": st.sampled_from(['"job-1"', '".x"', "null"]),
    "max_retries": _ints | _values,
    "timeout": _floats | _ints | _values,
    "priority": _ints | _values,
    "run_at": st.sampled_from(['"2026-12-01T03:00:00Z"', '"2026-12-01"', '"x"']),
    "env": st.lists(st.tuples(_strings, _strings), max_size=2).map(_object) | _values,
    "attempts": _ints | _values,
    "history": _values,
    "previous_runs": _values,
    "state": _strings | _values,
    "created_at": st.sampled_from(['"2026-11-28T12:00:00.000000Z"', "7"]),
    "token": _strings,
    "x-extra": _values,
    "x-number": _floats | _ints,
    "x-list": st.lists(_floats | _ints, max_size=5).map(_array),
}


@st.composite
def job_texts(draw):
    keys = draw(st.lists(st.sampled_from(sorted(_known)), max_size=5))
    pairs = [('"command"', draw(_known["command"]))] + [(json.dumps(k), draw(_known[k])) for k in keys]
    if draw(st.booleans()):
        pairs.append(('"x-dup"', draw(_values)))
        pairs.append(('"x-dup"', draw(_values)))
    w = draw(_ws)
    return w + "{" + f",{w}".join(f"{k}{w}:{w}{v}" for k, v in pairs) + "}" + w


@HYP
@given(job_texts())
def test_whatever_enqueue_accepts_a_worker_accepts_unchanged(text):
    try:
        job, data = enqueue_path(text)
    except JobInvalid:
        return
    again = worker_path(data)
    assert again == job
    assert jobdoc.dumps(again) == data  # the same content, to the spelling of every number


def test_the_property_sees_both_sides():
    # the generator reaches accepted documents with the numbers that used to break the round trip
    accepted = enqueue_path('{"command": "true", "x": [1e308, -0.0, 1E-400, 123456789012345678901234567890]}')[0]
    assert accepted["x"][0] == 1e308


# -- 2. queuectl's own fields have queuectl's types --------------------------------------------


GOOD = {"command": "true"}


@pytest.mark.parametrize(
    "extra, word",
    [
        ({"previous_runs": [1]}, "previous_runs[0]"),
        ({"previous_runs": {}}, "previous_runs"),
        ({"previous_runs": [{"history": ["x"]}]}, "previous_runs[0].history[0]"),
        ({"previous_runs": [{"attempts": "2"}]}, "previous_runs[0].attempts"),
        ({"previous_runs": [{"attempts": -1}]}, "previous_runs[0].attempts"),
        ({"previous_runs": [{"retried_at": 5}]}, "previous_runs[0].retried_at"),
        ({"history": ["x"]}, "history[0]"),
        ({"history": [{"attempt": "1"}]}, "history[0].attempt"),
        ({"history": [{"attempt": None}]}, "history[0].attempt"),
        ({"history": [{"attempt": 1}, {"attempt": -1}]}, "history[1].attempt"),
        ({"history": [{"exit_code": "a"}]}, "history[0].exit_code"),
        ({"history": [{"error": 3}]}, "history[0].error"),
        ({"history": [{"worker": []}]}, "history[0].worker"),
        ({"history": [{"started_at": 1}]}, "history[0].started_at"),
        ({"history": [{"log": "../../etc/passwd"}]}, "history[0].log"),
        ({"history": [{"log": 5}]}, "history[0].log"),
        ({"attempts": "2"}, "attempts"),
        ({"attempts": 2**63}, "attempts"),
        ({"state": 5}, "state"),
        ({"state": "running"}, "state"),
        ({"created_at": 7}, "created_at"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"updated_at": "2026-02-30T00:00:00.000000Z"}, "updated_at"),
        ({"exit_code": "a"}, "exit_code"),
        ({"exit_code": 1.5}, "exit_code"),
        ({"last_error": 3}, "last_error"),
        ({"token": 5}, "token"),
        ({"original_name": ["x"]}, "original_name"),
        ({"priority": 2**63}, "priority"),
        ({"priority": -(2**63) - 1}, "priority"),
        ({"max_retries": 2**63}, "max_retries"),
        ({"timeout": 10**400}, "timeout"),
        ({"timeout": jobdoc.MAX_SECONDS + 1}, "timeout"),
    ],
)
def test_queuectl_fields_of_the_wrong_type_are_refused_naming_the_field(extra, word):
    with pytest.raises(JobInvalid) as e:
        jobdoc.validate(dict(GOOD, **extra))
    assert word in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_queuectl_fields_as_queuectl_writes_them_are_accepted():
    job, _ = jobdoc.accept(dict(GOOD, original_name="weird name.json"), T0, 1)
    for n in range(2):
        job, _ = policy.record_attempt(job, started=T0, finished=T0 + 1, exit_code=None, error="worker lost: h.1.2", worker="h.1.2", log=None, base=2, maximum=0)
        job, _ = policy.record_attempt(job, started=T0, finished=T0 + 1, exit_code=3, error=None, worker="h.1.2", log=f"{job['id']}.{n}.log", base=2, maximum=0)
        assert job["state"] == "dead"
        job = policy.revive(job, T0 + 2)
    for _ in range(20):  # enough revives for trim_runs to merge
        job = policy.revive(job, T0 + 3)
    assert worker_path(jobdoc.dumps(job)) == job
    assert {"exit_code": None, "last_error": None, "state": "pending"}.items() <= job.items()


_entry_values = st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | st.sampled_from(["", "x", "j.1.log", "../x", "j.x.log"]) | st.lists(st.none(), max_size=1)


@HYP
@given(st.dictionaries(st.sampled_from(["attempt", "started_at", "finished_at", "exit_code", "error", "worker", "log", "other"]), _entry_values))
def test_the_fast_check_of_a_history_entry_agrees_with_the_detailed_one(entry):
    def detailed_ok():
        saved = jobdoc._plain_entry
        jobdoc._plain_entry = lambda e: False
        try:
            jobdoc._history("history", [entry])
            return True
        except JobInvalid:
            return False
        finally:
            jobdoc._plain_entry = saved

    assert jobdoc._plain_entry(entry) == detailed_ok()


# -- 3. a stored job stays within read_limit ----------------------------------------------------


def _attempt(job, n, error="x", worker="h.1.2", exit_code=1):
    return policy.record_attempt(job, started=T0 + n, finished=T0 + n + 1, exit_code=exit_code, error=error, worker=worker, log=f"{job['id']}.{n}.log", base=2, maximum=0)[0]


def test_history_keeps_the_first_and_the_latest_attempts():
    job, _ = jobdoc.accept(dict(GOOD, max_retries=100), T0, 3)
    for n in range(1, 31):
        job = _attempt(job, n)
    assert job["attempts"] == 30
    assert [e["attempt"] for e in job["history"]] == [1] + list(range(31 - (jobdoc.HISTORY_KEEP - 1), 31))
    assert job["state"] == "failed"


def test_attempt_numbers_stay_unique_across_trims_and_dlq_rounds():
    job, _ = jobdoc.accept(dict(GOOD, max_retries=13), T0, 3)
    seqs = []
    for _ in range(9):
        while job["state"] != "dead":
            seqs.append(policy.attempt_seq(job))
            job = _attempt(job, seqs[-1])
        job = policy.revive(job, T0)
    assert seqs == list(range(1, 9 * 14 + 1))  # one log name per attempt, never reused
    assert len(job["previous_runs"]) == jobdoc.RUNS_KEEP
    assert sum(r["attempts"] for r in job["previous_runs"]) == 9 * 14
    assert job["previous_runs"][1]["runs"] == 9 - (jobdoc.RUNS_KEEP - 1)
    assert job["previous_runs"][0]["history"][0]["attempt"] == 1  # the very first failure is kept


def test_errors_are_clipped():
    job, _ = jobdoc.accept(GOOD, T0, 3)
    job = _attempt(job, 1, error="could not start: cwd '" + "/x" * 5000 + "' does not exist")
    assert len(job["last_error"]) == jobdoc.ERROR_MAX == len(job["history"][0]["error"])
    assert job["last_error"].endswith("...")


def _padded(size, **fields):
    """A compact writer's document of exactly SIZE bytes."""
    doc = dict(GOOD, **fields, pad="")
    doc["pad"] = "p" * (size - len(json.dumps(doc, separators=(",", ":"))))
    text = json.dumps(doc, separators=(",", ":"))
    assert len(text) == size
    return text


@HYP
@given(
    st.integers(256, 20000),
    st.lists(st.sampled_from(["ok", "fail", "lost", "revive"]), max_size=80),
    st.sampled_from(["\x01", "é", "\U0001f600", "a"]),
)
def test_a_job_accepted_at_the_limit_never_outgrows_read_limit(limit, steps, char):
    # worst-case inputs: the longest error (escaped characters), worker id and log name
    text = _padded(limit, id="i" * 128, run_at="2026-12-01", max_retries=2**63 - 1, priority=-(2**63))
    job, data = enqueue_path(text, limit)
    worker = "h" * 200 + ".4194304.1099511627776"
    for n, step in enumerate(steps):
        if step == "revive":
            job = policy.revive(job, T0 + n)
        else:
            code = {"ok": 0, "fail": 2**31, "lost": None}[step]
            job = policy.record_attempt(
                job, started=T0, finished=T0 + n, exit_code=code, error=None if code == 0 else char * 10000,
                worker=worker, log=f"{job['id']}.{2**63}.log", base=2, maximum=0,
            )[0]
        size = len(jobdoc.dumps(job))
        assert size <= jobdoc.read_limit(limit), (step, size)
    assert worker_path(jobdoc.dumps(job)) == job


def test_check_size_measures_the_writers_bytes_and_the_stored_form():
    for limit in (256, 1024, 1 << 20):
        text = _padded(limit - 3)
        job, data = enqueue_path(text, limit)
        assert len(data) > limit  # queuectl's fields pushed the stored job over: that is allowed
        with pytest.raises(JobInvalid, match="max-job-bytes"):
            enqueue_path(_padded(limit + 1), limit)
    # numbers come back in Python's spelling: 1e15 takes 18 bytes; such a job is refused up front
    floats = '{"command":"true","x":[' + ",".join(["1e15"] * 300) + "]}"
    with pytest.raises(JobInvalid, match="as stored"):
        enqueue_path(floats, len(floats))


def test_read_limit_is_the_limit_plus_a_fixed_budget():
    assert jobdoc.read_limit(1024) - 1024 == jobdoc.read_limit(1 << 20) - (1 << 20) == jobdoc.FIELDS_BUDGET + jobdoc.GROWTH_BUDGET
    assert jobdoc.read_limit(settings.BY_KEY["max-job-bytes"].high) < 1 << 30  # the views read up to 1 GiB


# -- 4. commands that could never start ---------------------------------------------------------

STRLEN = jobdoc.MAX_ARG_STRLEN


@pytest.mark.parametrize(
    "doc, word",
    [
        ({"command": "x" * STRLEN}, "command is 131072 bytes"),
        ({"command": "\u00e9" * (STRLEN // 2)}, "command is 131072 bytes"),  # bytes, not characters
        ({"command": "true", "env": {"A": "v" * (STRLEN - 2)}}, "env['A']"),
        ({"command": "true", "env": {f"V{i}": "v" * 100000 for i in range(80)}}, "ARG_MAX"),
    ],
)
def test_commands_too_big_to_exec_are_refused(doc, word):
    with pytest.raises(JobInvalid) as e:
        jobdoc.validate(doc)
    assert word in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_commands_at_the_exec_limits_are_accepted():
    jobdoc.validate({"command": "x" * (STRLEN - 1)})
    jobdoc.validate({"command": "true", "env": {"A": "v" * (STRLEN - 3)}})


def _largest_env(room):
    """A job env that needs exactly ROOM bytes of exec space with `/bin/sh -c true`."""
    env, need = {}, len("/bin/sh") + 1 + len("-c") + 1 + len("true") + 1 + 8 * 4
    i = 0
    while need < room:
        k = f"V{i}"
        size = min(STRLEN - 1 - len(k) - 1, room - need - len(k) - 2 - 8)
        if size < 0:
            break
        env[k] = "v" * size
        need += len(k) + 1 + size + 1 + 8
        i += 1
    return env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's exec limits")
def test_the_exec_limits_are_the_kernels():
    """What the validator accepts does start here (with this process's environment, well under
    ENV_RESERVE), and what it refuses at the per-string limit really cannot."""
    import subprocess

    room = jobdoc.exec_limit() - jobdoc.ENV_RESERVE
    env = _largest_env(room)
    jobdoc.validate({"command": "true", "env": env})
    with pytest.raises(JobInvalid):
        jobdoc.validate({"command": "true", "env": dict(env, more="x" * 100)})
    assert sum(len(k) + len(v) + 2 for k, v in os.environ.items()) < jobdoc.ENV_RESERVE // 2
    subprocess.run(["/bin/sh", "-c", "true"], env=dict(os.environ, **env), check=True)
    subprocess.run(["/bin/sh", "-c", ": " + "x" * (STRLEN - 3)], check=True)
    with pytest.raises(OSError) as e:
        subprocess.run(["/bin/sh", "-c", ": " + "x" * (STRLEN - 2)])
    assert e.value.errno == 7  # E2BIG


# -- 5. settings have ranges ------------------------------------------------------------------


@pytest.mark.parametrize("s", [s for s in settings.TABLE if s.kind != "users"], ids=lambda s: s.key)
def test_every_setting_has_a_range_and_its_ends_are_the_messages(s):
    assert s.low is not None and s.high is not None and s.low <= s.default <= s.high
    assert settings.parse_value(s.key, str(s.high)) == s.high
    if not s.low_open:
        assert settings.parse_value(s.key, str(s.low)) == s.low
    for bad in (s.low if s.low_open else s.low - 1, s.high + 1, s.high * 10**6, "1e400", 10**400):
        with pytest.raises(BadInput) as e:
            settings.parse_value(s.key, bad if isinstance(bad, str) else str(bad))
        assert str(e.value) == f"{s.key} must be {settings.describe(s)}"
        assert str(s.high) in str(e.value)
    assert f"| `{s.key}` | {settings.describe(s)} |" in settings.markdown_table()


def test_stored_values_out_of_range_keep_the_default():
    eff = settings.effective({"heartbeat-seconds": 1e10, "backoff-max": 10**400, "max-job-bytes": 10, "max-retries": 7, "lease-seconds": 1e12})
    assert (eff["heartbeat-seconds"], eff["backoff-max"], eff["max-job-bytes"], eff["lease-seconds"]) == (5, 3600, 1048576, 30)
    assert eff["max-retries"] == 7


def test_a_stored_heartbeat_too_slow_for_the_lease_is_read_as_a_third_of_it():
    assert settings.effective({"lease-seconds": 6})["heartbeat-seconds"] == 2
    assert settings.effective({"lease-seconds": 60, "heartbeat-seconds": 20})["heartbeat-seconds"] == 20
    assert settings.effective({"lease-seconds": 0.6, "heartbeat-seconds": 0.2})["heartbeat-seconds"] == 0.2


def test_config_set_refuses_a_heartbeat_too_slow_for_the_lease(tmp_path):
    path = str(tmp_path / "config.json")
    with pytest.raises(BadInput) as e:
        settings.set_value(path, "heartbeat-seconds", "11")
    msg = str(e.value)
    assert "heartbeat-seconds 11" in msg and "lease-seconds 30" in msg and "10 or less" in msg
    with pytest.raises(BadInput) as e:
        settings.set_value(path, "lease-seconds", "14")
    msg = str(e.value)
    assert "lease-seconds 14" in msg and "heartbeat-seconds 5" in msg and "15 or more" in msg
    assert not os.path.exists(path)
    settings.set_value(path, "heartbeat-seconds", "10")
    settings.set_value(path, "heartbeat-seconds", "0.2")
    settings.set_value(path, "lease-seconds", "0.6")  # 0.2 * 3 is 0.6000000000000001 in floats
    with pytest.raises(BadInput, match="0.2 or less"):
        settings.set_value(path, "heartbeat-seconds", "0.21")
    assert settings.read_file(path) == {"heartbeat-seconds": 0.2, "lease-seconds": 0.6}


def test_the_documents_state_the_limits_the_code_has():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    layout = open(os.path.join(root, "spool_layout.md"), encoding="utf-8").read()
    readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    assert f"`max-job-bytes` + {jobdoc.read_limit(0)} bytes" in layout
    assert f"plus about {jobdoc.read_limit(0) // 1024} KiB" in readme
    assert f"`max-job-bytes` + {jobdoc.FIELDS_BUDGET} bytes" in layout
    for doc in (layout, readme):
        assert f"latest {jobdoc.HISTORY_KEEP - 1}" in doc and f"latest {jobdoc.RUNS_KEEP - 2}" in doc
        assert f"{jobdoc.ERROR_MAX} characters" in doc and f"{jobdoc.MAX_ARG_STRLEN - 1} bytes" in doc
        assert f"{jobdoc.ENV_RESERVE // 1024} KiB" in doc and f"{jobdoc.MAX_DEPTH} levels" in doc
        assert f"{jobdoc.MAX_INT_DIGITS} digits" in doc and f"{jobdoc.MAX_SECONDS}" in doc
