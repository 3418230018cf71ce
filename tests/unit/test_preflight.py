"""The on-host preflight script, run for real against small apps."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from asgi_fleet.settings import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "asgi_fleet" / "onhost" / "preflight.py"

APPS = {
    "plain": "async def app(scope, receive, send):\n    pass\n",
    "factory": "from fastapi import FastAPI\ndef create_app():\n    return FastAPI()\n",
    "broken": "import no_such_module_anywhere\napp = None\n",
    "notasgi": "app = 42\n",
}


def preflight(tmp_path: Path, spec: str, worker="uvicorn_worker.UvicornWorker"):
    for name, body in APPS.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    (tmp_path / "app.py").write_text((PROJECT_ROOT / "example" / "app.py").read_text())
    return subprocess.run([sys.executable, str(SCRIPT), spec, worker], cwd=tmp_path,
                          capture_output=True, text=True)


@pytest.mark.parametrize("spec, interface", [
    ("app:app", "ASGI3"),  # FastAPI
    ("plain:app", "ASGI3"),  # async def app(scope, receive, send)
    ("factory:create_app()", "ASGI3"),
])
def test_a_good_app_passes(tmp_path, spec, interface):
    result = preflight(tmp_path, spec)
    assert result.returncode == 0, result.stderr
    assert f"is an {interface} app" in result.stdout


def test_gunicorns_short_name_for_its_asgi_worker_is_known(tmp_path):
    result = preflight(tmp_path, "app:app", "asgi")
    assert result.returncode == 0 and "asgi imports" in result.stdout, result.stderr


@pytest.mark.parametrize("spec, worker, message", [
    ("factory:create_app", "uvicorn_worker.UvicornWorker",
     "looks like an app factory (a function with no arguments); set app_module to 'factory:create_app()'"),
    ("broken:app", "uvicorn_worker.UvicornWorker",
     "importing broken raised ModuleNotFoundError: No module named 'no_such_module_anywhere'"),
    ("app:nope", "uvicorn_worker.UvicornWorker", "app has no attribute 'nope'"),
    ("notasgi:app", "uvicorn_worker.UvicornWorker", "is a int, not an ASGI application"),
    ("app:app", "uvicorn_worker.NoSuchWorker", "uvicorn_worker has no attribute 'NoSuchWorker'"),
    ("app:app", "json.JSONDecoder", "is not a gunicorn worker class"),
])
def test_a_bad_release_is_refused_with_the_reason(tmp_path, spec, worker, message):
    result = preflight(tmp_path, spec, worker)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr
