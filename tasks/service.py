"""systemd units, activation by change kind, and the health gate."""

from pyinfra.api import deploy
from pyinfra.operations import files, systemd

from asgi_fleet import operations
from tasks import changed, template

UNIT_DIR = "/etc/systemd/system"


@deploy("Service")
def run_service(plan, changes, record):
    """`changes`: {kind: the op that manages it} for the kinds activation.py knows."""
    paths = plan.paths
    socket_unit = files.template(
        name=f"{UNIT_DIR}/{paths.socket}", src=template("app.socket.j2"),
        dest=f"{UNIT_DIR}/{paths.socket}", user="root", group="root", mode="644",
        app=plan.app, paths=paths,
    )
    service_unit = files.template(
        name=f"{UNIT_DIR}/{paths.service}", src=template("app.service.j2"),
        dest=f"{UNIT_DIR}/{paths.service}", user="root", group="root", mode="644",
        app=plan.app, paths=paths,
    )
    systemd.daemon_reload(name="systemctl daemon-reload (units changed)",
                          _if=lambda: changed(socket_unit) or changed(service_unit))
    systemd.service(name=f"{paths.socket} enabled and listening", service=paths.socket,
                    running=True, enabled=True)
    systemd.service(name=f"{paths.service} enabled", service=paths.service, enabled=True)

    def changed_files():
        ops = {"socket_unit": socket_unit, "service_unit": service_unit, **changes}
        return {kind for kind, op in ops.items() if op is not None and changed(op)}

    workers = plan.workers.count
    activation = operations.activate(
        name=f"Activate {paths.service}", paths=paths, venv=plan.venv_dir,
        release_dir=plan.release_dir, workers=workers, changed=changed_files, record=record,
    )
    operations.health_gate(
        name=f"Health gate: GET {plan.app['health_path']} answers 200 from {workers} new workers",
        bind=plan.app["bind"], path=plan.app["health_path"],
        deadline=plan.app["health_deadline"], service=paths.service,
        release_dir=plan.release_dir, workers=workers, activated=lambda: changed(activation),
    )
