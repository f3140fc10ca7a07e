"""spool_layout.md is the protocol, and the code follows it: its tables are layout.py's tables,
its name grammar is the code's grammar, and no module but spool.py (and fsio.py under it) touches
a file of the spool."""

import ast
import os
import re

import pytest

import spoolnames
from queuectl import fsio, procs
from queuectl import layout as spool
from queuectl.layout import ID_PATTERN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "queuectl")


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def _block(text, marker):
    return text.split(f"<!-- {marker}")[1].split("-->", 1)[1].split(f"<!-- /{marker} -->")[0].strip()


@pytest.mark.parametrize(
    "marker, table",
    [("states-table", spool.markdown_states), ("ops-table", spool.markdown_ops), ("transitions-table", spool.markdown_transitions)],
)
def test_spool_layout_tables_are_the_code_tables(marker, table):
    assert _block(read("spool_layout.md"), marker) == table()


def test_every_state_folder_and_op_source_is_a_spool_folder():
    assert {s.folder for s in spool.STATES} <= set(spool.FOLDERS)
    assert {o.source for o in spool.OPS} <= set(spool.FOLDERS)
    assert {o.shows_as for o in spool.OPS} <= set(spool.STATE_NAMES) | {None}
    assert set(spool.OUTCOMES) <= set(spool.JOB_STATES)


def test_every_recovery_rule_an_op_names_exists():
    from queuectl.recovery import Recovery

    rules = Recovery(None, None, None).rules
    assert {o.on_lost for o in spool.OPS} <= set(rules)


def test_the_documented_syncfs_threshold_is_the_code_one():
    assert f"from {fsio.SYNCFS_MIN} files on one `syncfs(2)`" in " ".join(read("spool_layout.md").split())


# -- no module but spool.py touches the spool's files ------------------------------------------

FILE_CALLS = {"rename", "replace", "link", "unlink", "remove", "rmdir", "mkdir", "makedirs", "symlink", "renames", "removedirs"}
ALLOWED = {"spool.py", "fsio.py", "contain.py"}  # contain.py: cgroup folders in /sys/fs/cgroup, never the spool


