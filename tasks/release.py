"""The release: the app's code under releases/RELEASE_ID, owned by root."""

from pyinfra.api import deploy

from asgi_fleet import operations


@deploy("Release")
def ship_release(plan, view):
    if plan.rollback:  # the release is already on the host
        return
    for path in (plan.paths.root, plan.paths.releases):
        operations.directory(name=f"{path}/", path=path, user="root", group="root", mode="755",
                             view=view)
    return operations.release(
        name=f"Release {plan.release_id}", path=plan.release_dir,
        release_id=plan.release_id, tarball_src=str(plan.tarball), venv=plan.venv_dir,
        group=plan.paths.app, view=view,
    )


@deploy("Prune releases")
def prune_releases(plan, view, record):
    """After a healthy activation only: the releases to roll back to stay.
    `record`: the app's record in this run (an activation prunes as it ends)."""
    operations.prune_releases(name=f"Keep {plan.app.keep_releases} releases",
                              paths=plan.paths, keep=plan.app.keep_releases, view=view, record=record)
