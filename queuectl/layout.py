"""The spool protocol as data: folders, states, claim operations, transitions, and the name
grammar (one function formats each kind of name, one parses it). Pure: no file system.

spool_layout.md's tables are these tables (tests/test_spool_layout.py holds the two together);
spool.py carries them out. Adding a state or a transition is a row here plus its own function.
"""

import re
from collections import namedtuple

from queuectl.timeutil import parse_stamp, stamp

ID_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
_ID_RE = re.compile(ID_PATTERN + r"\Z")


def valid_id(value):
    return isinstance(value, str) and _ID_RE.match(value) is not None


FOLDERS = ("tmp", "pending", "held", "processing", "done", "dead", "rejected", "logs", "workers", "ids", "requests")
PAUSED = "paused"  # a file in the spool's root: while it exists, workers claim nothing (queuectl pause)
COUNTERS = "counters.json"  # in the spool's root: totals of ended attempts (counters.py), under COUNTERS.lock

# -- states: where a job is, and how a file there is told apart --------------------------------

State = namedtuple("State", "name folder told_apart meaning outcome")
# outcome: an ended attempt can leave its job in this state (the worker counts them)
STATES = (
    State("pending", "pending", "a pending name; `attempts` is 0", "due or scheduled; has not failed in this round", False),
    State("processing", "processing", "a claim of operation `run`", "claimed by a worker running an attempt; the name says which", False),
    State("completed", "done", "a final name", "its last attempt exited 0", True),
    State("failed", "pending", "a pending name; `attempts` > 0", "failed at least once, waiting for its retry (the name says when)", True),
    State("dead", "dead", "a final name", "failed `1 + max_retries` times: the dead-letter queue", True),
    State("held", "held", "a pending name", "held by `queuectl hold`: never claimed until `queuectl release` (its name keeps its not-before)", False),
    State("rejected", "rejected", "any name but `NAME.reason`", "not a valid job: kept byte for byte, with `NAME.reason` beside it", False),
)
BY_STATE = {s.name: s for s in STATES}
STATE_NAMES = tuple(s.name for s in STATES)
JOB_STATES = tuple(s.name for s in STATES if s.name != "rejected")
OUTCOMES = tuple(s.name for s in STATES if s.outcome)
CONTENT_STATES = tuple(s.name for s in STATES if s.folder in ("pending", "done", "dead"))  # a job file's `state`
CANCELLED = "cancelled"  # the `last_error` of a cancelled job, and its attempt's `error`
# what a worker counts per ended attempt: its job's new state, or `cancelled` for an attempt that
# `queuectl cancel` stopped (its job is dead, but it did not fail)
COUNTED = OUTCOMES + (CANCELLED,)
JOB_FOLDERS = tuple(dict.fromkeys(BY_STATE[s].folder for s in JOB_STATES))  # where job files live
FINAL_FOLDERS = ("done", "dead")  # named by id alone: a job there is found in one lookup


def folder_of(state):
    return BY_STATE[state].folder


def state_in(folder, job, claim=None):
    """The state a job file in FOLDER (under CLAIM, in processing/) is shown in: the folder is
    authoritative, the content tells pending from failed."""
    if folder == "pending":
        return "failed" if job.get("attempts") else "pending"
    if folder == "processing":
        if claim and claim.op == "cancel":  # shown as pending or failed, as the content says
            return "failed" if job.get("attempts") else "pending"
        return BY_OP[claim.op].shows_as if claim else "processing"
    return next(s.name for s in STATES if s.folder == folder)


# -- claim operations: who holds a claim, and what recovery does if its holder dies ------------

Op = namedtuple("Op", "name suffix source shows_as who on_lost")
# A claim is named ORIGIN@HOLDER.SUFFIX: ORIGIN is the name it had in SOURCE (without `.json`, but
# for `adopt`, whose drop-in may be named anything); on_lost names recovery's rule (recovery.RULES).
OPS = (
    Op("run", "json", "pending", "processing", "a worker, to run an attempt", "count-lost-attempt"),
    Op("adopt", "adopt", "pending", None, "a worker, to adopt or reject a drop-in", "finish-or-put-back"),
    Op("revive", "revive", "dead", "dead", "`queuectl dlq retry`", "put-back"),
    Op("cancel", "cancel", "pending", "pending", "`queuectl cancel`", "put-back"),
    Op("cancel-held", "hcancel", "held", "held", "`queuectl cancel`", "put-back"),
)
BY_OP = {o.name: o for o in OPS}
_BY_SUFFIX = {o.suffix: o for o in OPS}

