"""What activating a staged release will take on this host."""

from pyinfra.api import deploy

from asgi_fleet import operations
from asgi_fleet.tasks import changed


@deploy("Plan the activation")
def plan_activation(plan, view, venv, record):
    """Recorded before any batch starts: the load balancer drains only the
    hosts whose activation is more than `none`."""
    operations.plan_activation(name=f"{plan.paths.app}: what activating takes", plan=plan, view=view,
                               venv_changed=lambda: venv is not None and changed(venv), record=record)
