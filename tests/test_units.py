"""Unit tests of the protocol's corners: names, ids, validation, the retry policy, settings, the due order.

These import queuectl directly; nothing here starts a process.
"""

import json
import os
import re
import time
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, assume, given, settings as hsettings, strategies as st

from queuectl import job as jobdoc
from queuectl import layout as sp
from queuectl import policy, settings
from queuectl.dueindex import DueIndex
from queuectl.errors import BadInput, JobInvalid
from queuectl.timeutil import iso, parse_iso, parse_stamp, stamp

HYP = hsettings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ID_RE_FULL = r"\A[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\Z"
ids = st.from_regex(ID_RE_FULL)
hosts = st.from_regex(r"\A[A-Za-z0-9.-]{1,30}\Z")
namespaces = st.from_regex(r"\A[0-9a-f]{8}\Z")
worker_ids = st.one_of(
    st.builds(sp.worker_name, hosts, st.integers(1, 2**22), st.integers(0, 2**40), namespaces),
    st.builds(lambda host, pid, start: f"{host}.{pid}.{start}", hosts, st.integers(1, 2**22), st.integers(0, 2**40)),  # old ids
)


def ts_of(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


T0 = ts_of("2026-11-28T12:00:00Z")


# -- pending names ---------------------------------------------------------------------------


def test_pending_name_format():
    assert sp.pending_name(T0 + 4, "abc") == "20261128T120004.000000Z_abc.json"
    assert sp.pending_name(T0 + 4.123456, "a.b-c_d") == "20261128T120004.123456Z_a.b-c_d.json"
    # always the 6-digit fraction, so that `ls` order is due order
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z_x\.json", sp.pending_name(time.time(), "x"))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("20261128T120004.000000Z_abc.json", (T0 + 4, "abc")),
        ("20261128T120004Z_abc.json", (T0 + 4, "abc")),  # the fraction is optional
        ("20261128T120004.5Z_abc.json", (T0 + 4.5, "abc")),  # 1-6 digits
        ("20261128T120004.000001Z_-x.json", (T0 + 4.000001, "-x")),
        ("20261128T120004.000000Z_" + "a" * 128 + ".json", (T0 + 4, "a" * 128)),
    ],
)
def test_parse_pending_canonical(name, expected):
    nb, job_id = sp.parse_pending(name)
    assert job_id == expected[1]
    assert nb == pytest.approx(expected[0], abs=1e-6)


@pytest.mark.parametrize(
    "name",
    [
        "job.json",  # a drop-in: no time prefix
        "my job.json",
        "20261128T120004.000000Z_abc",  # no .json
        "20261128T120004.000000Z_abc.json.tmp",
        "20261128T120004.0000001Z_abc.json",  # 7 fraction digits
        "20261128T120004.000000_abc.json",  # no Z
        "20261128T1200.000000Z_abc.json",  # short time
        "20261399T120004.000000Z_abc.json",  # matches the grammar but is no date
        "20261128T250000.000000Z_abc.json",
        "20261128T120004.000000Z_.abc.json",  # the id starts with '.'
        "20261128T120004.000000Z_a b.json",
        "20261128T120004.000000Z_" + "a" * 129 + ".json",  # 129-char id
        "20261128T120004.000000Z_abc.json\n",
        "",
    ],
)
def test_parse_pending_rejects_everything_else(name):
    assert sp.parse_pending(name) == (None, None)


@HYP
@given(
    when=st.datetimes(min_value=datetime(1700, 1, 1), max_value=datetime(2200, 12, 31)),
    job_id=ids,
)
def test_pending_name_round_trip(when, job_id):
    ts = when.replace(tzinfo=timezone.utc).timestamp()
    name = sp.pending_name(ts, job_id)
    assert sp.PENDING_RE.match(name)
    assert len(name) <= 255
    nb, got_id = sp.parse_pending(name)
    assert got_id == job_id
    assert abs(nb - ts) <= 1e-6
    assert sp.pending_name(nb, got_id) == name  # name -> parse -> name is the identity
    assert name.startswith(when.strftime("%Y%m%dT%H%M%S.") + f"{when.microsecond:06d}Z_")


@HYP
@given(
    a=st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)),
    b=st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)),
    ida=ids,
    idb=ids,
)
def test_pending_names_sort_in_due_order(a, b, ida, idb):
    ta, tb = (x.replace(tzinfo=timezone.utc).timestamp() for x in (a, b))
    na, nb = sp.pending_name(ta, ida), sp.pending_name(tb, idb)
    sa, sb = stamp(ta), stamp(tb)
    assume(sa != sb)
    assert (na < nb) == (sa < sb) == (ta < tb)


