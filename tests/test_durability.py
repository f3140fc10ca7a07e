"""Issue 3, section 2: the fsync policy of spool_layout.md, proved from the system calls.

Every commit must be: write the new file -> fsync it -> rename it into place -> fsync the
destination folder, and (for a transition that has an old copy) only then remove the old copy.
In-process tests wrap os.open/write/fsync/close/rename/link/unlink and map file descriptors to
spool paths; a real `queuectl enqueue` is traced with strace when it is installed.
"""

import json
import os
import re
import subprocess
import time
import traceback

import pytest

from conftest import QUEUECTL
from fdpaths import at
from queuectl import dlq, layout, policy
from queuectl import job as jobdoc
from queuectl.settings import set_value
from queuectl.spool import Spool
from queuectl.worker import Worker
from spoolnames import PENDING_RE, parse_claim  # the names as spool_layout.md gives them

WRAPPED = ("open", "write", "fsync", "fdatasync", "close", "rename", "replace", "link", "unlink", "symlink")


class Recorder:
    """Records the file operations on spool paths as (op, path[, path2]), paths relative to the spool."""

    def __init__(self, root):
        self.root = os.path.realpath(root)  # handles' paths (/proc/self/fd) are real paths
        self.events = []
        self.fds = {}
        self.on = True

    def rel(self, path, dir_fd=None):
        path = os.path.abspath(at(path, dir_fd))
        if path == self.root:
            return "."
        if path.startswith(self.root + os.sep):
            return os.path.relpath(path, self.root)
        return None

    def _add(self, *event):
        if self.on and all(p is not None for p in event[1:]):
            self.events.append(event)

    def install(self, setattr):
        real = {name: getattr(os, name) for name in WRAPPED}

        def open_(path, flags, mode=0o777, *, dir_fd=None):
            fd = real["open"](path, flags, mode, dir_fd=dir_fd)
            p = self.rel(path, dir_fd)
            self.fds.pop(fd, None)
            if p is not None:
                self.fds[fd] = p
                self._add("open", p)
            return fd

        def write(fd, data):
            n = real["write"](fd, data)
            self._add("write", self.fds.get(fd))
            return n

        def sync(name):
            def fsync(fd):
                fd = fd.fileno() if hasattr(fd, "fileno") else fd
                real[name](fd)
                self._add(name, self.fds.get(fd) or self.rel(fd))  # a folder's handle: its path

            return fsync

        def close(fd):
            p = self.fds.pop(fd, None)
            real["close"](fd)
            self._add("close", p)

        def two(name):
            def op(src, dst, *args, **kwargs):
                real[name](src, dst, *args, **kwargs)
                self._add(name, self.rel(src, kwargs.get("src_dir_fd")), self.rel(dst, kwargs.get("dst_dir_fd")))

            return op

        def symlink(target, dst, *args, **kwargs):  # TARGET is a token, not a path
            real["symlink"](target, dst, *args, **kwargs)
            self._add("symlink", os.fsdecode(target), self.rel(at(dst, kwargs.get("dir_fd"))))

        def unlink(path, *args, **kwargs):
            real["unlink"](path, *args, **kwargs)
            self._add("unlink", self.rel(path, kwargs.get("dir_fd")))

        for name, fn in (
            ("open", open_),
            ("write", write),
            ("fsync", sync("fsync")),
            ("fdatasync", sync("fdatasync")),
            ("close", close),
            ("rename", two("rename")),
            ("replace", two("replace")),
            ("link", two("link")),
            ("symlink", symlink),
            ("unlink", unlink),
        ):
            setattr(os, name, fn)
        return self

    def index(self, event):
        assert event in self.events, f"{event} not in\n{self.show()}"
        return self.events.index(event)

    def indexes(self, event):
        return [i for i, e in enumerate(self.events) if e == event]

    def commits(self, dst_folder):
        """The renames of a tmp/ file into DST_FOLDER/: [(index, tmp path, destination path)]."""
        return [
            (i, e[1], e[2])
            for i, e in enumerate(self.events)
            if e[0] in ("rename", "replace") and os.path.dirname(e[1]) == "tmp" and os.path.dirname(e[2]) == dst_folder
        ]

    def show(self):
        return "\n".join(f"{i:3} {' '.join(e)}" for i, e in enumerate(self.events))


