"""gunicorn.conf.py and the app's environment file, sized for this host.

Both are written twice: first as candidates in /etc/APP/next/ (chdir on the
new release itself), which preflight checks with that release, then in place
once preflight passed. A bad config never reaches the file the running master
re-reads on HUP.
"""

from pyinfra.api import deploy
from pyinfra.operations import files

from asgi_fleet import operations
from tasks import template


def _render(plan, etc: str, chdir: str):
    paths = plan.paths
    config = files.template(
        name=f"{etc}/gunicorn.conf.py", src=template("gunicorn.conf.py.j2"),
        dest=f"{etc}/gunicorn.conf.py", user="root", group=paths.app, mode="640",
        app=plan.app, paths=paths, chdir=chdir, worker_plan=plan.workers,
    )
    env = files.template(
        name=f"{etc}/env", src=template("app.env.j2"), dest=f"{etc}/env",
        user="root", group=paths.app, mode="640", app=plan.app, paths=paths,
    )
    return config, env


@deploy("Candidate configuration")
def write_candidate_config(plan):
    paths = plan.paths
    for path in (paths.etc, paths.candidates):
        files.directory(name=f"{path}/", path=path, user="root", group=paths.app, mode="750")
    _render(plan, paths.candidates, chdir=plan.release_dir)


@deploy("Secrets")
def install_secrets(plan):
    """Returns the op: a change is a reload (gunicorn.conf.py re-reads them)."""
    return operations.secret_file(name=plan.paths.secrets_file, path=plan.paths.secrets_file,
                                  content=plan.secrets, group=plan.paths.app)


@deploy("Configuration")
def install_config(plan):
    """Returns the ops whose change needs a reload (config) and a restart (env)."""
    return _render(plan, plan.paths.etc, chdir=plan.paths.current)
