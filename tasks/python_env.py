"""The app's virtualenv, built from its hash-locked requirements."""

from pyinfra.api import deploy
from pyinfra.operations import files

from asgi_fleet import operations
from asgi_fleet.plan import PROJECT_ROOT

PIP_CA_BUNDLE = "/etc/asgi-fleet/pip-ca.pem"


@deploy("Virtualenv")
def install_virtualenv(plan):
    app = plan.app
    files.directory(name=f"{plan.paths.venvs}/", path=plan.paths.venvs,
                    user="root", group="root", mode="755")
    ca_bundle = None
    if app["pip_ca_bundle"]:
        files.put(name="CA bundle for pip", src=str(PROJECT_ROOT / app["pip_ca_bundle"]),
                  dest=PIP_CA_BUNDLE, user="root", group="root", mode="644")
        ca_bundle = PIP_CA_BUNDLE
    return operations.virtualenv(
        name=f"Virtualenv {plan.venv_id} from {plan.lock_file.name}",
        path=plan.venv_dir, lock_src=str(plan.lock_file), lock_sha256=plan.lock_sha256,
        index_url=app["pip_index_url"], ca_bundle=ca_bundle,
    )