def fence_of(rec, claim):
    """(index, path) of the rename of CLAIM (processing/NAME) to its fence in tmp/."""
    ((i, fence),) = [(i, e[2]) for i, e in enumerate(rec.events) if e[0] == "rename" and e[1] == claim and os.path.dirname(e[2]) == "tmp"]
    assert fence.endswith(".fence"), rec.show()
    return i, fence


def assert_fenced_commit(rec, i_rename, tmp, dst, claim):
    """A claim's commit: write TMP -> fsync TMP -> rename CLAIM to its fence (TMP's name,
    `.fence`) -> rename TMP to DST -> fsync DST's folder -> unlink the fence."""
    i_fence, fence = fence_of(rec, claim)
    assert fence == tmp.rpartition(".")[0] + ".fence", rec.show()
    assert max(rec.indexes(("fsync", tmp)) + rec.indexes(("fdatasync", tmp))) < i_fence < i_rename, rec.show()
    return assert_durable_commit(rec, i_rename, tmp, dst, old_copy=fence)


def assert_durable_commit(rec, i_rename, tmp, dst, old_copy=None):
    """write TMP -> fsync TMP -> rename TMP to DST -> fsync DST's folder (-> unlink OLD_COPY)."""
    ev = rec.events
    writes = rec.indexes(("write", tmp))
    fsyncs = [i for i in rec.indexes(("fsync", tmp)) + rec.indexes(("fdatasync", tmp)) if i < i_rename]
    assert writes, f"{tmp} was never written\n{rec.show()}"
    assert fsyncs and max(writes) < max(fsyncs), f"{tmp} renamed without an fsync after its last write\n{rec.show()}"
    assert ev[i_rename][1:] == (tmp, dst)
    folder = os.path.dirname(dst)
    dir_syncs = [i for i in rec.indexes(("fsync", folder)) if i > i_rename]
    assert dir_syncs, f"{folder}/ not fsynced after the rename of {dst}\n{rec.show()}"
    if old_copy is not None:
        i_unlink = min(i for i in rec.indexes(("unlink", old_copy)) if i > i_rename)
        assert i_rename < min(dir_syncs) < i_unlink, f"{old_copy} removed before {folder}/ was fsynced\n{rec.show()}"
    return min(dir_syncs)


def new_spool(tmp_path):
    spool = Spool(str(tmp_path / "spool")).ensure()
    set_value(spool.config_path, "backoff-max", "0")
    return spool


def accept(doc):
    return jobdoc.accept(doc, time.time(), 3)


def job_of(path):
    """The job id in a pending/, done/ or dead/ path."""
    m = PENDING_RE.match(os.path.basename(path))
    return m.group("id") if m else os.path.basename(path)[: -len(".json")]


def pending_name(spool, job_id):
    (name,) = [n for n in spool.listdir("pending") if n.endswith(f"_{job_id}.json")]
    return name


# -- (a) enqueue ------------------------------------------------------------------------------------


def test_enqueue_of_one_job_fsyncs_file_then_renames_then_fsyncs_pending(tmp_path, monkeypatch):
    spool = new_spool(tmp_path)
    rec = Recorder(spool.root).install(monkeypatch.setattr)
    result = spool.enqueue([accept({"id": "j1", "command": "true"})])
    rec.on = False
    assert result == ["j1"]

    (commit,) = rec.commits("pending")
    i_rename, tmp, dst = commit
    assert dst == os.path.join("pending", pending_name(spool, "j1"))
    assert_durable_commit(rec, i_rename, tmp, dst)
    # the id is reserved (ids/j1 made: a symlink naming the token) before the job shows in
    # pending/, and ids/ is fsynced before enqueue returns
    reserved = [i for i, e in enumerate(rec.events) if e[0] in ("open", "link", "symlink") and e[-1] == "ids/j1"]
    assert reserved and reserved[0] < i_rename and rec.indexes(("fsync", "ids")), rec.show()