def test_years_before_1000_keep_the_grammar():
    # %Y does not pad years < 1000: the name would stop matching the pending grammar
    ts = parse_iso("0999-01-01T00:00:00Z")
    assert iso(ts) == "0999-01-01T00:00:00.000000Z"
    assert stamp(ts) == "09990101T000000.000000Z"
    assert parse_iso(iso(ts)) == ts
    assert sp.parse_pending(sp.pending_name(ts, "old")) == (ts, "old")
    job, nb = jobdoc.accept({"command": "true", "run_at": "0999-01-01T00:00:00Z"}, T0, 3)
    assert job["run_at"] == "0999-01-01T00:00:00.000000Z" and nb == ts


def test_parse_stamp_and_stamp():
    assert stamp(T0 + 0.25) == "20261128T120000.250000Z"
    assert parse_stamp("20261128T120000.250000Z") == T0 + 0.25
    assert parse_stamp("20261128T120000Z") == T0
    with pytest.raises(ValueError):
        parse_stamp("20261128T120000")


# -- claims, finals, logs, drop-ins ----------------------------------------------------------


def test_claim_names():
    wid = "host-1.example.1234.56789"
    pname = "20261128T120000.000000Z_a.b.json"
    assert sp.claim_name("run", pname, wid) == "20261128T120000.000000Z_a.b@host-1.example.1234.56789.json"
    assert sp.parse_claim("20261128T120000.000000Z_a.b@host-1.example.1234.56789.json")[1:] == ("run", pname, "a.b", wid)
    assert sp.claim_name("run", pname, "other.1.2") == "20261128T120000.000000Z_a.b@other.1.2.json"
    assert sp.claim_name("adopt", "x y", "other.1.2") == "x y@other.1.2.adopt"
    assert sp.claim_name("adopt", "my job@x.json", wid) == "my job@x.json@host-1.example.1234.56789.adopt"
    assert sp.parse_claim("my job@x.json@host-1.example.1234.56789.adopt")[1:] == ("adopt", "my job@x.json", None, wid)
    assert sp.parse_claim("odd\nname@h.1.2.adopt")[1:] == ("adopt", "odd\nname", None, "h.1.2")
    assert sp.claim_name("revive", "a.b.json", wid) == "a.b@host-1.example.1234.56789.revive"
    assert sp.parse_claim("a.b@h.1.2.revive")[1:] == ("revive", "a.b.json", "a.b", "h.1.2")
    for bad in ("a.b@host-1.example.1234.56789.json", "a@host.json", "a@host.1.json", "a@host.1.x.json", ".a@h.1.2.json", "a@h_x.1.2.json", "a.json", "a@h.1.2.adopt.json", "@h.1.2.adopt", ".a@h.1.2.revive", "x@h.1.2.cancel"):
        assert sp.parse_claim(bad) is None, bad


def test_claim_names_with_new_worker_ids():
    wid = "host-1.example.1234.56789.n0badcafe"
    pname = "20261128T120000.000000Z_a.b.json"
    assert sp.claim_name("run", pname, wid) == "20261128T120000.000000Z_a.b@host-1.example.1234.56789.n0badcafe.json"
    assert sp.parse_claim(sp.claim_name("run", pname, wid))[1:] == ("run", pname, "a.b", wid)
    assert sp.parse_claim("x y@h.1.2.n0badcafe.adopt")[1:] == ("adopt", "x y", None, "h.1.2.n0badcafe")
    assert sp.parse_claim("a.b@h.1.2.n0badcafe.revive")[1:] == ("revive", "a.b.json", "a.b", "h.1.2.n0badcafe")
    for bad in ("x@h.1.2.n0badcaf.adopt", "x@h.1.2.n0BADCAFE.adopt", "x@h.1.2.0badcafe1.adopt", "x@h.1.2.n0badcafe0.adopt", "x@h.1.n0badcafe.adopt", "x@h.n0badcafe.1.2.x.adopt"):
        assert sp.parse_claim(bad) is None, bad


def test_worker_ids_parse_in_both_forms():
    assert sp.parse_worker("host-1.example.1234.56789.n0badcafe") == ("host-1.example", 1234, 56789, "0badcafe")
    assert sp.parse_worker("host-1.example.1234.56789") == ("host-1.example", 1234, 56789, None)  # old: namespace unknown
    assert sp.parse_worker("h.12345678.1.2") == ("h.12345678", 1, 2, None)  # a hex-looking host label is the host's
    assert sp.parse_heartbeat("h.1.2.n0badcafe.json") == ("h.1.2.n0badcafe", False)
    assert sp.parse_heartbeat(".h.1.2.n0badcafe.0a1b2c.tmp") == ("h.1.2.n0badcafe", True)
    assert sp.TMP_RE.match("qc-h.1.2.n0badcafe-0a1b2c3d4e5f.enqueue").group(1) == "h.1.2.n0badcafe"
    for bad in ("h.1", "h.1.x", "h_x.1.2", "h.1.2.n0badcaf", "h.1.2.nbadcafe0x", ".1.2", "h.1.2.n0badcafe.n0badcafe"):
        assert sp.parse_worker(bad) is None, bad


