"""asgi-fleet: run Python ASGI apps on your own Debian servers with pyinfra.

This package holds the decisions (pure, unit-tested functions), the custom
pyinfra facts and operations, the on-host agent, and the deploy itself
(DEPLOY_FILE: this repository's deploy.py, with asgi_fleet.tasks). A user's
repository runs it from a thin deploy.py (`asgi-fleet init`).
"""

from pathlib import Path

DEPLOY_FILE = Path(__file__).resolve().parent / "deploy.py"


def run_deploy() -> None:
    """Run asgi-fleet's deploy for the current host, from a user's deploy.py.
    pyinfra runs a deploy file once per host by executing it; this executes
    the packaged one the same way (its operations keep their own names)."""
    code = compile(DEPLOY_FILE.read_text(), str(DEPLOY_FILE), "exec")
    exec(code, {"__name__": "asgi_fleet_deploy", "__file__": str(DEPLOY_FILE)})  # noqa: S102
