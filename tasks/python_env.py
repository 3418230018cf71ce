"""Virtualenvs, built from hash-locked requirements: one per app lock, and the
verification tools; from the controller's wheelhouse, or each host's index."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError

from asgi_fleet import operations
from asgi_fleet.release import WORKER_MODULES
from asgi_fleet.settings import PACKAGE_DIR, local_path
from asgi_fleet.record import dry_run
from asgi_fleet.wheelhouse import Platform, Wheelhouse, WheelhouseError, has_python3, parse_platform

PIP_CA_BUNDLE = "/etc/asgi-fleet/pip-ca.pem"
VERIFY_TOOLS_LOCK = PACKAGE_DIR / "requirements" / "verify-tools.lock"
VERIFY_TOOLS_SHA256 = hashlib.sha256(VERIFY_TOOLS_LOCK.read_bytes()).hexdigest()
VERIFY_TOOLS_VENV = "/opt/asgi-fleet/verify-tools"
# uv, from the tools' lock: installs every virtualenv from a wheelhouse (the
# tools' own with the uv binary out of its wheel, before this exists)
HOST_UV = f"{VERIFY_TOOLS_VENV}/bin/uv"


@dataclass(frozen=True)
class PipOptions:
    index_url: str | None
    ca_bundle: str | None  # on the host
    platform: Platform | None  # None: the host installs from its index, not from a wheelhouse
    bare: bool = False  # the host has no python3 yet, so none of asgi-fleet's virtualenvs either

    def wheelhouse(self, lock: Path) -> Wheelhouse | None:
        return Wheelhouse(lock, self.platform) if self.platform else None


@deploy("Package index")
def package_index(settings, probed: list[str], view) -> PipOptions:
    """Where pip installs from: the controller's wheelhouse for this host's
    platform (read from BeforePlanning's lines), else the host's index; a
    custom index and CA bundle, if set (host-wide)."""
    platform = None
    if settings.wheelhouse:
        try:
            platform = parse_platform(probed, host.name)
        except WheelhouseError as error:
            raise PyinfraError(str(error)) from None
    bare = not has_python3(probed)
    if not settings.pip_ca_bundle:
        return PipOptions(settings.pip_index_url, None, platform, bare)
    operations.directory(name="/etc/asgi-fleet/", path=PIP_CA_BUNDLE.rpartition("/")[0], user="root",
                         group="root", mode="755", view=view)
    operations.files(name="CA bundle for pip", view=view, files=[operations.WantedFile(
        PIP_CA_BUNDLE, local_path(settings.pip_ca_bundle).read_bytes(), "root", "root", "644")])
    return PipOptions(settings.pip_index_url, PIP_CA_BUNDLE, platform, bare)


@deploy("Wheelhouses")
def fetch_wheelhouses(plans, pip: PipOptions, view):
    """The wheelhouses of the virtualenvs this host will build (the
    verification tools', each app's), downloading on the controller while
    the host installs its packages. A host without python3 needs them all,
    and installs its packages with python3 as the deploy lock is taken: its
    downloads start now, before the run executes."""
    if pip.platform is None:
        return
    venvs = [(VERIFY_TOOLS_VENV, "root", VERIFY_TOOLS_SHA256, pip.wheelhouse(VERIFY_TOOLS_LOCK))]
    venvs += [(plan.venv_dir, plan.paths.app, plan.lock_sha256, pip.wheelhouse(plan.lock_file))
              for plan in plans if not plan.rollback]
    if pip.bare and not dry_run():
        for *_, house in venvs:
            house.prefetch()
    operations.prefetch_wheelhouses(name="Download what the virtualenvs to build need", venvs=venvs, view=view)


@deploy("Verification tools")
def install_verify_tools(pip: PipOptions, view):
    """py-spy, with which the verification suite reads live workers' stacks,
    and uv, which installs the apps' virtualenvs from their wheelhouses."""
    operations.directory(name="/opt/asgi-fleet/", path="/opt/asgi-fleet", user="root", group="root",
                         mode="755", view=view)
    operations.virtualenv(
        name=f"Virtualenv {VERIFY_TOOLS_VENV}", path=VERIFY_TOOLS_VENV,
        lock_src=str(VERIFY_TOOLS_LOCK),
        lock_sha256=VERIFY_TOOLS_SHA256,
        app="root",  # run by root only: no one else may be able to change it
        view=view, index_url=pip.index_url, ca_bundle=pip.ca_bundle,
        wheelhouse=pip.wheelhouse(VERIFY_TOOLS_LOCK), uv=HOST_UV,
    )


@deploy("Virtualenv")
def install_virtualenv(plan, pip: PipOptions, view):
    """Returns the op, whose change means a new master (None on a rollback:
    the release's virtualenv is already on the host)."""
    if plan.rollback:
        return None
    operations.directory(name=f"{plan.paths.venvs}/", path=plan.paths.venvs,
                         user="root", group="root", mode="755", view=view)
    return operations.virtualenv(
        name=f"Virtualenv {plan.venv_id} from {plan.lock_file.name}",
        path=plan.venv_dir, lock_src=str(plan.lock_file), lock_sha256=plan.lock_sha256,
        app=plan.paths.app, view=view, index_url=pip.index_url, ca_bundle=pip.ca_bundle,
        wheelhouse=pip.wheelhouse(plan.lock_file), modules={name: str(source) for name, source in WORKER_MODULES.items()},
        uv=HOST_UV,
    )