def _calls(tree):
    """(dotted name, line) of every call in TREE, e.g. ("os.rename", 12), ("os.path.join", 40)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                parts.append(f.id)
            yield ".".join(reversed(parts)), node.lineno


def test_only_the_protocol_module_renames_links_or_removes_files():
    offenders = []
    for name in sorted(os.listdir(PACKAGE)):
        if not name.endswith(".py") or name in ALLOWED:
            continue
        with open(os.path.join(PACKAGE, name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for call, line in _calls(tree):
            head, _, fn = call.rpartition(".")
            if (head in ("os", "shutil") and (fn in FILE_CALLS or head == "shutil")) or call == "os.path.join":
                offenders.append(f"{name}:{line}: {call}")
            if fn in ("_path", "_dir") or call.endswith(("spool.path", "spool.dir")):
                offenders.append(f"{name}:{line}: {call}")
    assert offenders == [], "spool files touched outside spool.py: " + ", ".join(offenders)


def test_the_check_above_can_fail():
    tree = ast.parse("import os\nos.rename(a, b)\nself.spool._path('pending', n)\n")
    assert [c for c, _ in _calls(tree)] == ["os.rename", "self.spool._path"]


# -- the name grammar ---------------------------------------------------------------------------


def _doc_regexes():
    layout = read("spool_layout.md")
    rows = dict(re.findall(r"^\| (pending/|processing/|done/, dead/|logs/|workers/|ids/) \| [^|]+ \| `([^`]+)` \|", layout, re.M))
    worker = re.search(r"`WORKER = ([^`]+)`", layout).group(1)
    ident = re.search(r"ID = (\S+)", layout).group(1)
    assert ident == ID_PATTERN
    return {k: re.compile(v.replace("WORKER", worker).replace("ID", ID_PATTERN)) for k, v in rows.items()}


SAMPLES = [
    "20261128T120000.123456Z_job-1.json",
    "20261128T120000Z_a.b_c.json",
    "20261128T120000.5Z_x.json",
    "20261128T1200Z_x.json",
    "job.json",
    ".hidden.json",
    "20261128T120000Z_.x.json",
    "20261128T120000.123456Z_job-1@host.example.12.345.json",
    "job-1@host.example.12.345.json",
    "20261128T120000Z_job-1@host.12.json",
    "some name.json@host.1.2.adopt",
    "20261128T120000.123456Z_job-1@host.example.12.345.n0badcafe.json",
    "20261128T120000.123456Z_job-1@host.example.12.345.n0BADCAFE.json",
    "20261128T120000.123456Z_job-1@host.example.12.345.n0badcaf.json",
    "some name.json@host.1.2.n0badcafe.adopt",
    "job-1@h.1.2.n0badcafe.revive",
    "h.1.2.n0badcafe.json",
    "h.1.2.0badcafe.json",
    "job-1.3.log",
    "host.1.2.json",
    "x" * 128 + ".json",
    "x" * 129 + ".json",
]


@pytest.mark.parametrize("name", SAMPLES)
def test_spool_layout_grammar_matches_the_code(name):
    doc = _doc_regexes()
    assert bool(doc["pending/"].match(name)) == bool(spool.PENDING_RE.match(name))
    assert bool(doc["done/, dead/"].match(name)) == bool(spool.FINAL_RE.match(name))
    assert bool(doc["logs/"].match(name)) == bool(spool.LOG_RE.match(name))
    doc_claim = doc["processing/"].match(name)
    assert bool(doc_claim) == bool(spool.CLAIM_RE.match(name))
    assert bool(doc["workers/"].match(name)) == bool(spool.HEARTBEAT_RE.match(name))


def test_names_queuectl_writes_follow_the_documented_grammar():
    doc = _doc_regexes()
    assert doc["pending/"].match(spool.pending_name(1795000000.25, "job-1"))
    for op, origin in (("run", spool.pending_name(1795000000.25, "job-1")), ("adopt", "my job"), ("revive", "job-1.json")):
        assert doc["processing/"].match(spool.claim_name(op, origin, "host.example.12.345"))
    assert doc["done/, dead/"].match(spool.final_name("job-1"))
    assert doc["workers/"].match(spool.heartbeat_name(procs.worker_id()))
    assert doc["processing/"].match(spool.claim_name("run", spool.pending_name(1795000000.25, "job-1"), procs.worker_id()))
    assert doc["logs/"].match(spool.log_name("job-1", 3))


def test_the_documented_namespace_recipe_is_the_code_one():
    """spool_layout.md says how NS is computed, so that a writer in another language can tell which
    workers share its PID namespace: tests/spoolnames.py follows the document."""
    assert spoolnames.namespace() == procs.namespace()
    assert procs.worker_id().endswith(f".n{spoolnames.namespace()}")


# -- spool.py reaches every folder through its handle ----------------------------------------------

PATH_CALLS = {"rename", "replace", "link", "unlink", "remove", "rmdir", "mkdir", "makedirs", "open", "stat", "lstat", "listdir", "scandir", "utime", "chmod", "chown", "access", "symlink", "readlink"}
PATH_TESTS = {"exists", "lexists", "isdir", "isfile", "islink", "getsize", "getmtime"}
FSIO_PATH_CALLS = {"create", "write_file", "unlink_quiet", "read_regular", "read_regular_stat", "read_checked", "open_regular", "has_writer"}
HANDLE_KEYWORDS = {"dir_fd", "src_dir_fd", "dst_dir_fd"}
# the root is the user's choice, reached by its path: made (ensure), opened once (_fd), and
# compared with its handle (check_folders); a listing reads a new open of a handle (_listdir); an
# error's path is described for its message (explain)
BY_PATH = {
    "ensure": {"os.path.isdir", "os.makedirs", "os.chmod"},
    "_fd": {"os.open"},
    "check_folders": {"os.stat"},
    "_listdir": {"os.listdir"},
    "explain": {"os.lstat"},
    # a system spool is told by its root's owner and ROOT/system, both root's (only root makes
    # either), before any handle is opened; init --system makes the root
    "is_system_spool": {"os.lstat"},
    "make_system": {"os.makedirs"},
    "scan": {"os.scandir"},  # of a new open of the folder's handle (an fd, not a path)
}


def _path_calls(tree):
    """(function, call, line) of every os or fsio call in TREE that names a path without a handle."""
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call):
                continue
            call = next(_calls(ast.Module(body=[ast.Expr(node)], type_ignores=[])))[0]
            head, _, name = call.rpartition(".")
            by_path = (head == "os" and name in PATH_CALLS) or (head == "os.path" and name in PATH_TESTS) or (head == "fsio" and name in FSIO_PATH_CALLS)
            if head == "fsio" and name == "fsync_dir":
                by_path = True
            if by_path and not HANDLE_KEYWORDS & {k.arg for k in node.keywords} and call not in BY_PATH.get(fn.name, ()):
                yield fn.name, call, node.lineno


def test_spool_py_names_no_path_but_through_a_folder_handle():
    with open(os.path.join(PACKAGE, "spool.py"), encoding="utf-8") as f:
        offenders = [f"spool.py:{line}: {call} in {fn}" for fn, call, line in _path_calls(ast.parse(f.read()))]
    assert offenders == [], "path-based calls in spool.py (use the handle primitives, _rename, _link...): " + ", ".join(offenders)


def test_the_handle_check_can_fail():
    tree = ast.parse("def f(self):\n    os.rename(a, b)\n    os.rename(a, b, src_dir_fd=1, dst_dir_fd=2)\n    fsio.unlink_quiet(p)\n")
    assert [c for _, c, _ in _path_calls(tree)] == ["os.rename", "fsio.unlink_quiet"]
