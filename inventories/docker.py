"""pyinfra 3.x inventory of the asgi-fleet test hosts (built from fleet/hosts.py).

Start the hosts first (`python -m asgi_fleet.fleet up`): pyinfra's @docker connector on a
name that is not a running container would start a new, systemd-less one.

Groups: `app` (the app hosts), `lb` (the load balancer, nginx), plus pyinfra's automatic `docker` (this file)
and `all`.  Docker hosts are reached with `docker exec` as root; SSH hosts as
the unprivileged user `deploy` with sudo, key-only, with strict host-key
checking against .fleet/known_hosts (written by `fleet up`): see
asgi_fleet.fleet.hosts.inventory_entry.  Paths are absolute, so pyinfra can
run from any directory.

Host data `test_host_connector` ("docker"/"ssh") lets deploy code and tests
tell the two apart.
"""

import os as _os
import sys as _sys

# Names without a leading underscore that hold a list or tuple become pyinfra
# groups, hence the underscores on everything but `app`.
_REPO = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _REPO not in _sys.path:
    _sys.path.insert(0, _REPO)

from asgi_fleet.fleet import hosts as _hosts  # noqa: E402

# Settings that differ per test host, so the fleet exercises them:
_HOST_SETTINGS = {
    # two apps on one host: each its own user, unit, paths and port
    "asgi-web1": {"apps": [{"app_name": "hello"}, {"app_name": "shop", "bind": "0.0.0.0:8001"}]},
    # pip through an explicit CA bundle, as behind a company's TLS proxy
    "asgi-web3": {"pip_ca_bundle": "/etc/ssl/certs/ca-certificates.crt"},
}


def _with_settings(entry):
    name, data = entry
    short = name.removeprefix("@docker/")
    return name, {**data, **_HOST_SETTINGS.get(short, {})}


app = [_with_settings(_hosts.inventory_entry(_h)) for _h in _hosts.TEST_HOSTS if _h.role == "app"]
lb = [_hosts.inventory_entry(_h) for _h in _hosts.TEST_HOSTS if _h.role == "lb"]