# -- names --------------------------------------------------------------------------------------

# A worker id: host.pid.start.nNS (spool_layout.md, "Worker ids and liveness"). An old id,
# host.pid.start, still parses (ns None): its last field is all digits, a new id's starts with n.
WORKER_PATTERN = r"[A-Za-z0-9.-]+\.\d+\.\d+(?:\.n[0-9a-f]{8})?"
WORKER_RE = re.compile(r"([A-Za-z0-9.-]+)\.(\d+)\.(\d+)(?:\.n([0-9a-f]{8}))?\Z")
_TIME = r"(\d{8}T\d{6}(?:\.\d{1,6})?Z)"
PENDING_RE = re.compile(_TIME + r"_(" + ID_PATTERN + r")\.json\Z")
CLAIM_RE = re.compile(r"(.+)@(" + WORKER_PATTERN + r")\.(" + "|".join(o.suffix for o in OPS) + r")\Z", re.S)
FINAL_RE = re.compile(r"(" + ID_PATTERN + r")\.json\Z")
LOG_RE = re.compile(r"(" + ID_PATTERN + r")\.(\d+)\.log\Z")
HEARTBEAT_RE = re.compile(r"(" + WORKER_PATTERN + r")\.json\Z")
HEARTBEAT_TMP_RE = re.compile(r"\.(" + WORKER_PATTERN + r")\.[0-9a-f]+\.tmp\Z")
TMP_RE = re.compile(r"qc-(" + WORKER_PATTERN + r")-([0-9a-f]+)\.(enqueue|write|fence|purge)\Z")
REASON_SUFFIX = ".reason"
# requests/ID.KIND: a request to the worker that runs job ID (queuectl cancel, queuectl hold)
REQUEST_KINDS = ("cancel", "hold")
REQUEST_RE = re.compile(r"(" + ID_PATTERN + r")\.(" + "|".join(REQUEST_KINDS) + r")\Z")

Claim = namedtuple("Claim", "name op origin job_id holder")
Worker = namedtuple("Worker", "host pid start ns")
# ns: the PID namespace's 8 hex digits, or None for an old id (namespace unknown)
# origin: the claimed file's name in its op's source folder; job_id: None for an adoption


def pending_name(not_before, job_id):
    return f"{stamp(not_before)}_{job_id}.json"


def parse_pending(name):
    """A pending/ name -> (not_before, id); (None, None) for a drop-in's free-form name."""
    m = PENDING_RE.match(name)
    if not m:
        return None, None
    try:
        return parse_stamp(m.group(1)), m.group(2)
    except ValueError:
        return None, None


def request_name(job_id, kind):
    return f"{job_id}.{kind}"


def parse_request(name):
    """A requests/ name -> (id, kind), or None."""
    m = REQUEST_RE.match(name)
    return (m.group(1), m.group(2)) if m else None


def final_name(job_id):
    return f"{job_id}.json"


def parse_final(name):
    """A done/ or dead/ name -> its id, or None."""
    m = FINAL_RE.match(name)
    return m.group(1) if m else None


def claim_name(op, origin, holder):
    """The claim of ORIGIN (a name in OP's source folder) by HOLDER. A run claim of a pending name
    is unique per attempt: a retry's next claim never reuses the name the attempt before still
    holds until its result is durable."""
    stem = origin if op == "adopt" else origin[: -len(".json")]
    return f"{stem}@{holder}.{BY_OP[op].suffix}"


def parse_claim(name):
    """A processing/ name -> Claim, or None for a name no operation makes."""
    m = CLAIM_RE.match(name)
    if not m:
        return None
    stem, holder, op = m.group(1), m.group(2), _BY_SUFFIX[m.group(3)]
    if op.name == "adopt":
        return Claim(name, "adopt", stem, None, holder)
    origin = stem + ".json"
    job_id = parse_pending(origin)[1] if op.source in ("pending", "held") else parse_final(origin)
    if job_id is None:
        return None
    return Claim(name, op.name, origin, job_id, holder)