@HYP
@given(wid=worker_ids)
def test_worker_id_round_trip(wid):
    w = sp.parse_worker(wid)
    assert w is not None
    assert wid == (sp.worker_name(*w) if w.ns else f"{w.host}.{w.pid}.{w.start}")


def test_real_worker_id_is_in_the_grammar():
    from queuectl.procs import namespace, split_worker_id, worker_id

    wid = worker_id()
    assert re.fullmatch(r"[A-Za-z0-9.-]+\.\d+\.\d+\.n[0-9a-f]{8}", wid)
    assert split_worker_id(wid)[1] == os.getpid() and split_worker_id(wid).ns == namespace()
    assert sp.parse_claim(sp.claim_name("run", sp.pending_name(1.5, "x"), wid))[2:] == (sp.pending_name(1.5, "x"), "x", wid)


@HYP
@given(job_id=ids, wid=worker_ids, original=st.text(min_size=1, max_size=60).filter(lambda s: "/" not in s and "\0" not in s))
def test_claim_round_trip(job_id, wid, original):
    pname = sp.pending_name(1795000000.5, job_id)
    for op, origin, key in (("run", pname, job_id), ("revive", sp.final_name(job_id), job_id), ("adopt", original, None)):
        name = sp.claim_name(op, origin, wid)
        assert sp.parse_claim(name) == (name, op, origin, key, wid)


def test_final_and_log_names():
    assert sp.final_name("a.b") == "a.b.json"
    assert sp.FINAL_RE.match("a.b.json").group(1) == "a.b"
    assert sp.FINAL_RE.match(".a.json") is None
    assert sp.log_name("a.b", 3) == "a.b.3.log"
    m = sp.LOG_RE.match("a.b.3.log")
    assert m.groups() == ("a.b", "3")
    assert sp.LOG_RE.match("a.b.x.log") is None


@pytest.mark.parametrize(
    "name, expected",
    [
        ("20261128T120004.000000Z_abc.json", "abc"),  # a canonical name carries its id
        ("abc.json", "abc"),
        ("abc", "abc"),
        ("abc.json.json", "abc.json"),
        ("report-2026-11-28.json", "report-2026-11-28"),
        ("a" * 128 + ".json", "a" * 128),
        ("a" * 129 + ".json", None),
        ("my job.json", None),
        (".hidden.json", None),
        (".json", None),
        ("..json", None),
        ("é.json", None),
        ("a\n.json", None),
    ],
)
def test_dropin_id(name, expected):
    assert sp.dropin_id(name) == expected


# -- ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "A" * 128, "-a", "_a", "0", "a..b", "a.", "a-b_c.D9", "x" * 127 + "."])
def test_valid_ids(value):
    assert jobdoc.valid_id(value)


@pytest.mark.parametrize(
    "value",
    ["", "A" * 129, ".a", ".", "..", "../x", "a/b", "/", "a b", "a@b", "a\n", "\na", "é", "a\0", None, 5, ["a"], b"abc"],
)
def test_invalid_ids(value):
    assert not jobdoc.valid_id(value)


def test_new_id_is_valid_unique_and_sorts_by_time():
    a = jobdoc.new_id(T0)
    b = jobdoc.new_id(T0)
    c = jobdoc.new_id(T0 + 0.001)
    assert jobdoc.valid_id(a) and jobdoc.valid_id(c)
    assert a != b
    assert a.split("-")[0] == b.split("-")[0] < c.split("-")[0]


# -- validation ------------------------------------------------------------------------------

GOOD = {"command": "echo hi"}


