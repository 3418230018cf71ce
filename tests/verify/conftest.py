"""Verify any inventory after provisioning, against the live processes.

    pytest tests/verify --inventory inventories/prod.py [-n auto] [--retry-timeout 60]
        [--limit HOST-OR-GROUP ...] [--since 30m] [--report-json verify.json] [--prometheus-textfile FILE] [--junitxml FILE]

Reads the inventory, group data and host data the way the deploy does, works
out what each host should run with the deploy's own functions, and checks it
against what really runs (on the hosts `--limit` picks, as pyinfra's
`--limit` does; what the load balancer should front is still the whole
inventory, as for a limited deploy). A host that cannot be reached fails its own
reachability test; the others are still checked. A summary table follows,
then one Nagios-style line; the exit codes are asgi_fleet.report.EXIT_CODES.

Under pytest-xdist (`-n`), one host's checks run in one worker process
(--dist loadgroup), so each host is connected to once.
"""

from __future__ import annotations

import time

import pytest

from asgi_fleet import report as results_report
from asgi_fleet.commands import AppPaths
from asgi_fleet.inventory import InventoryError, app_hosts_of, limited
from asgi_fleet.verify import AppProbe, format_table, parse_since
from verify_session import (
    _connections, _probes, connect, inventory_hosts, load_balancers, short, targets,
)

RETRY_INTERVAL = 1.0  # seconds between two tries of a failing check (--retry-timeout)
SINCE = pytest.StashKey[float | None]()
CHECKED = pytest.StashKey[set[str]]()  # the names of the hosts --limit picks


def pytest_addoption(parser):
    group = parser.getgroup("asgi-fleet verify")
    group.addoption("--inventory", default="inventories/docker.py",
                    help="the pyinfra inventory to verify (default: the local test fleet)")
    group.addoption("--limit", action="append", default=[], metavar="HOST-OR-GROUP",
                    help="check only these hosts (a name, a glob pattern or a group; repeatable), "
                         "as pyinfra's --limit picks them")
    group.addoption("--since", default=None, metavar="WHEN",
                    help="journal alarms at or after WHEN fail the run (ISO 8601 time, epoch "
                         "seconds, or a duration ago: 30m); by default only those during the "
                         "last activation, or recurring, do")
    group.addoption("--retry-timeout", type=float, default=0, metavar="SECONDS",
                    help="retry failing state checks until they pass or SECONDS are up "
                         "(right after a deploy, old workers may still be draining)")
    group.addoption("--loop-seconds", type=int, default=3, metavar="SECONDS",
                    help="sample each worker's event loop this long for synchronous calls "
                         "that block it (the async doctor's check; 0: skip it)")
    group.addoption("--report-json", default=None, metavar="FILE",
                    help="write every promise per host and app, with its outcome, as JSON")
    group.addoption("--prometheus-textfile", default=None, metavar="FILE",
                    help="write the results for node_exporter's textfile collector")


def pytest_configure(config):
    """An inventory that cannot be loaded, or has no app host, is an error,
    not a run that skips every check and exits 0."""
    config.addinivalue_line("markers", "events: reports events, not state (never retried)")
    config.addinivalue_line("markers", "sampled: measures live traffic over time (never retried)")
    path = config.getoption("inventory")
    try:
        app_hosts_of(path)
        config.stash[CHECKED] = {h.name for h in limited(inventory_hosts(path) + load_balancers(path),
                                                         config.getoption("limit"))}
    except InventoryError as error:
        raise pytest.UsageError(f"asgi-fleet verify: {error}") from None
    since = config.getoption("since")
    try:
        config.stash[SINCE] = parse_since(since, time.time()) if since else None
    except ValueError as error:
        raise pytest.UsageError(f"asgi-fleet verify: {error}") from None
    if config.getoption("loop_seconds") < 0:
        raise pytest.UsageError("asgi-fleet verify: --loop-seconds must be 0 or more seconds")
    if config.getoption("retry_timeout") < 0:
        raise pytest.UsageError("asgi-fleet verify: --retry-timeout must be 0 or more seconds")
    if getattr(config.option, "dist", "no") == "load":  # -n: keep each host in one worker
        config.option.dist = "loadgroup"
    config.pluginmanager.register(VerifyResults(config), "asgi-fleet-verify-results")


