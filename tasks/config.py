"""Stage every file a release runs with, beside the live ones.

gunicorn.conf.py, the environment file, the secrets and both systemd units
are rendered into /etc/APP/next/ while the host keeps serving: preflight
checks them there with the new release, and activation (tasks/rollout.py)
installs them when the host's batch comes. Nothing the running service
reads changes before then.
"""

from pyinfra.api import deploy
from pyinfra.operations import files

from asgi_fleet import operations
from asgi_fleet.sinks import TEMPLATE_HELPERS
from tasks import template


@deploy("Stage configuration")
def stage_files(plan):
    paths = plan.paths
    staged = {name: path for name, (path, _) in paths.staged.items()}
    for path in (paths.etc, paths.candidates):
        files.directory(name=f"{path}/", path=path, user="root", group=paths.app, mode="750")
    variables = {"app": plan.app, "paths": paths, **TEMPLATE_HELPERS}
    files.template(name=staged["config"], src=template("gunicorn.conf.py.j2"),
                   dest=staged["config"], user="root", group=paths.app, mode="640",
                   chdir=paths.current, worker_plan=plan.workers, **variables)
    files.template(name=staged["env"], src=template("app.env.j2"), dest=staged["env"],
                   user="root", group=paths.app, mode="640", **variables)
    for unit in ("socket_unit", "service_unit"):
        source = "app.socket.j2" if unit == "socket_unit" else "app.service.j2"
        files.template(name=staged[unit], src=template(source), dest=staged[unit],
                       user="root", group="root", mode="644", **variables)
    operations.secret_file(name=staged["secrets"], path=staged["secrets"],
                                  content=plan.secrets, group=paths.app)