@pytest.mark.parametrize(
    "extra, word",
    [
        ({"command": None}, "command"),
        ({"command": 5}, "command"),
        ({"command": ["ls"]}, "command"),
        ({"command": ""}, "command"),
        ({"command": "  \t\n"}, "command"),
        ({"command": "a\0b"}, "command"),
        ({"id": ""}, "id"),
        ({"id": 5}, "id"),
        ({"id": ".a"}, "id"),
        ({"id": "a/b"}, "id"),
        ({"id": ".."}, "id"),
        ({"id": "x" * 129}, "id"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"max_retries": 2.0}, "max_retries"),
        ({"max_retries": "3"}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": "5"}, "timeout"),
        ({"timeout": False}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"priority": 1.5}, "priority"),
        ({"priority": "1"}, "priority"),
        ({"priority": True}, "priority"),
        ({"run_at": 5}, "run_at"),
        ({"run_at": ""}, "run_at"),
        ({"run_at": "tomorrow"}, "run_at"),
        ({"run_at": "2026-13-01T00:00:00"}, "run_at"),
        ({"run_at": "2026-11-28T12:00:00+25:00"}, "run_at"),
        ({"run_at": ["2026-11-28"]}, "run_at"),
        ({"cwd": 5}, "cwd"),
        ({"cwd": ""}, "cwd"),
        ({"cwd": ["/"]}, "cwd"),
        ({"cwd": "/tmp\0x"}, "cwd"),
        ({"env": []}, "env"),
        ({"env": "A=1"}, "env"),
        ({"env": {"A": 1}}, "env"),
        ({"env": {"A": None}}, "env"),
        ({"env": {"A": ["x"]}}, "env"),
        ({"env": {"": "x"}}, "env"),
        ({"env": {"A=B": "x"}}, "env"),
        ({"env": {"A": "x\0y"}}, "env"),
        ({"attempts": -1}, "attempts"),
        ({"history": {}}, "history"),
        ({"previous_runs": "x"}, "previous_runs"),
        ({"token": 5}, "token"),
    ],
)
def test_validate_type_errors(extra, word):
    doc = dict(GOOD, **extra)
    with pytest.raises(JobInvalid) as e:
        jobdoc.validate(doc)
    assert word in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(JobInvalid):
        jobdoc.accept(doc, T0, 3)


def test_validate_missing_command_and_non_objects():
    with pytest.raises(JobInvalid, match="command"):
        jobdoc.validate({"id": "x"})
    for doc in ([], "x", 5, None, [{"command": "x"}]):
        with pytest.raises(JobInvalid, match="object"):
            jobdoc.validate(doc)


def test_validate_keeps_unknown_fields_and_does_not_mutate():
    doc = {
        "command": "true",
        "owner": {"team": "ops", "n": [1, 2.5, None]},
        "tags": ["a"],
        "x-extra": None,
        "max_retries": 0,
        "timeout": 0.5,
        "priority": -3,
        "cwd": "/tmp",
        "env": {"A": "1", "B": ""},
    }
    before = json.loads(json.dumps(doc))
    out = jobdoc.validate(doc)
    assert doc == before
    assert out == doc and out is not doc
    job, nb = jobdoc.accept(doc, T0, 7)
    assert doc == before
    for k, v in doc.items():
        assert job[k] == v, k  # writer's fields kept, including max_retries 0 (not replaced by the setting)
    assert nb == T0


def test_validate_normalises_run_at_to_utc():
    assert jobdoc.validate(dict(GOOD, run_at="2026-11-28T13:00:00+01:00"))["run_at"] == "2026-11-28T12:00:00.000000Z"
    assert jobdoc.validate(dict(GOOD, run_at="2026-11-28T12:00:00Z"))["run_at"] == "2026-11-28T12:00:00.000000Z"
    assert jobdoc.validate(dict(GOOD, run_at="2026-11-28T12:00:00.5z"))["run_at"] == "2026-11-28T12:00:00.500000Z"
    assert jobdoc.validate(dict(GOOD, run_at="2026-11-28T12:00:00.000000Z"))["run_at"] == "2026-11-28T12:00:00.000000Z"


@pytest.fixture
def tz_plus3(monkeypatch):
    """The host's local time is UTC+3 (POSIX TZ sign is reversed) for the test's duration."""
    monkeypatch.setenv("TZ", "QQQ-3")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_run_at_without_offset_is_local_time(tz_plus3):
    assert jobdoc.validate(dict(GOOD, run_at="2026-11-28T15:00:00"))["run_at"] == "2026-11-28T12:00:00.000000Z"
    assert jobdoc.validate(dict(GOOD, run_at="2026-11-28T15:00:00+00:00"))["run_at"] == "2026-11-28T15:00:00.000000Z"
    job, nb = jobdoc.accept(dict(GOOD, run_at="2026-11-28 15:00"), T0 + 999, 3)
    assert nb == T0


def test_accept_fills_queuectl_fields():
    job, nb = jobdoc.accept({"command": "true"}, T0, 3)
    assert nb == T0  # due at its enqueue time
    assert jobdoc.valid_id(job["id"])
    assert job["max_retries"] == 3
    assert job["priority"] == 0
    assert job["state"] == "pending"
    assert job["attempts"] == 0
    assert job["created_at"] == job["updated_at"] == "2026-11-28T12:00:00.000000Z"
    assert job["exit_code"] is None and job["last_error"] is None
    assert job["history"] == []
    assert re.fullmatch(r"[0-9a-f]{16}", job["token"])