def pytest_generate_tests(metafunc):
    path, checked = metafunc.config.getoption("inventory"), metafunc.config.stash[CHECKED]
    if "target" in metafunc.fixturenames:
        found = [(h, a) for h, a in targets(path) if h.name in checked]
        metafunc.parametrize("target", found,
                             ids=[f"{short(h.name)}/{a.app_name}" for h, a in found])
    if "inventory_host" in metafunc.fixturenames:
        hosts = [h for h in inventory_hosts(path) if h.name in checked]
        metafunc.parametrize("inventory_host", hosts, ids=[short(h.name) for h in hosts])
    if "lb_host" in metafunc.fixturenames:
        hosts = [h for h in load_balancers(path) if h.name in checked]
        metafunc.parametrize("lb_host", hosts, ids=[short(h.name) for h in hosts])


def pytest_collection_modifyitems(items):
    """Name each check's host, app and promise (for the JSON report and junit),
    and group it by host (for xdist)."""
    for item in items:
        params = getattr(item, "callspec", None)
        params = params.params if params else {}
        if "target" in params:
            host, app = short(params["target"][0].name), params["target"][1].app_name
        elif "inventory_host" in params or "lb_host" in params:
            host, app = short((params.get("inventory_host") or params["lb_host"]).name), None
        else:
            continue
        item.user_properties += [("host", host), *([("app", app)] if app else []),
                                 ("promise", item.originalname.removeprefix("test_"))]
        item.add_marker(pytest.mark.xdist_group(host))


@pytest.fixture
def probe(target, request) -> AppProbe:
    host, app = target
    connection = connect(host)
    if isinstance(connection, Exception):
        pytest.skip(f"{short(host.name)} is unreachable (see test_host_is_reachable)")
    key = (host.name, app.app_name)
    if key not in _probes:
        _probes[key] = AppProbe(f"{short(host.name)}/{app.app_name}", connection, app,
                                AppPaths(app.app_name, app.srv_root))
    yield _probes[key]
    # what the summary table shows, read once per app (cached) and carried in
    # the report, so that the controller has it under xdist too
    request.node.user_properties.append(("summary", _probes[key].summary()))


@pytest.fixture
def since(request) -> float | None:
    return request.config.stash[SINCE]


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """--retry-timeout: run a failing state check again, on a fresh read of
    the host, until it passes or the time is up."""
    budget = pyfuncitem.config.getoption("retry_timeout")
    if not budget or pyfuncitem.get_closest_marker("events") or pyfuncitem.get_closest_marker("sampled"):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    started, attempts = time.monotonic(), 0
    while True:
        attempts += 1
        try:
            pyfuncitem.obj(**args)
            break
        except (AssertionError, pytest.fail.Exception):
            waited = time.monotonic() - started
            if waited + RETRY_INTERVAL > budget:
                pyfuncitem.user_properties.append(
                    ("retried", f"still failing after {waited:.1f} s ({attempts} tries)"))
                raise
        time.sleep(RETRY_INTERVAL)
        if "probe" in args:
            args["probe"].refresh()
        if "inventory_host" in args:
            _connections.pop(args["inventory_host"].name, None)
    if attempts > 1:
        pyfuncitem.user_properties += [("converged_after", round(time.monotonic() - started, 1)),
                                       ("tries", attempts)]
    return True


def _crash_message(test_report) -> str:
    if isinstance(test_report.longrepr, tuple):  # a skip: (file, line, reason)
        text = test_report.longrepr[2]
    else:
        crash = getattr(test_report.longrepr, "reprcrash", None)
        text = crash.message if crash else str(test_report.longrepr)
    text = text.removeprefix("AssertionError: ").removeprefix("Failed: ").removeprefix("Skipped: ")
    return text.split("\nassert ", 1)[0].strip()


