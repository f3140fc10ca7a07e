"""The documents promise what the code does: README's settings table and commands (spool_layout.md
has tests/test_spool_layout.py)."""

import os
import re

from queuectl import settings

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
