"""The host: Debian packages, and a system user and group per app."""

from pyinfra.api import deploy
from pyinfra.operations import apt, server

# What every host needs: python3-venv for the virtualenvs, curl for the health
# gate, procps for ps/pgrep when verifying, ca-certificates for the index.
BASE_PACKAGES = ["python3", "python3-venv", "curl", "procps", "ca-certificates"]


@deploy("System packages and app users")
def prepare_host(plans, settings):
    apt.update(name="Refresh apt lists (when older than apt_cache_time)",
               cache_time=settings["apt_cache_time"])
    apt.packages(name="Install Debian packages",
                 packages=BASE_PACKAGES + list(settings["extra_system_packages"]),
                 no_recommends=True)
    for plan in plans:
        name = plan.paths.app
        server.group(name=f"Group {name}", group=name, system=True)
        # No login shell, no home under /home: the state dir is its home.
        server.user(name=f"User {name}", user=name, group=name, system=True,
                    shell="/usr/sbin/nologin", home=plan.paths.state_dir,
                    ensure_home=False, create_home=False)