def test_accept_overrides_queuectl_fields_given_by_the_writer():
    doc = {
        "command": "true",
        "id": None,
        "max_retries": None,
        "state": "dead",
        "attempts": 5,
        "history": [{"attempt": 1}],
        "exit_code": 3,
        "last_error": "x",
        "token": "forged",
        "created_at": "2000-01-01T00:00:00Z",
    }
    job, _ = jobdoc.accept(doc, T0, 4, token="t0k")
    assert jobdoc.valid_id(job["id"])
    assert job["max_retries"] == 4
    assert (job["state"], job["attempts"], job["history"], job["exit_code"], job["last_error"]) == ("pending", 0, [], None, None)
    assert job["token"] == "t0k"
    assert job["created_at"] == iso(T0)


def test_accept_id_sources():
    assert jobdoc.accept({"command": "x", "id": "given"}, T0, 3, job_id="name")[0]["id"] == "given"
    assert jobdoc.accept({"command": "x"}, T0, 3, job_id="name")[0]["id"] == "name"


def test_accept_run_at_past_and_future():
    _, nb = jobdoc.accept(dict(GOOD, run_at="2020-01-01T00:00:00Z"), T0, 3)
    assert nb == ts_of("2020-01-01T00:00:00Z")
    _, nb = jobdoc.accept(dict(GOOD, run_at="2099-01-01T00:00:00Z"), T0, 3)
    assert nb == ts_of("2099-01-01T00:00:00Z")


@pytest.mark.parametrize(
    "data, word",
    [
        (b"\xff{}", "UTF-8"),
        (b'{"command": "x"', "JSON"),
        (b"", "JSON"),
        (b'{"command": "x", "timeout": NaN}', "NaN"),
        (b'{"command": "x", "timeout": Infinity}', "Infinity"),
        (b'{"command": "x", "timeout": -Infinity}', "Infinity"),
        (b"[1]", "object"),
        (b"null", "object"),
        (b'"x"', "object"),
        (b"[" * 100000 + b"]" * 100000, "JSON"),
        (b'{"command": "echo \\ud800"}', "surrogate"),
        (b'{"command": "x", "\\udfff": 1}', "surrogate"),
        (b'{"command": "x", "a": {"b": ["\\udc80"]}}', "surrogate"),
    ],
)
def test_parse_bytes_errors(data, word):
    with pytest.raises(JobInvalid) as e:
        jobdoc.validate(jobdoc.parse_bytes(data))
    assert word in str(e.value)


def test_parse_accepts_surrogate_pairs():
    doc = jobdoc.parse_bytes(b'{"command": "echo \\ud83d\\ude00"}')
    assert doc["command"] == "echo \U0001F600"


def test_dumps_parse_round_trip():
    job, _ = jobdoc.accept({"command": "echo é \U0001F600", "env": {"K": "ü"}, "x": [1, {"y": None}]}, T0, 3)
    data = jobdoc.dumps(job)
    assert data.endswith(b"\n")
    assert jobdoc.validate(jobdoc.parse_bytes(data)) == job


@HYP
@given(st.binary(max_size=300))
def test_parse_bytes_raises_only_job_invalid(data):
    try:
        jobdoc.validate(jobdoc.parse_bytes(data))
    except JobInvalid:
        pass


_text = st.text(max_size=20) | st.builds(lambda a, s: a + s, st.text(max_size=5), st.sampled_from(["\ud800", "\udfff", "\udcff"]))
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_iso_times = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(lambda d: d.isoformat()) | st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(timezone.utc)
).map(lambda d: d.isoformat())
_FIELDS = {
    "command": st.text(max_size=20) | _json_values,
    "id": ids | _json_values,
    "max_retries": st.integers(-2, 2**70) | _json_values,
    "timeout": st.floats() | st.integers(-2, 10) | _json_values,
    "priority": st.integers() | _json_values,
    "run_at": _iso_times | _json_values,
    "cwd": _text | _json_values,
    "env": st.dictionaries(_text, _text, max_size=3) | _json_values,
    "attempts": st.integers(-1, 5) | _json_values,
    "history": st.lists(_json_values, max_size=2) | _json_values,
    "previous_runs": st.lists(_json_values, max_size=2) | _json_values,
    "token": _text | _json_values,
    "unknown": _json_values,
}
_job_docs = st.fixed_dictionaries({}, optional=_FIELDS)


