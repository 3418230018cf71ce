"""The host: Debian packages, and a system user and group per app."""

from pyinfra.api import deploy

from asgi_fleet import operations
from asgi_fleet.commands import NAMES_DIR
from asgi_fleet.settings import InvalidSettings

# What every host needs: python3-venv for the virtualenvs, curl for the health
# gate, procps for ps/pgrep when verifying, ca-certificates for the index.
BASE_PACKAGES = ["python3", "python3-venv", "curl", "procps", "ca-certificates"]


def app_host_packages(settings) -> list[str]:
    return BASE_PACKAGES + list(settings.extra_system_packages)


def refuse_foreign_names(host, plans, foreign: dict[str, list[str]]) -> None:
    """Stop the run, before any host is changed, if an app's name is taken on
    this host by something asgi-fleet did not create (`foreign`, per app name:
    facts.BeforePlanning): taking over the SSH user, ssh.service or /etc/apt
    would break the host."""
    problems = []
    for plan in plans:
        found = foreign.get(plan.paths.app)
        if found:
            problems.append(
                f"{host.name}: app_name={plan.paths.app!r}: the host already has {'; '.join(found)}, "
                f"not created by asgi-fleet (no {NAMES_DIR}/{plan.paths.app}); choose another app_name")
    if problems:
        raise InvalidSettings(problems)


@deploy("System packages and app users")
def prepare_host(plans, settings, view):
    operations.debian_packages(
        name="Debian packages (the lists refreshed first when older than apt_cache_time)",
        packages=app_host_packages(settings),
        cache_time=settings.apt_cache_time, view=view)
    operations.directory(name=f"{NAMES_DIR}/", path=NAMES_DIR, user="root", group="root", mode="755",
                         view=view)
    for plan in plans:
        name = plan.paths.app
        # First the marker: the names were found free (refuse_foreign_names),
        # and a run cut short after the user exists must not refuse them later.
        operations.files(name=f"{NAMES_DIR}/{name}", view=view, files=[
            operations.WantedFile(f"{NAMES_DIR}/{name}", b"", "root", "root", "644")])
        # No login shell, no home under /home: the state dir is its home.
        operations.system_account(name=f"User and group {name}", account=name,
                                  home=plan.paths.state_dir, shell="/usr/sbin/nologin", view=view)