TABLE_COLUMNS = ["host", "app", "release", "workers", "worker class", "loop", "http parser", "master says",
                 "health", "exposure"]


class VerifyResults:
    """Each promise's result, folded from the test reports (which the xdist
    controller receives from its workers too), and what is made of them: the
    exit code, the JSON report, the Prometheus textfile, the table."""

    def __init__(self, config):
        self.config = config
        self.results: dict[str, results_report.PromiseResult] = {}  # by test node id
        self.table: dict[tuple[str, str], dict] = {}  # (host, app): the summary row

    def pytest_runtest_logreport(self, report):
        properties = report.user_properties
        named = dict(p for p in properties if p[0] in ("host", "app", "promise"))
        if "promise" not in named:
            return
        result = self.results.setdefault(report.nodeid, results_report.PromiseResult(
            named["host"], named.get("app"), named["promise"]))
        if report.failed and result.outcome != "fail":
            result.outcome, result.message = "fail", _crash_message(report)
        elif report.skipped and result.outcome == "pass":
            result.outcome, result.message = "skip", _crash_message(report)
        result.warnings = [value for key, value in properties if key == "warning"]
        if result.warnings and result.outcome == "pass":
            result.outcome = "warn"
        for key, value in properties:
            if key == "converged_after":
                result.converged_after = value
            elif key == "retried" and report.failed and value not in result.message:
                result.message += f" ({value})"
            elif key == "summary" and "app" in named:
                self.table[(named["host"], named["app"])] = value

    def pytest_sessionfinish(self, session, exitstatus):
        """A run in which no check passed or failed checked nothing: not green.
        Then the machine-readable results (on the xdist controller only)."""
        if hasattr(self.config, "workerinput"):
            return
        results = list(self.results.values())
        if exitstatus == 0 and not any(r.outcome in ("pass", "warn", "fail") for r in results):
            session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
        code, finished = int(session.exitstatus), time.time()
        if path := self.config.getoption("report_json"):
            doc = results_report.document(self.config.getoption("inventory"), results,
                                          self.rows(), code, finished)
            results_report.write_atomically(path, results_report.json_text(doc))
        if path := self.config.getoption("prometheus_textfile"):
            results_report.write_atomically(path, results_report.prometheus_text(results, code, finished))

    def rows(self) -> list[dict]:
        """The summary table, one row per checked app (UNREACHABLE for a host that was not)."""
        unreachable = {r.host for r in self.results.values()
                       if r.promise == "host_is_reachable" and r.outcome == "fail"}
        rows = []
        for host, app in targets(self.config.getoption("inventory")):
            if host.name not in self.config.stash[CHECKED]:
                continue
            name, app_name = short(host.name), app.app_name
            if (name, app_name) in self.table:
                rows.append({"host": name, "app": app_name, **self.table[(name, app_name)]})
            elif name in unreachable:
                rows.append({"host": name, "app": app_name, "release": "UNREACHABLE"})
        return rows

    def pytest_terminal_summary(self, terminalreporter):
        if hasattr(self.config, "workerinput"):
            return
        results = list(self.results.values())
        if rows := self.rows():
            terminalreporter.section(f"asgi-fleet: {self.config.getoption('inventory')}")
            for line in format_table([TABLE_COLUMNS] + [[row.get(c, "-") for c in TABLE_COLUMNS]
                                                        for row in rows]):
                terminalreporter.write_line(line)
        if warnings := [w for r in results for w in r.warnings]:
            terminalreporter.section("asgi-fleet: warnings (older journal events)")
            for warning in warnings:
                terminalreporter.write_line(warning)
        if converged := [r for r in results if r.converged_after is not None]:
            terminalreporter.section("asgi-fleet: converged within --retry-timeout")
            for r in converged:
                terminalreporter.write_line(f"{r.label} {r.promise}: passed after {r.converged_after} s")
        if results:
            terminalreporter.write_line(results_report.nagios_line(results))