@HYP
@given(doc=_job_docs | _json_values)
def test_parse_and_validate_raise_only_job_invalid(doc):
    """Any JSON text: either JobInvalid, or a job that can be stored and read back unchanged."""
    text = json.dumps(doc)  # ensure_ascii: lone surrogates travel as \\udXXX escapes, as in a file
    try:
        parsed = jobdoc.parse_text(text)
        job, nb = jobdoc.accept(parsed, T0, 3)
    except JobInvalid:
        return
    data = jobdoc.dumps(job)  # must not raise: what is accepted can be written
    assert jobdoc.validate(jobdoc.parse_bytes(data)) == job
    assert sp.parse_pending(sp.pending_name(nb, job["id"]))[1] == job["id"]
    # the stored run_at is the not-before time
    if job.get("run_at"):
        assert parse_iso(job["run_at"]) == nb


@HYP
@given(st.text(max_size=40))
def test_parse_iso_raises_only_job_invalid(text):
    try:
        ts = parse_iso(text)
    except JobInvalid:
        return
    assert parse_iso(iso(ts)) == pytest.approx(ts, abs=1e-6)


# -- the retry policy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attempts, base, maximum, expected",
    [
        (0, 2, 3600, 1),
        (1, 2, 3600, 2),
        (2, 2, 3600, 4),
        (3, 2, 3600, 8),
        (11, 2, 3600, 2048),
        (12, 2, 3600, 3600),  # 4096 capped
        (1, 3, 3600, 3),
        (2, 1.5, 3600, 2.25),
        (50, 1, 3600, 1),
        (3, 2, 0, 0),
        (100000, 2, 3600, 3600),  # 2.0 ** 100000 overflows a float
        (5000, 10, 1e300, 1e300),
    ],
)
def test_backoff(attempts, base, maximum, expected):
    assert policy.backoff(attempts, base, maximum) == expected


def _job(**kw):
    job, _ = jobdoc.accept(dict({"id": "j", "command": "false", "max_retries": 2}, **kw), T0, 3)
    return job


def _attempt(job, exit_code=1, error=None, started=T0 + 10, finished=T0 + 11, base=2, maximum=3600):
    return policy.record_attempt(
        job, started=started, finished=finished, exit_code=exit_code, error=error, worker="h.1.2", log="j.1.log", base=base, maximum=maximum
    )


def test_record_attempt_completed():
    job = _job()
    done, nb = _attempt(job, exit_code=0)
    assert nb is None
    assert done["state"] == "completed"
    assert done["attempts"] == 1
    assert done["exit_code"] == 0 and done["last_error"] is None
    assert done["updated_at"] == iso(T0 + 11)
    assert done["history"] == [
        {
            "attempt": 1,
            "started_at": iso(T0 + 10),
            "finished_at": iso(T0 + 11),
            "exit_code": 0,
            "error": None,
            "worker": "h.1.2",
            "log": "j.1.log",
        }
    ]
    assert job["attempts"] == 0 and job["history"] == []  # the input is not changed


def test_record_attempt_failures_then_dead():
    job = _job()  # max_retries 2: at most 3 runs
    job, nb = _attempt(job, exit_code=3, finished=T0 + 11)
    assert (job["state"], job["attempts"], job["exit_code"]) == ("failed", 1, 3)
    assert job["last_error"] == "exited with status 3"
    assert nb == T0 + 11 + 2
    job, nb = _attempt(job, exit_code=4, finished=T0 + 20)
    assert (job["state"], job["attempts"]) == ("failed", 2)
    assert nb == T0 + 20 + 4
    job, nb = _attempt(job, exit_code=5, finished=T0 + 30)
    assert (job["state"], job["attempts"], nb) == ("dead", 3, None)
    assert [h["attempt"] for h in job["history"]] == [1, 2, 3]
    assert [h["exit_code"] for h in job["history"]] == [3, 4, 5]
    assert job["last_error"] == "exited with status 5"


def test_record_attempt_max_retries_zero_is_dead_at_once():
    job, nb = _attempt(_job(max_retries=0), exit_code=1)
    assert (job["state"], job["attempts"], nb) == ("dead", 1, None)


def test_record_attempt_null_exit_code_and_errors():
    job, nb = _attempt(_job(), exit_code=None, error="timed out after 5 s")
    assert (job["state"], job["exit_code"], job["last_error"]) == ("failed", None, "timed out after 5 s")
    assert job["history"][0]["error"] == "timed out after 5 s"
    assert nb == T0 + 11 + 2
    # exit 0 with an error (e.g. the attempt could not be recorded properly) is not a success
    job, nb = _attempt(_job(), exit_code=0, error="worker lost")
    assert job["state"] == "failed" and nb is not None
    # killed by a signal: 128 + N is a failure with an error message
    job, _ = _attempt(_job(), exit_code=137)
    assert job["state"] == "failed" and "137" in job["last_error"]


def test_record_attempt_backoff_settings():
    job, nb = _attempt(_job(), exit_code=1, base=1, finished=T0)
    assert nb == T0 + 1
    job, nb = _attempt(_job(), exit_code=1, maximum=0, finished=T0)
    assert nb == T0
    job, nb = _attempt(job, exit_code=1, base=10, maximum=5, finished=T0)
    assert nb == T0 + 5


