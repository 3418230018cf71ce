"""The per-host deploy lock: a second deploy that starts while one runs fails
fast on that host, before it changes anything."""

from pyinfra.api import deploy

from asgi_fleet import operations


@deploy("Deploy lock")
def take_deploy_lock(run, max_age: int, break_lock: str | None, view, packages: list[str]):
    """A lock left by a run that is gone is taken over (and reported); see
    asgi_fleet/lock.py. The host is read for every decision as the lock is
    taken. A host without python3 (for the agent) gets it first, with the
    Debian `packages` it needs."""
    operations.deploy_lock(name="Take the deploy lock", owner=run.lock_owner, run_id=run.run_id,
                           acquire=True, max_age=max_age, break_lock=break_lock, record=run.entry,
                           view=view, packages=tuple(packages))


@deploy("Deploy lock")
def give_back_deploy_lock(run):
    operations.deploy_lock(name="Give back the deploy lock", owner=run.lock_owner,
                           run_id=run.run_id, acquire=False)
