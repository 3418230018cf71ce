"""The load balancer: nginx from Debian, fronting every app of the fleet."""

from pyinfra.api import deploy

from asgi_fleet import operations
from asgi_fleet.rollout import FLAG_DIR
from asgi_fleet.tasks.rollout import front_the_fleet


LB_PACKAGES = ["nginx", "curl"]  # curl, for checks


@deploy("Load balancer")
def load_balancer(rollout, apt_cache_time: int, view):
    operations.debian_packages(name="nginx (and curl, for checks) from Debian", packages=LB_PACKAGES,
                               cache_time=apt_cache_time, view=view)
    operations.directory(name=f"{FLAG_DIR}/", path=FLAG_DIR, user="root", group="root",
                         mode="755", view=view)
    # A run that died mid-rollout leaves its batch drained: this run holds
    # the lock now (taken over, and reported), so every server goes back.
    operations.lb_rotation(name="Drains left by an interrupted run lifted", flag_dir=FLAG_DIR,
                           drained=set, view=view)
    # Every app host of the inventory (a --limit never changes this), but the
    # ones a failed deploy left out of rotation; installed only if `nginx -t`
    # passes, then a graceful reload (old workers finish their requests).
    front_the_fleet(rollout, view, name="nginx config for the fleet")
    operations.service_running(name="nginx running and enabled", unit="nginx.service", view=view)
