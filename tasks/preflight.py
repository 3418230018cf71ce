"""Preflight: prove a release can serve before anything points at it."""

from pyinfra.api import deploy
from pyinfra.operations import files

from asgi_fleet import operations
from asgi_fleet.settings import PROJECT_ROOT

PREFLIGHT_SCRIPT = "/opt/asgi-fleet/preflight.py"


@deploy("Preflight script")
def install_preflight_script():
    files.put(name=PREFLIGHT_SCRIPT, src=str(PROJECT_ROOT / "asgi_fleet" / "onhost" / "preflight.py"),
              dest=PREFLIGHT_SCRIPT, user="root", group="root", mode="644")


@deploy("Preflight")
def preflight(plan):
    app, paths = plan.app, plan.paths
    operations.preflight(
        name=f"Preflight release {plan.release_id}: import, check-config, canary",
        paths=paths, release_dir=plan.release_dir, app_module=app["app_module"],
        worker_class=app["worker_class"], health_path=app["health_path"],
        deadline=app["health_deadline"], script=PREFLIGHT_SCRIPT,
        candidates=(f"{paths.candidates}/gunicorn.conf.py", f"{paths.candidates}/env",
                    f"{paths.candidates}/secrets"),  # a secrets-only change is checked too
    )
