"""The spool's file names as spool_layout.md states them (read from the document, not from
queuectl/spool.py), for tests that look at a spool from the outside."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

with open(os.path.join(ROOT, "spool_layout.md"), encoding="utf-8") as _f:
    LAYOUT = _f.read()

ID = re.search(r"ID = (\S+)", LAYOUT).group(1)
WORKER = re.search(r"`WORKER = ([^`]+)`", LAYOUT).group(1)
_TIME = r"(\d{8}T\d{6}(?:\.\d{1,6})?Z)"


def _rows(folder):
    return re.findall(r"^\| " + re.escape(folder) + r" \| [^|]+ \| `([^`]+)`", LAYOUT, re.M)


def _compile(doc_regex):
    """A regex of the document -> a compiled one with named groups time, id, worker, original."""
    r = doc_regex.replace(_TIME, f"(?P<time>{_TIME[1:]}", 1)
    r = r.replace("(ID)", f"(?P<id>{ID})").replace("(WORKER)", f"(?P<worker>{WORKER})").replace("(.+)", "(?P<original>.+)")
    if r.endswith("$"):
        r = r[:-1] + r"\Z"
    return re.compile(r, re.S)


(PENDING_RE,) = [_compile(r) for r in _rows("pending/")]
(CLAIM_RE,) = [_compile(r) for r in _rows("processing/")]
# the operations table: operation -> the suffix of its claims and the folder it claims from
OPS = {
    op: (suffix, source)
    for op, suffix, source in re.findall(r"^\| `([a-z-]+)` \| `[^`]*\.([a-z]+)` \| ([a-z]+)/ \|", LAYOUT, re.M)
}
FINAL_RE = re.compile(next(r for r in _rows("done/, dead/")).replace("(ID)", f"({ID})").rstrip("$") + r"\Z")


def parse_claim(name):
    """A processing/ name -> (operation, key, worker): the key is the job's id, or for `adopt`
    the drop-in's original name. None if the name is not a claim."""
    m = CLAIM_RE.match(name)
    if not m:
        return None
    op = next((op for op, (suffix, _) in OPS.items() if suffix == m.group(3)), None)
    stem = m.group("original")
    if op == "adopt":
        return op, stem, m.group("worker")
    origin = PENDING_RE.match(stem + ".json") if OPS[op][1] in ("pending", "held") else FINAL_RE.match(stem + ".json")
    if not origin:
        return None
    return op, origin.group("id") if OPS[op][1] in ("pending", "held") else origin.group(1), m.group("worker")


def namespace():
    """This process's PID namespace as a worker id's NS field, by the recipe of spool_layout.md
    ("Worker ids and liveness")."""
    import hashlib

    recipe = re.search(r"SHA-256 of `BOOT:DEV:INO`", LAYOUT)
    assert recipe, "spool_layout.md no longer gives the recipe this follows"
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    st = os.stat("/proc/self/ns/pid")
    return hashlib.sha256(f"{boot}:{st.st_dev}:{st.st_ino}".encode()).hexdigest()[:8]


def reserved_token(root, job_id):
    """The token that ids/ID names (spool_layout.md, "Ids"): a symlink whose target is the token,
    or (older spools) a hard link to the job file as it was enqueued, or a small file holding the
    token. None if the id is not reserved."""
    import json

    try:
        return os.readlink(os.path.join(root, "ids", job_id))
    except FileNotFoundError:
        return None
    except OSError:
        pass
    try:
        with open(os.path.join(root, "ids", job_id), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    if data.startswith(b"{"):
        return json.loads(data).get("token")
    return data.decode("ascii", "replace")
