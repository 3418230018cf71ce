"""The single declarative list of test hosts.

Everything else (image builder, `python -m asgi_fleet.fleet up`, the pyinfra inventory
`inventories/docker.py`, tests) reads this list, so adding or changing a host
happens here and nowhere else.

The four hosts deliberately differ in the things a deploy has to get right:
the Debian release, how pyinfra reaches the host (docker exec vs. SSH as an
unprivileged sudo user) and how many CPUs the host may use (all, a cpuset,
or a CFS quota that ``nproc`` does not see).
"""

from dataclasses import dataclass
from typing import Optional

from .util import KNOWN_HOSTS, SSH_KEY

#: Label on every container this toolkit starts; `fleet down` removes exactly these.
LABEL_KEY = "asgi-fleet.test-host"
LABEL_VALUE = "1"
LABEL = f"{LABEL_KEY}={LABEL_VALUE}"

#: Host image name; one image per Debian release.
IMAGE_PATTERN = "asgi-fleet-host:{dist}"

#: The Docker network of the test hosts: its DNS lets the load balancer reach
#: app hosts by container name, as a private network's DNS would.
NETWORK = "asgi-fleet"

#: Unprivileged user with passwordless sudo, used by SSH hosts.
DEPLOY_USER = "deploy"


@dataclass(frozen=True)
class TestHost:
    """One test host: a systemd container that plays a Debian server."""

    name: str  # container name and hostname (and pyinfra inventory name)
    dist: str  # "bookworm" or "trixie"
    connector: str  # "docker" (pyinfra @docker, docker exec) or "ssh"
    cpuset: Optional[str] = None  # docker --cpuset-cpus, e.g. "0"
    cpus: Optional[float] = None  # docker --cpus, a CFS quota (cpu.cfs_quota_us / cpu.max)
    ssh_port: Optional[int] = None  # published on 127.0.0.1 only, for ssh hosts
    role: str = "app"  # "app" (inventory group `app`) or "lb" (group `lb`: nginx)
    # root's pip cache on a volume all such hosts share (PIP_CACHE_VOLUME), as a
    # site's caching proxy would be: N hosts download a wheel once, and pip
    # still checks every file against the lock's hashes. The benchmarks' hosts
    # go without it, so that their first provisions stay cold.
    pip_cache: bool = False

    # Not a pytest test class, despite the name.
    __test__ = False

    @property
    def image(self) -> str:
        return IMAGE_PATTERN.format(dist=self.dist)


PIP_CACHE_VOLUME = "asgi-fleet-pip-cache"

TEST_HOSTS = [
    TestHost("asgi-web1", "bookworm", "docker", pip_cache=True),
    TestHost("asgi-web2", "bookworm", "docker", cpuset="0", pip_cache=True),
    TestHost("asgi-web3", "bookworm", "ssh", ssh_port=2222, pip_cache=True),
    TestHost("asgi-web4", "trixie", "docker", cpus=1.0, pip_cache=True),
    TestHost("asgi-lb", "bookworm", "docker", role="lb"),
]

#: Started only by the tests that need a larger fleet (`fleet up asgi-web5 ...`):
#: the rollout-order test runs on eight app hosts.
SPARE_HOSTS = [TestHost(f"asgi-web{n}", "bookworm", "docker") for n in range(5, 9)]

DISTS = sorted({h.dist for h in TEST_HOSTS})


def inventory_entry(host: TestHost) -> tuple[str, dict]:
    """A test host as a pyinfra inventory entry: (name, host data). Docker hosts
    are reached with `docker exec` as root; SSH hosts as the unprivileged user
    `deploy` with sudo, key-only, with strict host-key checking against
    .fleet/known_hosts (written by `fleet up`). Data key names checked against
    pyinfra 3.10's connectors/ssh.py."""
    data = {
        "test_host_connector": host.connector,
        "test_host_dist": host.dist,
        "test_host_cpuset": host.cpuset,
        "test_host_cpus": host.cpus,
    }
    if host.connector == "docker":
        return f"@docker/{host.name}", data
    data.update(
        ssh_hostname="127.0.0.1",
        ssh_port=host.ssh_port,
        ssh_user=DEPLOY_USER,
        ssh_key=str(SSH_KEY),
        ssh_known_hosts_file=str(KNOWN_HOSTS),
        # pyinfra's default is "accept-new" (trust on first use); the key is known.
        ssh_strict_host_key_checking="yes",
        _sudo=True,
    )
    return host.name, data


def get_host(name: str) -> TestHost:
    """Look a host up by name; raise KeyError with the known names."""
    for host in TEST_HOSTS + SPARE_HOSTS:
        if host.name == name:
            return host
    raise KeyError(f"unknown test host {name!r}; known: {[h.name for h in TEST_HOSTS + SPARE_HOSTS]}")
