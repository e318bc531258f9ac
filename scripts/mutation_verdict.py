"""A pytest plugin for ``check_mutations.py``: writes what each test's run came to, as JSON lines, to the
file named by ``$CNNBENCH_MUTATION_REPORT``, so that a failure is judged by why it failed.

Each line: ``{"test": nodeid, "outcome": "passed"|"failed"|"skipped", "when": phase, "crash": "NameError"|...|null}``.
``crash`` names the exception when the test failed with one of :data:`CRASHES` (raised in the test's process,
or printed as the last exception of a traceback that the test captured from a child process): a mutation
that makes the code raise such an error breaks the program, not the promise under test.
"""

from __future__ import annotations

import json
import os
import re

CRASHES = ("NameError", "UnboundLocalError", "AttributeError", "TypeError", "ImportError",
           "ModuleNotFoundError", "SyntaxError", "IndentationError")
# The last line of a Python traceback, as a child process prints it: "NameError: name 'n' is not defined".
_TRACEBACK_END = re.compile(r"^(?:[\w.]+\.)?(" + "|".join(CRASHES) + r"):", re.MULTILINE)


def crash_of(report) -> str | None:
    """The crash exception's name for a failed test report, None for a failure on an assertion."""
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    if crash is not None:
        name = crash.message.split(":", 1)[0].strip().rsplit(".", 1)[-1]
        if name in CRASHES:
            return name
    # A test that started a child process sees its traceback only as text (an exit code, a log).
    text = report.longreprtext + "".join(content for _, content in report.sections)
    if "Traceback (most recent call last)" in text:
        found = _TRACEBACK_END.findall(text[text.rindex("Traceback (most recent call last)"):])
        if found:
            return found[-1]
    return None


def pytest_runtest_logreport(report) -> None:
    path = os.environ.get("CNNBENCH_MUTATION_REPORT")
    if not path or (report.when != "call" and report.outcome == "passed"):
        return
    record = {"test": report.nodeid, "outcome": report.outcome, "when": report.when,
              "crash": crash_of(report) if report.failed else None}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