def test_enqueue_of_a_batch_fsyncs_every_file_before_the_first_rename(tmp_path, monkeypatch):
    spool = new_spool(tmp_path)
    ids = [f"j{i}" for i in range(5)]
    rec = Recorder(spool.root).install(monkeypatch.setattr)
    result = spool.enqueue([accept({"id": i, "command": "true"}) for i in ids])
    rec.on = False
    assert result == ids

    commits = rec.commits("pending")
    assert [os.path.basename(dst) for _, _, dst in commits] == [pending_name(spool, i) for i in ids]
    first_rename, last_rename = commits[0][0], commits[-1][0]
    for i_rename, tmp, dst in commits:
        assert_durable_commit(rec, i_rename, tmp, dst)
        assert max(rec.indexes(("fsync", tmp))) < first_rename, f"{tmp} fsynced after a rename\n{rec.show()}"
    pending_syncs = [i for i in rec.indexes(("fsync", "pending")) if i > last_rename]
    assert len(pending_syncs) == 1, "one fsync of pending/ for the whole batch, after its last rename"


# -- (b) a worker's commits: settle to done/, pending/ (retry), dead/; adoption ---------------------


@pytest.mark.parametrize(
    "exit_code,max_retries,folder",
    [(0, 3, "done"), (1, 3, "pending"), (1, 0, "dead")],
    ids=["finish-ok", "retry", "dead"],
)
def test_settle_fsyncs_file_renames_fsyncs_folder_then_drops_the_claim(tmp_path, monkeypatch, exit_code, max_retries, folder):
    spool = new_spool(tmp_path)
    spool.enqueue([accept({"id": "j1", "command": "true", "max_retries": max_retries})])
    claim = spool.take("run", pending_name(spool, "j1"))
    t = time.time()
    job, nb = policy.record_attempt(
        spool.read_claim(claim), started=t, finished=t, exit_code=exit_code, error=None, worker=spool.wid, log=None, base=2, maximum=0
    )

    rec = Recorder(spool.root).install(monkeypatch.setattr)
    where = spool.finish(claim, job, nb)
    rec.on = False

    (commit,) = rec.commits(folder)
    assert commit[2] == os.path.join(*where) and where[0] == folder
    assert_fenced_commit(rec, *commit, claim=os.path.join("processing", claim.name))
    assert spool.listdir("processing") == []


def test_a_real_worker_run_commits_every_transition_durably(tmp_path):
    """A burst Worker in a forked child, recorded: adopt a drop-in, finish ok, retry, go dead."""
    spool = new_spool(tmp_path)
    set_value(spool.config_path, "backoff-max", "60")  # the retry waits in pending/ once committed
    spool.enqueue(
        [
            accept({"id": "ok", "command": "true"}),
            accept({"id": "bad", "command": "exit 1", "max_retries": 0}),
            accept({"id": "again", "command": "exit 1", "max_retries": 1}),
        ]
    )
    tmp = os.path.join(spool.root, "tmp", "writer.json")
    with open(tmp, "w") as f:
        f.write('{"command": "true"}')
    os.rename(tmp, os.path.join(spool.root, "pending", "dropped.json"))
    out = str(tmp_path / "events.json")

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            rec = Recorder(spool.root).install(lambda obj, name, value: setattr(obj, name, value))
            Worker(Spool(spool.root), burst=True).run()
            rec.on = False
            with open(out, "w") as f:
                json.dump(rec.events, f)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    rec = Recorder(spool.root)
    with open(out) as f:
        rec.events = [tuple(e) for e in json.load(f)]
    commits = sorted(sum((rec.commits(folder) for folder in ("pending", "done", "dead")), []))
    assert sorted((os.path.dirname(d), job_of(d)) for _, _, d in commits) == [
        ("dead", "bad"),
        ("done", "dropped"),
        ("done", "ok"),
        ("pending", "again"),  # its retry, due in a minute
        ("pending", "dropped"),  # the adoption, before its run
    ], rec.show()
    for i_rename, tmp, dst in commits:
        # the old copy is the claim this commit settles: the next removal of that job's claim
        adoption = os.path.dirname(dst) == "pending" and job_of(dst) == "dropped"
        key = ("adopt", "dropped.json") if adoption else ("run", job_of(dst))
        claim = next(e[1] for e in rec.events[:i_rename] if e[0] == "rename" and e[2] == tmp.rpartition(".")[0] + ".fence")
        assert (parse_claim(os.path.basename(claim)) or ())[:2] == key, rec.show()
        assert_fenced_commit(rec, i_rename, tmp, dst, claim)
    assert sorted(spool.listdir("done")) == ["dropped.json", "ok.json"] and spool.listdir("dead") == ["bad.json"]
    assert [job_of(n) for n in spool.listdir("pending")] == ["again"] and spool.listdir("processing") == []