def test_record_attempt_huge_backoff_stays_writable():
    # backoff-max accepts any number of seconds: the not-before time must still make a pending name
    job, nb = _attempt(_job(), exit_code=1, base=1e12, maximum=1e12, finished=T0)
    assert nb is not None and nb > T0 + 1e9
    assert sp.parse_pending(sp.pending_name(nb, "j"))[1] == "j"


def test_revive():
    job = _job(max_retries=0)
    dead, _ = _attempt(job, exit_code=3)
    assert dead["state"] == "dead"
    back = policy.revive(dead, T0 + 100)
    assert (back["state"], back["attempts"], back["history"], back["exit_code"], back["last_error"]) == ("pending", 0, [], None, None)
    assert back["updated_at"] == iso(T0 + 100)
    assert back["previous_runs"] == [{"retried_at": iso(T0 + 100), "attempts": 1, "history": dead["history"]}]
    assert dead["state"] == "dead" and "previous_runs" not in dead  # input unchanged
    assert policy.attempt_seq(back) == 2  # log numbering continues across rounds
    again, _ = _attempt(back, exit_code=4)
    assert again["attempts"] == 1 and again["history"][0]["attempt"] == 1
    assert again["state"] == "dead"
    third = policy.revive(again, T0 + 200)
    assert [r["attempts"] for r in third["previous_runs"]] == [1, 1]
    assert third["previous_runs"][0]["history"][0]["exit_code"] == 3
    assert third["previous_runs"][1]["history"][0]["exit_code"] == 4
    assert policy.attempt_seq(third) == 3


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("max-retries", "0", 0),
        ("max-retries", "5", 5),
        ("max-retries", " 4 ", 4),
        ("max-retries", "2.0", 2),
        ("max-retries", 7, 7),
        ("max-job-bytes", "1024", 1024),
        ("backoff-max", "0", 0),
        ("backoff-max", "1.5", 1.5),
        ("job-timeout", "0", 0),
        ("job-timeout", "2.5", 2.5),
        ("lease-seconds", "0.5", 0.5),
        ("heartbeat-seconds", "1", 1),
        ("backoff-base", "1", 1),
        ("backoff-base", "1.5", 1.5),
        ("backoff-base", 3.0, 3),
    ],
)
def test_parse_value_accepts(key, text, expected):
    got = settings.parse_value(key, text)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    "key, text, word",
    [
        ("max-retries", "-1", "whole number >= 0 and <= 1000000"),
        ("max-retries", "1.5", "whole number >= 0 and <= 1000000"),
        ("max-retries", "abc", "whole number >= 0 and <= 1000000"),
        ("max-retries", "", "whole number >= 0 and <= 1000000"),
        ("max-retries", "1_0", "whole number >= 0 and <= 1000000"),
        ("max-retries", "nan", "whole number >= 0 and <= 1000000"),
        ("max-retries", "inf", "whole number >= 0 and <= 1000000"),
        ("max-retries", True, "whole number >= 0 and <= 1000000"),
        ("max-retries", None, "whole number >= 0 and <= 1000000"),
        ("max-retries", "1000001", "whole number >= 0 and <= 1000000"),
        ("max-log-bytes", "-5", "whole number >= 0 and <= 1099511627776"),
        ("max-job-bytes", "255", "whole number >= 256 and <= 268435456"),
        ("backoff-max", "-1", "number of seconds >= 0 and <= 315360000"),
        ("backoff-max", "inf", "number of seconds >= 0 and <= 315360000"),
        ("backoff-max", "1e12", "number of seconds >= 0 and <= 315360000"),
        ("job-timeout", "-0.5", "number of seconds >= 0 and <= 315360000"),
        ("job-timeout", "nan", "number of seconds >= 0 and <= 315360000"),
        ("lease-seconds", "0", "number of seconds > 0 and <= 86400"),
        ("heartbeat-seconds", "-1", "number of seconds > 0 and <= 28800"),
        ("heartbeat-seconds", "10000000000", "number of seconds > 0 and <= 28800"),
        ("backoff-base", "0.5", "number >= 1 and <= 1000"),
        ("backoff-base", "0", "number >= 1 and <= 1000"),
        ("backoff-base", "1e400", "number >= 1 and <= 1000"),
    ],
)
def test_parse_value_rejects(key, text, word):
    with pytest.raises(BadInput) as e:
        settings.parse_value(key, text)
    assert str(e.value) == f"{key} must be a {word}"


def test_unknown_setting_names_valid_keys():
    with pytest.raises(BadInput) as e:
        settings.parse_value("max_retries", "3")
    msg = str(e.value)
    assert "max_retries" in msg
    for s in settings.TABLE:
        assert s.key in msg


