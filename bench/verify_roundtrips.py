"""A pytest plugin for bench/verify_scale.py: counts verify's round trips.

Loaded with `-p verify_roundtrips` (bench/ on PYTHONPATH). Every command the
suite runs on a host goes through testinfra's Host.run (check_output,
run_test and the modules too); this counts them per host and writes
{host: count} to $BENCH_VERIFY_COUNTS/PID.json when the process ends (under
xdist each worker writes its own).
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import testinfra.host

COUNTS: collections.Counter = collections.Counter()
_run = testinfra.host.Host.run


def _counted_run(self, command, *args, **kwargs):
    COUNTS[self.backend.get_pytest_id()] += 1
    return _run(self, command, *args, **kwargs)


testinfra.host.Host.run = _counted_run


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("BENCH_VERIFY_COUNTS")
    if target:
        Path(target, f"{os.getpid()}.json").write_text(json.dumps(dict(COUNTS)))
