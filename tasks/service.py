"""What activating a staged release will take on this host."""

from pyinfra.api import deploy

from asgi_fleet import operations
from asgi_fleet.tasks import changed


@deploy("Plan the activation")
def plan_activation(plan, view, venv, staged: dict, record):
    """Recorded before any batch starts: the load balancer drains only the
    hosts whose activation is more than `none`. `staged`: the staging
    operations (tasks.config.stage_files); one that has not run yet counts
    by what it will change (a --dry run's prediction)."""
    operations.plan_activation(
        name=f"{plan.paths.app}: what activating takes", plan=plan, view=view,
        venv_changed=lambda: venv is not None and changed(venv),
        will_stage=lambda: {name for name, op in staged.items() if not op.is_complete() and changed(op)},
        record=record)
