"""End-to-end tests on the local Docker fleet (`make fleet` starts it).

One deploy of the whole fleet per session (the "converge"); every test then
checks real hosts through testinfra: real systemd, gunicorn, uvicorn, HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from asgi_fleet.settings import PROJECT_ROOT
from e2e_helpers import Run, fleet_hosts, fleet_targets, run_deploy


def pytest_generate_tests(metafunc):
    if "target" in metafunc.fixturenames:
        targets = fleet_targets()
        metafunc.parametrize("target", targets, ids=[t.id for t in targets])


@pytest.fixture(scope="session")
def fleet():
    """The test hosts are running (starting any that are not)."""
    subprocess.run([sys.executable, "-m", "asgi_fleet.fleet", "up"], cwd=PROJECT_ROOT, check=True)
    return fleet_hosts()


@pytest.fixture(scope="session")
def controller_cache(tmp_path_factory):
    """The session's own controller cache (the wheelhouses): the first
    deploy downloads into it, every later one finds them there."""
    os.environ["ASGI_FLEET_CACHE"] = str(tmp_path_factory.mktemp("controller-cache"))
    return os.environ["ASGI_FLEET_CACHE"]


@pytest.fixture(scope="session")
def deployed(fleet, controller_cache, tmp_path_factory) -> Run:
    """The whole fleet, deployed once for the session."""
    run = run_deploy(tmp_path_factory.mktemp("deploy"))
    assert run.returncode == 0, run.output[-6000:]
    return run
