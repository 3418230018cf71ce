"""The load balancer: nginx from Debian, fronting every app of the fleet."""

from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from asgi_fleet import rollout
from tasks import changed, template
from tasks.rollout import LB_FLAG_DIR

NGINX_CONF = "/etc/nginx/conf.d/asgi-fleet.conf"


@deploy("Load balancer")
def load_balancer(fleet, apt_cache_time: int):
    apt.packages(name="nginx (and curl, for checks) from Debian", packages=["nginx", "curl"], update=True,
                 cache_time=apt_cache_time, _env={"DEBIAN_FRONTEND": "noninteractive"})
    config = files.template(
        name=NGINX_CONF, src=template("nginx-lb.conf.j2"), dest=NGINX_CONF,
        user="root", group="root", mode="644", flag_dir=LB_FLAG_DIR,
        apps=rollout.lb_config(fleet.lb_apps, fleet.batches),
    )
    files.directory(name=f"{LB_FLAG_DIR}/", path=LB_FLAG_DIR, user="root", group="root",
                    mode="755")
    systemd.service(name="nginx running and enabled", service="nginx", running=True,
                    enabled=True)
    # Graceful: new workers take new connections, old ones finish their requests.
    server.shell(name="nginx -t, then reload nginx (config changed)",
                 commands=["nginx -t -q && systemctl reload nginx"], _if=lambda: changed(config))
