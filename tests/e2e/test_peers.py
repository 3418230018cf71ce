"""The peers asgi-fleet supports besides its own worker: gunicorn's ASGI
worker (worker_class = "asgi"), deployed to a fleet host and verified."""

from __future__ import annotations

import subprocess
import sys

import pytest

from asgi_fleet.settings import PROJECT_ROOT
from e2e_helpers import run_deploy

pytestmark = pytest.mark.e2e

HOST = "@docker/asgi-web4"


@pytest.fixture
def asgi_inventory(deployed, tmp_path):
    inventory = tmp_path / "gunicorn-asgi.py"
    inventory.write_text(f'app = [("{HOST}", {{"worker_class": "asgi"}})]\n')
    yield str(inventory)
    restored = run_deploy(tmp_path, "--limit", HOST)  # back to the fleet's own worker
    assert restored.returncode == 0, restored.output[-4000:]


def test_gunicorns_asgi_worker_is_deployed_and_verify_shows_its_worker_loop_and_parser(asgi_inventory, tmp_path):
    run = run_deploy(tmp_path, inventory=asgi_inventory)
    assert run.returncode == 0, run.output[-4000:]
    assert run.host(HOST)["apps"]["hello"]["health"] == "healthy"
    verified = subprocess.run([sys.executable, "-m", "pytest", "tests/verify", "--inventory", asgi_inventory,
                               "-q", "-p", "no:cacheprovider"], cwd=PROJECT_ROOT, text=True,
                              capture_output=True, timeout=600)
    assert verified.returncode == 0, verified.stdout[-4000:]
    row = next(line for line in verified.stdout.splitlines() if line.startswith("asgi-web4"))
    assert row.split()[4:7] == ["ASGIWorker", "uvloop", "gunicorn"], row  # class, loop, parser