# -- (c) dlq retry ----------------------------------------------------------------------------------


def test_dlq_retry_fsyncs_file_renames_fsyncs_pending_then_drops_the_claim(tmp_path, monkeypatch):
    spool = new_spool(tmp_path)
    spool.enqueue([accept({"id": "j1", "command": "false", "max_retries": 0})])
    claim = spool.take("run", pending_name(spool, "j1"))
    t = time.time()
    job, nb = policy.record_attempt(
        spool.read_claim(claim), started=t, finished=t, exit_code=1, error=None, worker=spool.wid, log=None, base=2, maximum=0
    )
    assert spool.finish(claim, job, nb) == ("dead", "j1.json")

    rec = Recorder(spool.root).install(monkeypatch.setattr)
    assert dlq.retry(spool, ["j1"], False) == (["j1"], [], [])
    rec.on = False

    # the claim: a bare rename out of dead/ (then its fence, then the commit)
    ((i_claim, claim),) = [(i, e[2]) for i, e in enumerate(rec.events) if e[0] == "rename" and e[1] == "dead/j1.json"]
    assert os.path.dirname(claim) == "processing" and parse_claim(os.path.basename(claim)) == ("revive", "j1", spool.wid)
    ((i_rename, tmp, dst),) = rec.commits("pending")
    assert i_claim < i_rename and dst == os.path.join("pending", pending_name(spool, "j1"))
    assert_fenced_commit(rec, i_rename, tmp, dst, claim)
    assert spool.listdir("dead") == [] and spool.listdir("processing") == []


# -- (d) a real `queuectl enqueue`, traced ----------------------------------------------------------

STRACE = "/usr/bin/strace"
LINE_RE = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")