def worker_name(host, pid, start, ns):
    return f"{host}.{pid}.{start}.n{ns}"


def parse_worker(wid):
    """A worker id -> Worker, or None."""
    m = WORKER_RE.match(wid)
    return Worker(m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)) if m else None


def log_name(job_id, seq):
    return f"{job_id}.{seq}.log"


def heartbeat_name(wid):
    return f"{wid}.json"


def parse_heartbeat(name):
    """workers/NAME -> (worker id, is a temporary), or None."""
    m = HEARTBEAT_RE.match(name)
    if m:
        return m.group(1), False
    m = HEARTBEAT_TMP_RE.match(name)
    return (m.group(1), True) if m else None


def dropin_id(name):
    """The id a drop-in named NAME gets when it has no id field: its stem if valid, else None."""
    job_id = parse_pending(name)[1]
    if job_id:
        return job_id
    stem = name[:-5] if name.endswith(".json") else name
    return stem if valid_id(stem) else None


# -- transitions: spool_layout.md's table, row for row ------------------------------------------

Transition = namedtuple("Transition", "name path who commit crash_before crash_after cleanup")
FENCED = "or, past the fence, the claim as `tmp/qc-WORKER-HEX.fence` beside its new version `tmp/qc-WORKER-HEX.write`"
TRANSITIONS = (
    Transition(
        "enqueue",
        "writer → tmp/ → pending/",
        "`queuectl enqueue`",
        "rename into pending/",
        "`tmp/qc-WORKER-HEX.enqueue`, maybe `ids/<id>` (a symlink naming its token); not acknowledged",
        "the job in pending/",
        "recovery, once the writer is dead: its tmp/ file whose id names its token is rolled forward into pending/, any other is deleted",
    ),
    Transition(
        "adopt",
        "pending/ → processing/`NAME@WORKER.adopt` → pending/",
        "worker",
        "rename of the canonical file into pending/",
        f"the drop-in's claim (maybe `ids/<id>`, a symlink naming the adoption's token), {FENCED}",
        "the canonical job, maybe the fence",
        "recovery: a fence beside its new version: the new version is published, the fence removed (as 5); a claim (`finish-or-put-back`) goes back to pending/ under its name, and adopting it again reuses the reservation (the token is derived from the file)",
    ),
    Transition(
        "reject",
        "pending/ → processing/`NAME@WORKER.adopt` → rejected/",
        "worker",
        "link into rejected/",
        "the `.adopt` claim",
        "the claim, the file in rejected/, maybe its reason",
        "recovery (`finish-or-put-back`): a claim whose file is already in rejected/ (same inode) is finished: its reason is written (found again by re-validating), the claim removed",
    ),
    Transition(
        "claim",
        "pending/ → processing/`TIME_ID@WORKER.json`",
        "worker",
        "the rename",
        "the job pending",
        "the job claimed",
        "recovery (`count-lost-attempt`) if the worker dies",
    ),
    Transition(
        "finish ok",
        "processing/ → (fence) → done/",
        "worker (while its next job runs)",
        "rename into done/",
        f"the claim and maybe its new version `tmp/qc-WORKER-HEX.write`, {FENCED}",
        "the job in done/, maybe the fence",
        "recovery, once the worker is dead: a new version whose fence is beside it is published and the fence removed; a new version alone, or a fence alone, is removed; a claim is recovered (8)",
    ),
    Transition("retry", "processing/ → (fence) → pending/ (later not-before)", "worker", "rename into pending/", "as 5", "as 5", "as 5"),
    Transition("dead", "processing/ → (fence) → dead/", "worker", "rename into dead/", "as 5", "as 5", "as 5"),
    Transition(
        "recovery",
        "processing/ (dead holder) → processing/ (new holder) → (fence) → pending/ or dead/",
        "any worker",
        "as 6/7",
        "the claim, as 5",
        "as 5",
        "as 5",
    ),
    Transition(
        "dlq retry",
        "dead/ → processing/`ID@WORKER.revive` → (fence) → pending/ (attempts 0)",
        "`queuectl dlq retry`",
        "rename into pending/",
        "the `.revive` claim, as 5",
        "as 5",
        "recovery: a claim (`put-back`) goes back to dead/; past the fence, as 5",
    ),
    Transition(
        "release",
        "processing/ → pending/ (same content)",
        "worker on a second stop signal, or on a fault before the job started",
        "link into pending/",
        "the claim",
        "the job pending, maybe the claim",
        "recovery: a claim whose job is in pending/ is removed",
    ),
    Transition(
        "cancel",
        "pending/ → processing/`TIME_ID@WORKER.cancel` (held/ → `TIME_ID@WORKER.hcancel`) → (fence) → dead/ (`last_error` \"cancelled\")",
        "`queuectl cancel`",
        "rename into dead/",
        "the `.cancel` (`.hcancel`) claim, as 5",
        "as 5",
        "recovery: a claim (`put-back`) goes back to pending/ (held/): the cancel was not reported; past the fence, as 5",
    ),
    Transition(
        "cancel running",
        "`requests/ID.cancel`; processing/ → (fence) → dead/ (`last_error` \"cancelled\")",
        "`queuectl cancel` writes the request; the worker running the job stops it (TERM, KILL after the grace) and commits",
        "rename into dead/",
        "the request, and the claim as 5",
        "the request, the job in dead/, maybe the fence",
        "as 5, but a lost attempt whose `requests/ID.cancel` is there ends cancelled (dead/), not retried; the worker or recovery removes the request after the commit",
    ),
    Transition(
        "hold",
        "pending/ → held/ (same name, same content)",
        "`queuectl hold`",
        "the rename",
        "the job pending",
        "the job held",
        "nothing to clean",
    ),
    Transition(
        "hold running",
        "`requests/ID.hold`; processing/ → (fence) → held/ (where a retry would go to pending/)",
        "`queuectl hold` writes the request; the worker commits when the attempt ends",
        "rename into held/",
        "the request, and the claim as 5",
        "the request, the job in held/ (or done/, dead/), maybe the fence",
        "as 5, but while `requests/ID.hold` is there a lost attempt or a fence's stage that would retry goes to held/; the worker or recovery removes the request after the commit",
    ),
    Transition(
        "release held",
        "held/ → pending/ (same name: its not-before kept, due at once if past)",
        "`queuectl release`",
        "the rename",
        "the job held",
        "the job pending (and maybe `requests/ID.hold`, which release removes next)",
        "a later `release` or the job's next commit removes a left request",
    ),
    Transition(
        "retry now",
        "pending/ or held/ `TIME_ID.json` → pending/`NOW_ID.json` (same content)",
        "`queuectl retry`",
        "the rename",
        "the job where it was",
        "the job pending, due now",
        "nothing to clean",
    ),
    Transition(
        "purge",
        "done/ or dead/ → tmp/`qc-WORKER-HEX.purge` → removed, with its logs and `ids/<id>`",
        "`queuectl purge`, or a worker applying retention",
        "rename into tmp/",
        "the job in done/ or dead/",
        "`tmp/qc-WORKER-HEX.purge`, maybe its logs and `ids/<id>`",
        "recovery, once the purger is dead: the logs and the reservation (if it names the job's token) of the `.purge` file are removed, then the file",
    ),
)


