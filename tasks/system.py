"""The host: Debian packages, and a system user and group per app."""

from pyinfra.api import deploy
from pyinfra.operations import apt, files, server

from asgi_fleet.commands import NAMES_DIR
from asgi_fleet.facts import ForeignNames
from asgi_fleet.settings import InvalidSettings

# What every host needs: python3-venv for the virtualenvs, curl for the health
# gate, procps for ps/pgrep when verifying, ca-certificates for the index.
BASE_PACKAGES = ["python3", "python3-venv", "curl", "procps", "ca-certificates"]


def refuse_foreign_names(host, plans) -> None:
    """Stop the run, before any host is changed, if an app's name is taken on
    this host by something asgi-fleet did not create: taking over the SSH
    user, ssh.service or /etc/apt would break the host."""
    problems = []
    for plan in plans:
        found = host.get_fact(ForeignNames, paths=plan.paths)
        if found:
            problems.append(
                f"{host.name}: app_name={plan.paths.app!r}: the host already has {'; '.join(found)}, "
                f"not created by asgi-fleet (no {NAMES_DIR}/{plan.paths.app}); choose another app_name")
    if problems:
        raise InvalidSettings(problems)


@deploy("System packages and app users")
def prepare_host(plans, settings):
    apt.update(name="Refresh apt lists (when older than apt_cache_time)",
               cache_time=settings["apt_cache_time"])
    apt.packages(name="Install Debian packages",
                 packages=BASE_PACKAGES + list(settings["extra_system_packages"]),
                 no_recommends=True)
    files.directory(name=f"{NAMES_DIR}/", path=NAMES_DIR, user="root", group="root", mode="755")
    for plan in plans:
        name = plan.paths.app
        # First the marker: the names were found free (refuse_foreign_names),
        # and a run cut short after the user exists must not refuse them later.
        files.file(name=f"{NAMES_DIR}/{name}", path=f"{NAMES_DIR}/{name}", user="root",
                   group="root", mode="644")
        server.group(name=f"Group {name}", group=name, system=True)
        # No login shell, no home under /home: the state dir is its home.
        server.user(name=f"User {name}", user=name, group=name, system=True,
                    shell="/usr/sbin/nologin", home=plan.paths.state_dir,
                    ensure_home=False, create_home=False)
