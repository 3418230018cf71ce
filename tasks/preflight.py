"""Preflight: prove a release can serve before anything points at it."""

from pyinfra.api import deploy

from asgi_fleet import operations
from asgi_fleet.commands import PREFLIGHT_SCRIPT
from asgi_fleet.settings import PACKAGE_DIR



@deploy("Preflight script")
def install_preflight_script(view):
    operations.files(name=PREFLIGHT_SCRIPT, view=view, files=[operations.WantedFile(
        PREFLIGHT_SCRIPT, (PACKAGE_DIR / "onhost" / "preflight.py").read_bytes(), "root", "root", "644")])


@deploy("Preflight")
def preflight(plan, view):
    operations.preflight(name=f"Preflight release {plan.release_id}: config, import, canary",
                         plan=plan, view=view)
