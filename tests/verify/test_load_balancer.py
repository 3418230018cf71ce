"""The load balancers (inventory group `lb`): nginx fronts every app host, all in rotation."""

from __future__ import annotations

import re

import pytest

from asgi_fleet.rollout import FLAG_DIR, KEPT_OUT_FILE, NGINX_CONF, lb_apps
from verify_session import connect, inventory_hosts, short, targets


@pytest.fixture
def lb(lb_host):
    connection = connect(lb_host)
    if isinstance(connection, Exception):
        pytest.fail(f"{short(lb_host.name)} is unreachable: {connection}")
    return connection


@pytest.fixture
def fronted(request):
    """What the deploy put behind the load balancer, worked out the deploy's way."""
    path = request.config.getoption("inventory")
    binds, health = {}, {}
    for host, app in targets(path):
        address = host.data.get("lb_address") or short(host.name)
        binds.setdefault(host.name, (host.name, address, {}))[2][app.app_name] = app.bind
        health[app.app_name] = app.health_path
    apps = lb_apps([binds[h.name] for h in inventory_hosts(path) if h.name in binds])
    return [(app, health[app.name]) for app in apps]


def test_nginx_is_running(lb):
    assert lb.service("nginx").is_running, "nginx is not running"


def test_every_app_host_is_an_upstream_server(lb, fronted):
    config = lb.file(NGINX_CONF).content_string
    for app, _ in fronted:
        block = re.search(r"upstream %s \{(.*?)\}" % re.escape(app.name), config, re.S)
        assert block, f"no upstream for {app.name} in {NGINX_CONF}"
        listed = re.findall(r"server (\S+) ", block.group(1))
        kept_out = lb.run(f"cat {KEPT_OUT_FILE} 2>/dev/null").stdout.strip()
        assert listed == list(app.servers.values()), (
            f"{app.name}: upstream lists {listed}, want {list(app.servers.values())}"
            + (f"; kept out of rotation after a failed deploy ({KEPT_OUT_FILE}): {kept_out}; "
               "fix the host, then deploy: a healthy host goes back in" if kept_out not in ("", "{}") else ""))


def test_nginx_closes_idle_upstream_connections_before_the_apps_do(lb, request):
    """Otherwise an app's keep-alive timer can close a connection nginx is just
    sending a POST on, and that POST fails with 502 (rollout.lb_idle_ms)."""
    shortest = min(app.keepalive for _, app in targets(request.config.getoption("inventory")))
    config = lb.file(NGINX_CONF).content_string
    for name, block in re.findall(r"upstream (\S+) \{(.*?)\}", config, re.S):
        if re.search(r"^\s*keepalive \d+;", block, re.M):
            timeout = re.search(r"^\s*keepalive_timeout (\d+)ms;", block, re.M)
            assert timeout and int(timeout.group(1)) < shortest * 1000, (
                f"upstream {name} in {NGINX_CONF}: idle connections kept "
                f"{timeout.group(1) + ' ms' if timeout else '60 s (nginx default)'}, not below the "
                f"apps' keepalive of {shortest} s; deploy to rewrite the config")


def test_no_server_is_left_drained(lb):
    flags = lb.run(f"ls -A {FLAG_DIR} 2>/dev/null").stdout.split()
    assert not flags, f"drained at the load balancer after the run: {flags} (in {FLAG_DIR})"


def test_it_listens_on_each_apps_port(lb, fronted):
    for app, _ in fronted:
        assert lb.socket(f"tcp://0.0.0.0:{app.port}").is_listening, \
            f"nginx does not listen on :{app.port} for {app.name}"


def test_every_upstream_server_answers_from_the_load_balancer(lb, fronted):
    """Each server nginx sends an app's requests to answers its health endpoint, from the lb."""
    bad = {}
    for app, health in fronted:
        for server in app.servers.values():
            code = lb.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 "
                                   f"http://{server}{health}")
            if code != "200":
                bad[f"{app.name} on {server}"] = code
    assert not bad, f"from the load balancer, GET health answered: {bad}"