def _strace(tmp_path, root, args, stdin=None):
    """Run `queuectl ARGS` under strace; returns (its stdout, [(syscall, [paths it names])]): a file
    descriptor's path as -y shows it, a rename's two paths. Only calls that succeeded are kept."""
    trace = str(tmp_path / "trace.txt")
    syscalls = "openat,write,fsync,fdatasync,syncfs,sync,rename,renameat,renameat2"
    p = subprocess.run(
        [STRACE, "-f", "-y", "-s", "0", "-o", trace, "-e", f"trace={syscalls}", QUEUECTL, *args],
        env=dict(os.environ, QUEUECTL_SPOOL=root),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if p.returncode != 0 and "ptrace" in p.stderr:
        pytest.skip(f"strace cannot trace here: {p.stderr.strip()}")
    assert p.returncode == 0, p.stderr
    with open(trace) as f:
        lines = f.read().splitlines()
    assert lines[-1].endswith("+++ exited with 0 +++"), lines[-1]
    calls = []
    for line in lines:
        m = LINE_RE.match(line)
        if not m or int(m.group(4)) < 0:
            continue
        name, args_text = m.group(2), m.group(3)
        if name.startswith("rename"):  # each name relative to its folder's handle (fd<path>), or whole
            pairs = re.findall(r'(?:\d+<([^>]*)>|AT_FDCWD), "([^"]*)"', args_text)
            calls.append((name, [os.path.join(folder, n) if folder else n for folder, n in pairs]))
        else:
            fd_path = re.match(r"\d+<([^>]*)>", args_text)
            calls.append((name, [fd_path.group(1)] if fd_path else []))
    return p.stdout, calls


@pytest.mark.skipif(not os.path.exists(STRACE), reason="strace is not installed")
@pytest.mark.parametrize("count", [1, 40], ids=["one-job", "batch-of-40"])
def test_queuectl_enqueue_under_strace(tmp_path, count):
    """write -> fsync of the file (or a syncfs of its file system) -> rename into pending/ -> fsync
    of pending/, all before the process exits 0 (the acknowledgement)."""
    root = str(tmp_path / "spool")
    Spool(root).ensure()
    ids = [f"j{i}" for i in range(count)]
    if count == 1:
        out, calls = _strace(tmp_path, root, ["enqueue", '{"id": "j0", "command": "true"}'])
    else:
        lines = "".join(json.dumps({"id": i, "command": "true"}) + "\n" for i in ids)
        out, calls = _strace(tmp_path, root, ["enqueue", "-"], stdin=lines)
    assert out.split() == ids

    pending_dir = os.path.join(root, "pending")
    renames = [(i, paths[0], paths[-1]) for i, (name, paths) in enumerate(calls) if name.startswith("rename") and os.path.dirname(paths[-1]) == pending_dir]
    assert sorted(os.path.basename(dst) for _, _, dst in renames) == sorted(os.listdir(pending_dir))
    assert len(renames) == count
    whole_fs_syncs = [i for i, (name, paths) in enumerate(calls) if name in ("syncfs", "sync")]
    for i_rename, src, dst in renames:
        assert os.path.dirname(src) == os.path.join(root, "tmp"), src
        writes = [i for i, (name, paths) in enumerate(calls) if name == "write" and paths == [src]]
        syncs = [i for i, (name, paths) in enumerate(calls) if name in ("fsync", "fdatasync") and paths == [src]] + whole_fs_syncs
        assert writes, f"{src} was never written"
        assert [i for i in syncs if max(writes) < i < i_rename], f"{src}: no fsync between its last write and its rename"
    dir_syncs = [i for i, (name, paths) in enumerate(calls) if name == "fsync" and paths == [pending_dir]]
    assert [i for i in dir_syncs if i > max(i for i, _, _ in renames)], "pending/ fsynced after the last rename, before exit"


# -- moves by link (reject, recovery's put-backs): the destination folder before the old name ---------


def test_reject_fsyncs_rejected_before_removing_the_claim(tmp_path, monkeypatch):
    from queuectl.dueindex import DueIndex
    from queuectl.intake import Intake
    from queuectl.settings import Watched

    spool = new_spool(tmp_path)
    with open(os.path.join(spool.root, "pending", "bad.json"), "wb") as f:
        f.write(b"{not json")
    rec = Recorder(spool.root).install(monkeypatch.setattr)
    Intake(spool, DueIndex(), Watched(spool.config_path), lambda msg: None).adopt("bad.json", time.time())
    rec.on = False

    ((i_link, claim),) = [(i, e[1]) for i, e in enumerate(rec.events) if e[0] == "link" and e[2] == "rejected/bad.json"]
    assert parse_claim(os.path.basename(claim)) == ("adopt", "bad.json", spool.wid)
    i_unlink = rec.index(("unlink", claim))
    syncs = [i for i in rec.indexes(("fsync", "rejected")) if i > i_link]
    assert syncs and min(syncs) < i_unlink, rec.show()
    assert sorted(spool.listdir("rejected")) == ["bad.json", "bad.json.reason"]


def test_recovery_putting_an_interrupted_dlq_retry_back_fsyncs_dead_before_removing_the_claim(tmp_path, monkeypatch):
    from queuectl.recovery import Recovery
    from queuectl.settings import Watched

    spool = new_spool(tmp_path)
    spool.enqueue([accept({"id": "j1", "command": "false", "max_retries": 0})])
    claim = spool.take("run", pending_name(spool, "j1"))
    t = time.time()
    job, nb = policy.record_attempt(
        spool.read_claim(claim), started=t, finished=t, exit_code=1, error=None, worker=spool.wid, log=None, base=2, maximum=0
    )
    spool.finish(claim, job, nb)
    # a `dlq retry` by a process that died right after its claim (this pid, another start time)
    me = layout.parse_worker(spool.wid)
    lost = layout.worker_name(me.host, me.pid, me.start + 1, me.ns)
    claim = spool.take("revive", "j1.json")
    assert parse_claim(claim.name) == ("revive", "j1", spool.wid)
    processing = os.path.join(spool.root, "processing")
    os.rename(os.path.join(processing, claim.name), os.path.join(processing, claim.name.replace(f"@{spool.wid}.", f"@{lost}.")))

    rec = Recorder(spool.root).install(monkeypatch.setattr)
    Recovery(spool, Watched(spool.config_path), lambda msg: None).run(time.time())
    rec.on = False

    assert spool.listdir("dead") == ["j1.json"] and spool.listdir("processing") == []
    ((i_link, mine),) = [(i, e[1]) for i, e in enumerate(rec.events) if e[0] == "link" and e[2] == "dead/j1.json"]
    assert parse_claim(os.path.basename(mine)) == ("revive", "j1", spool.wid)  # taken over by this process
    i_unlink = rec.index(("unlink", mine))
    syncs = [i for i in rec.indexes(("fsync", "dead")) if i > i_link]
    assert syncs and min(syncs) < i_unlink, rec.show()
