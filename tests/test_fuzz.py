"""A fuzz run of everything that reads untrusted bytes: job documents and spool file names.

Mutations of valid inputs (byte flips, insertions of structural and control bytes, truncations,
splices, deep nesting): the validator raises nothing but JobInvalid, the name parsers nothing at all.
`python tests/test_fuzz.py N` runs N cases (the suite runs 5,000).
"""

import json
import random
import sys

from queuectl import job as jobdoc
from queuectl import layout as sp
from queuectl.errors import JobInvalid
from queuectl.intake import unsafe_name

SEEDS = [
    b'{"command": "echo hi"}',
    b'{"id": "a.b-c_1", "command": "true", "max_retries": 3, "timeout": 1.5, "priority": -2}',
    b'{"command": "x", "run_at": "2026-12-01T03:00:00+01:00", "cwd": "/tmp", "env": {"A": "b"}}',
    b'{"command": "x", "attempts": 2, "history": [{"attempt": 1}], "token": "ab", "extra": [1, {"k": null}]}',
    json.dumps({"command": "\u00e9\u20ac\U0001f600", "id": "u"}).encode(),
]
NAMES = ["20261128T120000.123456Z_job-1.json", "job.json", "20261128T120000.1Z_x@h.1.2.json", "x@h.1.2.adopt", "a.b.3.log"]
SPICE = [b"\0", b"\\", b'"', b"{", b"}", b"[", b"]", b":", b",", b"\xff", b"\xc3", b"\\ud800", b"1e999", b"NaN", b"-", b"\n", b"\x7f"]


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[pos:pos] = rng.choice(SPICE)
        elif op == 2:
            del data[pos : pos + rng.randint(1, 8)]
        elif op == 3:
            other = rng.choice(SEEDS)
            cut = rng.randrange(len(other) + 1)
            data[pos:] = other[cut:]
        elif op == 4:
            depth = rng.choice([10, 100, 5000])
            data[pos:pos] = b"[" * depth + b"]" * depth
        else:
            data = data[:pos]
    return bytes(data)


def check_document(data):
    try:
        job = jobdoc.validate(jobdoc.parse_bytes(data))
    except JobInvalid:
        return False
    accepted, nb = jobdoc.accept(job, 1795000000.0, 3)
    jobdoc.dumps(accepted).decode("utf-8")  # anything accepted can be written back
    return True


def check_name(name):
    sp.parse_pending(name)
    sp.parse_claim(name)
    sp.dropin_id(name)
    unsafe_name(name)


def fuzz(n, seed=0):
    rng = random.Random(seed)
    valid = 0
    for _ in range(n):
        valid += check_document(mutate(rng, rng.choice(SEEDS)))
        raw = mutate(rng, rng.choice(NAMES).encode())
        check_name(raw.decode("utf-8", "surrogateescape"))
    return valid


def test_fuzz_documents_and_names():
    valid = fuzz(5000)
    assert 0 < valid < 5000  # the mutations reach both sides of the validator


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    print(f"{n} documents and {n} names fuzzed; {fuzz(n, seed=int(sys.argv[2]) if len(sys.argv) > 2 else 1)} documents were valid jobs")
