"""Stage every file a release runs with, beside the live ones.

gunicorn.conf.py, the environment file, the secrets and both systemd units
are rendered into /etc/APP/next/ while the host keeps serving: preflight
checks them there with the new release, and activation (tasks/rollout.py)
installs them when the host's batch comes. Nothing the running service
reads changes before then.
"""

from typing import Callable

from pyinfra.api import deploy

from asgi_fleet import operations
from asgi_fleet.tasks import changed, render_template


@deploy("Stage configuration")
def stage_files(plan, view) -> Callable[[], set[str]]:
    """Returns what the staging will change (by the names the activation
    knows the files by) that has not changed yet: before the run executes
    (--dry), what it will change; once it has run, nothing."""
    paths = plan.paths
    staged = {path: name for name, (path, _) in paths.staged.items()}
    for path in (paths.etc, paths.candidates):
        operations.directory(name=f"{path}/", path=path, user="root", group=paths.app, mode="750",
                             view=view)
    variables = {"app": plan.app, "paths": paths}
    # (staged file, template, group, mode): the app may read its config, not change it
    rendered = [
        operations.WantedFile(paths.staged[name][0], render_template(
            source, chdir=paths.current, worker_plan=plan.workers, **variables).encode(), "root", group, mode)
        for name, source, group, mode in (
            ("config", "gunicorn.conf.py.j2", paths.app, "640"), ("env", "app.env.j2", paths.app, "640"),
            ("socket_unit", "app.socket.j2", "root", "644"), ("service_unit", "app.service.j2", "root", "644"))]
    changing: set[str] = set()  # the rendered files' paths that the operation changes
    rendered_op = operations.files(
        name=f"{paths.candidates}/: {', '.join(f.path.rsplit('/', 1)[1] for f in rendered)}",
        files=rendered, view=view, changing=changing)
    secrets_op = operations.secret_file(name=paths.staged["secrets"][0], paths=paths, content=plan.secrets,
                                        view=view)

    def will_stage() -> set[str]:
        names = set() if rendered_op.is_complete() else {staged[path] for path in changing}
        return names | ({"secrets"} if not secrets_op.is_complete() and changed(secrets_op) else set())
    return will_stage
