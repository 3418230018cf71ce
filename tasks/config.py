"""gunicorn.conf.py and the app's environment file, sized for this host."""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from asgi_fleet.facts import HostResourcesFact
from asgi_fleet.sizing import worker_count
from tasks import template


def worker_plan(app):
    """The same decision the verification suite recomputes for this host."""
    return worker_count(
        host.get_fact(HostResourcesFact),
        policy=app["worker_policy"], worker_memory_mb=app["worker_memory_mb"],
        memory_reserve_mb=app["memory_reserve_mb"], override=app["workers"],
    )


@deploy("Configuration")
def write_config(plan):
    """Returns the ops whose change needs a reload (config) and a restart (env)."""
    paths = plan.paths
    files.directory(name=f"{paths.etc}/", path=paths.etc, user="root", group=paths.app, mode="750")
    config = files.template(
        name=f"{paths.gunicorn_conf}", src=template("gunicorn.conf.py.j2"),
        dest=paths.gunicorn_conf, user="root", group=paths.app, mode="640",
        app=plan.app, paths=paths, worker_plan=worker_plan(plan.app),
    )
    env = files.template(
        name=f"{paths.env_file}", src=template("app.env.j2"), dest=paths.env_file,
        user="root", group=paths.app, mode="640", app=plan.app, paths=paths,
    )
    return config, env
