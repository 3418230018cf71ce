"""Preflight: prove a release can serve before anything points at it."""

from pyinfra.api import deploy

from asgi_fleet import operations
from asgi_fleet.commands import PREFLIGHT_SCRIPT
from asgi_fleet.settings import PACKAGE_DIR



@deploy("Preflight script")
def install_preflight_script(view):
    operations.file(name=PREFLIGHT_SCRIPT, path=PREFLIGHT_SCRIPT, user="root", group="root", mode="644",
                    content=(PACKAGE_DIR / "onhost" / "preflight.py").read_bytes(),
                    view=view)


@deploy("Preflight")
def preflight(plan, view):
    operations.preflight(name=f"Preflight release {plan.release_id}: config, import, canary",
                         plan=plan, view=view)
