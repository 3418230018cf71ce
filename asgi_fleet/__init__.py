"""asgi-fleet: run Python ASGI apps on your own Debian servers with pyinfra.

This package holds the decisions (pure, unit-tested functions), the custom
pyinfra facts and operations, the on-host agent, and the deploy itself
(DEPLOY_FILE: this repository's deploy.py, with asgi_fleet.tasks). A user's
repository runs it from a thin deploy.py (`asgi-fleet init`).
"""

from pathlib import Path

DEPLOY_FILE = Path(__file__).resolve().parent / "deploy.py"
