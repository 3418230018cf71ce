"""Verify any inventory after provisioning, against the live processes.

    pytest tests/verify --inventory inventories/prod.py

Reads the inventory, group data and host data the way the deploy does, works
out what each host should run with the deploy's own functions, and checks it
against what really runs. A host that cannot be reached fails its own
reachability test; the others are still checked. A summary table follows.
"""

from __future__ import annotations

import pytest

from asgi_fleet.commands import AppPaths
from asgi_fleet.inventory import InventoryError, app_hosts_of
from asgi_fleet.verify import AppProbe, format_table
from verify_session import (
    _connections, _probes, connect, inventory_hosts, load_balancers, short, targets,
)


def pytest_addoption(parser):
    parser.addoption("--inventory", default="inventories/docker.py",
                     help="the pyinfra inventory to verify (default: the local test fleet)")


def pytest_configure(config):
    """An inventory that cannot be loaded, or has no app host, is an error,
    not a run that skips every check and exits 0."""
    try:
        app_hosts_of(config.getoption("inventory"))
    except InventoryError as error:
        raise pytest.UsageError(f"asgi-fleet verify: {error}") from None


def pytest_sessionfinish(session, exitstatus):
    """A run in which no check passed or failed checked nothing: not green."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    stats = reporter.stats if reporter else {}
    if exitstatus == 0 and not stats.get("passed") and not stats.get("failed"):
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED


def pytest_generate_tests(metafunc):
    path = metafunc.config.getoption("inventory")
    if "target" in metafunc.fixturenames:
        found = targets(path)
        metafunc.parametrize("target", found,
                             ids=[f"{short(h.name)}/{a['app_name']}" for h, a in found])
    if "inventory_host" in metafunc.fixturenames:
        hosts = inventory_hosts(path)
        metafunc.parametrize("inventory_host", hosts, ids=[short(h.name) for h in hosts])
    if "lb_host" in metafunc.fixturenames:
        hosts = load_balancers(path)
        metafunc.parametrize("lb_host", hosts, ids=[short(h.name) for h in hosts])


@pytest.fixture
def probe(target) -> AppProbe:
    host, app = target
    connection = connect(host)
    if isinstance(connection, Exception):
        pytest.skip(f"{short(host.name)} is unreachable (see test_host_is_reachable)")
    key = (host.name, app["app_name"])
    if key not in _probes:
        _probes[key] = AppProbe(f"{short(host.name)}/{app['app_name']}", connection, app,
                                AppPaths(app["app_name"], app["srv_root"]))
    return _probes[key]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    path = config.getoption("inventory")
    if not _connections:
        return
    columns = ["host", "app", "release", "workers", "worker class", "loop", "http parser",
               "health", "exposure"]
    rows = []
    for host, app in targets(path):
        connection = _connections.get(host.name)
        if connection is None:
            continue
        if isinstance(connection, Exception):
            rows.append([short(host.name), app["app_name"], "UNREACHABLE"] + ["-"] * 6)
            continue
        probe = _probes.get((host.name, app["app_name"]))
        if probe:
            rows.append([short(host.name), app["app_name"], *probe.summary().values()])
    terminalreporter.section(f"asgi-fleet: {path}")
    for line in format_table([columns, *rows]):
        terminalreporter.write_line(line)