# -- the tables as spool_layout.md shows them (tests/test_spool_layout.py keeps them identical) --


def markdown_states():
    rows = ["| state | folder | told apart by | meaning |", "|---|---|---|---|"]
    rows += [f"| `{s.name}` | {s.folder}/ | {s.told_apart} | {s.meaning} |" for s in STATES]
    return "\n".join(rows)


def markdown_ops():
    rows = ["| operation | claim name | claimed from | by | shown as | if its holder dies |", "|---|---|---|---|---|---|"]
    for o in OPS:
        example = claim_name(o.name, "NAME" if o.name == "adopt" else ("TIME_ID.json" if o.source in ("pending", "held") else "ID.json"), "WORKER")
        rows.append(f"| `{o.name}` | `{example}` | {o.source}/ | {o.who} | {o.shows_as or '—'} | `{o.on_lost}` |")
    return "\n".join(rows)


def markdown_transitions():
    rows = [
        "| # | transition | from → to | who | commit point | a crash before it leaves | a crash after it leaves | cleaned up by |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, t in enumerate(TRANSITIONS, 1):
        rows.append(f"| {i} | {t.name} | {t.path} | {t.who} | {t.commit} | {t.crash_before} | {t.crash_after} | {t.cleanup} |")
    return "\n".join(rows)