def test_defaults_and_effective():
    defaults = settings.effective({})
    assert set(defaults) == {s.key for s in settings.TABLE}
    assert {k: defaults[k] for k in CONTRACT_DEFAULTS} == CONTRACT_DEFAULTS
    # a bad value stored by hand keeps the default; unknown keys are ignored
    eff = settings.effective({"max-retries": -1, "backoff-base": 3, "bogus": 1, "lease-seconds": "x"})
    assert (eff["max-retries"], eff["backoff-base"], eff["lease-seconds"]) == (3, 3, 30)
    assert "bogus" not in eff


CONTRACT_DEFAULTS = {
    "max-retries": 3,
    "backoff-base": 2,
    "backoff-max": 3600,
    "job-timeout": 0,
    "lease-seconds": 30,
    "heartbeat-seconds": 5,
    "max-job-bytes": 1048576,
    "max-log-bytes": 10485760,
}


def test_settings_file_round_trip(tmp_path):
    path = str(tmp_path / "config.json")
    assert settings.load(path)["max-retries"] == 3
    settings.set_value(path, "max-retries", "5")
    settings.set_value(path, "backoff-base", "1.5")
    assert settings.read_file(path) == {"max-retries": 5, "backoff-base": 1.5}
    assert settings.get(path, "max-retries") == 5
    before = open(path, "rb").read()
    for key, value in (("max-retries", "-1"), ("nope", "1")):
        with pytest.raises(BadInput):
            settings.set_value(path, key, value)
    assert open(path, "rb").read() == before
    with pytest.raises(BadInput):
        settings.get(path, "nope")


# -- the due order ---------------------------------------------------------------------------


def test_due_index_order():
    idx = DueIndex()
    idx.add("low-old", 0, T0 - 10, "2026-01-01")
    idx.add("low-new", 0, T0 - 5, "2025-01-01")  # later not-before wins over older created_at
    idx.add("high", 5, T0 - 1, "2026-06-01")
    idx.add("tie-b", 0, T0 - 10, "2026-01-02")  # same not-before as low-old, created later
    idx.add("neg", -1, T0 - 100, "2020-01-01")
    assert len(idx) == 5
    assert idx.has_due(T0)
    order = [idx.pop_due(T0) for _ in range(5)]
    assert order == ["high", "low-old", "tie-b", "low-new", "neg"]
    assert idx.pop_due(T0) is None
    assert len(idx) == 0 and not idx.has_due(T0)


def test_due_index_scheduled_jobs():
    idx = DueIndex()
    idx.add("later", 10, T0 + 60, "a")
    idx.add("soon", 0, T0 + 5, "b")
    assert not idx.has_due(T0)
    assert idx.pop_due(T0) is None
    assert idx.next_due() == T0 + 5
    assert idx.pop_due(T0 + 5) == "soon"  # due exactly at its not-before time
    assert idx.next_due() == T0 + 60
    assert idx.pop_due(T0 + 59.999) is None
    assert idx.pop_due(T0 + 61) == "later"
    assert idx.next_due() is None


def test_due_index_retain_and_readd():
    idx = DueIndex()
    for i, name in enumerate("abcd"):
        idx.add(name, 0, T0 + i, name)
    idx.add("a", 99, T0, "a")  # adding a known name again changes nothing
    idx.retain({"a", "c", "x"})  # forgets b and d
    assert "b" not in idx and "a" in idx
    assert len(idx) == 2 and "d" not in idx
    idx.add("d", 0, T0 - 1, "d")  # a forgotten name comes back with its new key
    idx.add("b", 0, T0 + 100, "b")  # re-added with a later time: the stale early entry is ignored
    assert [idx.pop_due(T0 + 10) for _ in range(4)] == ["d", "a", "c", None]
    assert idx.next_due() == T0 + 100
    assert idx.pop_due(T0 + 100) == "b"
    assert len(idx) == 0


@HYP
@given(
    st.lists(
        st.tuples(st.integers(-3, 3), st.integers(0, 5), st.sampled_from(["2026-01-01", "2026-01-02", "2026-01-03"])),
        min_size=1,
        max_size=30,
    )
)
def test_due_index_matches_sorted_order(entries):
    idx = DueIndex()
    keyed = []
    for i, (prio, nb, created) in enumerate(entries):
        name = f"{i:03d}"
        idx.add(name, prio, T0 + nb, created)
        keyed.append(((-prio, T0 + nb, created, name), name))
    got = []
    while True:
        name = idx.pop_due(T0 + 5)
        if name is None:
            break
        got.append(name)
    assert got == [n for _, n in sorted(keyed)]
