"""Stage every file a release runs with, beside the live ones.

gunicorn.conf.py, the environment file, the secrets and both systemd units
are rendered into /etc/APP/next/ while the host keeps serving: preflight
checks them there with the new release, and activation (tasks/rollout.py)
installs them when the host's batch comes. Nothing the running service
reads changes before then.
"""

from pyinfra.api import deploy

from asgi_fleet import operations
from asgi_fleet.tasks import render_template


@deploy("Stage configuration")
def stage_files(plan, view) -> dict:
    """Each staged file's operation, by the name the activation knows it by."""
    paths = plan.paths
    ops = {}
    staged = {name: path for name, (path, _) in paths.staged.items()}
    for path in (paths.etc, paths.candidates):
        operations.directory(name=f"{path}/", path=path, user="root", group=paths.app, mode="750",
                             view=view)
    variables = {"app": plan.app, "paths": paths}
    # (staged file, template, group, mode): the app may read its config, not change it
    for name, source, group, mode in (
            ("config", "gunicorn.conf.py.j2", paths.app, "640"), ("env", "app.env.j2", paths.app, "640"),
            ("socket_unit", "app.socket.j2", "root", "644"), ("service_unit", "app.service.j2", "root", "644")):
        content = render_template(source, chdir=paths.current, worker_plan=plan.workers, **variables)
        ops[name] = operations.file(name=staged[name], path=staged[name], content=content.encode(),
                                    user="root", group=group, mode=mode, view=view)
    ops["secrets"] = operations.secret_file(name=staged["secrets"], paths=paths, content=plan.secrets,
                                            view=view)
    return ops
