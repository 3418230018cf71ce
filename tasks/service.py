"""What activating a staged release will take on this host."""

from pyinfra.api import deploy

from asgi_fleet import operations
from asgi_fleet.tasks import changed


@deploy("Plan the activation")
def plan_activation(plan, view, venv, will_stage, record):
    """Recorded before any batch starts: the load balancer drains only the
    hosts whose activation is more than `none`. `will_stage`: what the
    staging (tasks.config.stage_files) will change and has not yet (a --dry
    run's prediction)."""
    operations.plan_activation(
        name=f"{plan.paths.app}: what activating takes", plan=plan, view=view,
        venv_changed=lambda: venv is not None and changed(venv), will_stage=will_stage, record=record)
