"""The documents promise what the code does: README's settings table and commands, spool_layout's grammar."""

import os
import re

import pytest

from queuectl import settings, spool
from queuectl.job import ID_PATTERN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def test_readme_settings_table_is_generated_from_the_settings_table():
    readme = read("README.md")
    block = readme.split("<!-- settings-table")[1].split("-->", 1)[1].split("<!-- /settings-table -->")[0]
    assert block.strip() == settings.markdown_table()


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```sh\n(.*?)\n```", read("README.md"), re.S)
    install_and_run, test_command = blocks[0], blocks[1]
    assert "pip install ." in install_and_run and "queuectl enqueue" in install_and_run
    assert "worker start --burst" in install_and_run
    assert test_command.endswith("pytest")
    assert test_command in read(".ci/run")


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


def test_names_queuectl_writes_follow_the_documented_grammar():
    doc = _doc_regexes()
    assert doc["pending/"].match(spool.pending_name(1795000000.25, "job-1"))
    assert doc["processing/"].match(spool.claim_name(spool.pending_name(1795000000.25, "job-1"), "host.example.12.345"))
    assert doc["done/, dead/"].match(spool.final_name("job-1"))
    assert doc["logs/"].match(spool.log_name("job-1", 3))
