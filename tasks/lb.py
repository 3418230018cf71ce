"""The load balancer: nginx from Debian, fronting every app of the fleet."""

from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd

from asgi_fleet import operations
from tasks.rollout import LB_FLAG_DIR, front_the_fleet


@deploy("Load balancer")
def load_balancer(fleet, apt_cache_time: int):
    apt.packages(name="nginx (and curl, for checks) from Debian", packages=["nginx", "curl"], update=True,
                 cache_time=apt_cache_time, _env={"DEBIAN_FRONTEND": "noninteractive"})
    files.directory(name=f"{LB_FLAG_DIR}/", path=LB_FLAG_DIR, user="root", group="root",
                    mode="755")
    # A run that died mid-rollout leaves its batch drained: this run holds
    # the lock now (taken over, and reported), so every server goes back.
    operations.lb_rotation(name="Drains left by an interrupted run lifted", flag_dir=LB_FLAG_DIR,
                           drained=set)
    # Every app host of the inventory (a --limit never changes this), but the
    # ones a failed deploy left out of rotation; installed only if `nginx -t`
    # passes, then a graceful reload (old workers finish their requests).
    front_the_fleet(fleet, name="nginx config for the fleet")
    systemd.service(name="nginx running and enabled", service="nginx", running=True,
                    enabled=True)
