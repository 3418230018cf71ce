"""Settings: what each tunable may be, and validation before any host is touched.

The defaults and their one-line explanations live in group_data/all.py; this
module only knows the rules. Every key of all.py has a rule here and every
rule a key there (a unit test keeps them in step).

Validation collects every problem at once, so an operator fixes a bad
inventory in one pass, and each message names the key, the value and what is
allowed.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from pyinfra.api.exceptions import PyinfraError

from asgi_fleet.rollout import percent
from asgi_fleet.secrets import source_problems
from asgi_fleet.sizing import WORKER_POLICIES

# asgi-fleet's own files (templates, the default settings, the on-host
# programs, the verify suite), in a checkout or an installed wheel.
PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent  # asgi-fleet's repository, when it runs from its checkout
DEFAULTS_FILE = PACKAGE_DIR / "group_data" / "all.py"


def local_path(value: str) -> Path:
    """A file or directory on the controller named by a setting: a relative
    one is the operator's, against the directory the deploy runs from."""
    return Path.cwd() / value


def defaults() -> dict[str, Any]:
    """Every setting's default (group_data/all.py, as pyinfra loads it): a
    user's own group_data only overrides. The file is read once per run;
    each caller gets its own copy."""
    return copy.deepcopy(_defaults_file())


@functools.cache
def _defaults_file() -> dict[str, Any]:
    import runpy

    loaded = runpy.run_path(str(DEFAULTS_FILE))
    return {key: value for key, value in loaded.items() if key in RULES}

# Allow-lists, matched whole (re.fullmatch) and ASCII only: a setting that
# reaches a shell, a unit file, gunicorn.conf.py or the nginx config can hold
# nothing that means something there (a newline, $, %, ;, a quote).
APP_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,30}", re.ASCII)
DOTTED_PATH_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", re.ASCII)
MODULE_NAME_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)
APP_MODULE_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*(\(\))?", re.ASCII)
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
PATH_RE = re.compile(r"(/[A-Za-z0-9._-]+)+", re.ASCII)  # absolute, no //, no trailing /
HEALTH_PATH_RE = re.compile(r"/[A-Za-z0-9._~%/+-]*(\?[A-Za-z0-9._~%+=&-]*)?", re.ASCII)
DEBIAN_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+", re.ASCII)  # Debian policy 5.6.1
HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                         r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*", re.ASCII)
INDEX_URL_RE = re.compile(r"https?://([A-Za-z0-9._~%+-]+(:[A-Za-z0-9._~%+-]*)?@)?[A-Za-z0-9.-]+"
                          r"(:[0-9]{1,5})?(/[A-Za-z0-9._~%/+-]*)?", re.ASCII)
RUN_ID_RE = re.compile(r"[0-9a-f]{12}", re.ASCII)  # a run's id, as its record and lock name it
RELEASE_ID_RE = re.compile(r"[0-9a-f]{12}", re.ASCII)  # a release's id (release.release_id)
PORT_RE = re.compile(r"[1-9][0-9]{0,4}", re.ASCII)
# Names asgi-fleet derives from an app's name, besides the name itself (user,
# group, APP.service, APP.socket, /srv/APP, /etc/APP): an app may not be
# called what another app's derived name is.
DERIVED_SUFFIXES = ("-preflight",)
# Gunicorn's own short worker names: these serve WSGI, not ASGI.
GUNICORN_WSGI_WORKERS = {"sync", "gthread", "eventlet", "gevent", "tornado"}
# ...and gunicorn's own ASGI worker (beta in 24.0, stable since 25.1): its own
# HTTP parser (pure Python), uvloop as its loop (gunicorn.conf.py: asgi_loop).
GUNICORN_ASGI_WORKER = "asgi"
GUNICORN_WORKER_PATHS = {GUNICORN_ASGI_WORKER: "gunicorn.workers.gasgi.ASGIWorker"}
# asgi-fleet's subclass of it, which drains instead of dropping on reload
# (asgi_fleet/gasgi_worker.py, installed into every virtualenv).
DRAINING_GUNICORN_ASGI_WORKER = "asgi_fleet_gasgi.DrainingASGIWorker"


def runs_gunicorns_asgi(worker_class: str) -> bool:
    """Whether a worker class is gunicorn's own ASGI worker (or asgi-fleet's
    subclass of it): its own HTTP parser, uvloop as its loop, no uvicorn."""
    return worker_class in (GUNICORN_ASGI_WORKER, DRAINING_GUNICORN_ASGI_WORKER)


def worker_class_path(worker_class: str) -> str:
    """A worker class's dotted path, gunicorn's short names resolved."""
    return GUNICORN_WORKER_PATHS.get(worker_class, worker_class)


class InvalidSettings(PyinfraError):
    """One or more settings are wrong. Raised before any host is changed."""

    def __init__(self, problems: list[str], where: str = ""):
        self.problems = problems
        head = f"invalid asgi-fleet settings{f' for {where}' if where else ''}:"
        super().__init__("\n  ".join([head, *problems]))


Check = Callable[[Any], "str | None"]  # None when fine, else what is allowed


def integer(low: int, high: int, optional: bool = False) -> Check:
    def check(value):
        if optional and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"must be {'None or ' if optional else ''}an integer from {low} to {high}"
        return None

    return check


def count_or_percent(low: int, high: int) -> Check:
    def check(value):
        share = percent(value)
        if share is not None and (0 if low == 0 else 1) <= share <= 100:
            return None
        if not isinstance(value, bool) and isinstance(value, int) and low <= value <= high:
            return None
        return (f"must be an integer from {low} to {high} or a percentage of the fleet "
                f"like \"25%\"{' (above 0%)' if low else ''}")

    return check


def one_of(*allowed) -> Check:
    def check(value):
        if value not in allowed:
            return "must be one of " + ", ".join(repr(a) for a in allowed)
        return None

    return check


def matches(pattern: re.Pattern, example: str, optional: bool = False) -> Check:
    def check(value):
        if optional and value is None:
            return None
        if not isinstance(value, str) or not pattern.fullmatch(value):
            return (f"must be {'None or ' if optional else ''}a string made of {pattern.pattern} "
                    f"(for example {example!r})")
        return None

    return check


def hex_id(pattern: re.Pattern, example: str) -> Check:
    """A run's or a release's id: a string (pyinfra's --data reads an id of
    digits only as a number, which has lost any leading zero)."""
    def check(value):
        if isinstance(value, int) and not isinstance(value, bool):
            return (f"must be a string made of {pattern.pattern}, not a number: --data reads an id "
                    f"of digits as one; quote it, --data 'KEY=\"{example}\"'")
        return matches(pattern, example, optional=True)(value)

    return check


def app_name(value) -> str | None:
    allowed = matches(APP_NAME_RE, "shop")(value)
    if allowed:
        return allowed
    for suffix in DERIVED_SUFFIXES:
        if value.endswith(suffix):
            return (f"must not end in {suffix!r}: asgi-fleet names the unit of app "
                    f"{value.removesuffix(suffix)!r}'s preflight canary so")
    return None


def _is_path(value) -> bool:
    return isinstance(value, str) and bool(PATH_RE.fullmatch(value)) and not (
        {"..", "."} & set(value.split("/")))


def absolute_path(value) -> str | None:
    if not _is_path(value):
        return f"must be an absolute path made of {PATH_RE.pattern}, without . or .. (for example '/srv')"
    return None


def absolute_paths(value) -> str | None:
    if not isinstance(value, (list, tuple)) or not all(_is_path(v) for v in value):
        return f"must be a list of absolute paths made of {PATH_RE.pattern}, without . or .."
    return None


def packages(value) -> str | None:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) and DEBIAN_PACKAGE_RE.fullmatch(v) for v in value):
        return f"must be a list of Debian package names ({DEBIAN_PACKAGE_RE.pattern})"
    return None


def lb_address(value) -> str | None:
    """How the load balancer reaches this host: a host name, an IPv4 address or [IPv6]."""
    allowed = "must be None, a host name, an IPv4 address or an [IPv6] address"
    if value is None:
        return None
    if not isinstance(value, str):
        return allowed
    if value.startswith("[") and value.endswith("]"):
        try:
            address = ipaddress.ip_address(value[1:-1])
            return None if address.version == 6 and address.scope_id is None else allowed
        except ValueError:
            return allowed
    return None if HOSTNAME_RE.fullmatch(value) else allowed


def module_names(value) -> str | None:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) and MODULE_NAME_RE.fullmatch(v) for v in value):
        return f"must be a list of Python module names ({MODULE_NAME_RE.pattern}), e.g. ['fastapi']"
    return None


def string_list(value) -> str | None:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        return "must be a list of non-empty strings"
    return None


def local_dir(value) -> str | None:
    if not isinstance(value, str) or not local_path(value).is_dir():
        return (f"must be a directory on the controller (relative to the directory the deploy "
                f"runs from, {Path.cwd()}, or absolute)")
    return None


def local_file(optional: bool = False) -> Check:
    def check(value):
        if optional and value is None:
            return None
        if not isinstance(value, str) or not local_path(value).is_file():
            return (f"must be {'None or ' if optional else ''}a file on the controller "
                    f"(relative to the directory the deploy runs from, {Path.cwd()}, or absolute)")
        return None

    return check


def parse_bind(value: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """(address, port) of a TCP bind "HOST:PORT" or "[V6]:PORT"; ValueError if it is none."""
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        address = ipaddress.IPv6Address(host[1:-1])
        if address.scope_id is not None:  # "%zone" would be a systemd specifier
            raise ValueError(host)
    else:
        address = ipaddress.IPv4Address(host)
    if not PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError(port)
    return address, int(port)


def bind_address(value) -> str | None:
    allowed = (f"must be HOST:PORT (an IPv4 address or [IPv6], port 1-65535) or "
               f"unix:/absolute/path made of {PATH_RE.pattern}")
    if not isinstance(value, str):
        return allowed
    if value.startswith("unix:"):
        return None if _is_path(value[5:]) else allowed
    try:
        parse_bind(value)
    except ValueError:
        return allowed
    return None


def worker_class(value) -> str | None:
    if value == GUNICORN_ASGI_WORKER:
        return None
    if isinstance(value, str) and value in GUNICORN_WSGI_WORKERS:
        return (
            f"{value!r} is one of gunicorn's WSGI workers and answers every ASGI request "
            "with 500; must be 'asgi' (gunicorn's ASGI worker) or the dotted path of an ASGI "
            "worker class, such as 'uvicorn_worker.UvicornWorker'"
        )
    if not isinstance(value, str) or not DOTTED_PATH_RE.fullmatch(value):
        return ("must be 'asgi' (gunicorn's ASGI worker) or the dotted path of a worker class, "
                "such as 'uvicorn_worker.UvicornWorker'")
    return None


def environment(value) -> str | None:
    allowed = "must be a dict of NAME: string, NAME made of letters, digits and _"
    if not isinstance(value, dict):
        return allowed
    for key, item in value.items():
        if not isinstance(key, str) or not ENV_NAME_RE.fullmatch(key) or not isinstance(item, str):
            return allowed
        if not item.isprintable():
            return (f"must hold printable text only, without newlines, tabs or other control "
                    f"characters (a systemd EnvironmentFile cannot hold them); {key} has one")
    return None


def forwarded_ips(value) -> str | None:
    allowed = "must be '*' or a comma-separated list of IP addresses or networks"
    if not isinstance(value, str) or not value:
        return allowed
    if value == "*":
        return None
    try:
        for part in value.split(","):
            ipaddress.ip_network(part.strip(), strict=False)
    except ValueError:
        return allowed
    return None if value.isascii() and value.isprintable() else allowed


def networks(value) -> str | None:
    allowed = "must be None or a list of IP networks, e.g. ['10.0.0.0/8']"
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return allowed
    try:
        for item in value:
            ipaddress.ip_network(item, strict=False)
    except (TypeError, ValueError):
        return allowed
    return None


@dataclass(frozen=True)
class Rule:
    check: Check
    per_app: bool = True  # False: a host-wide setting, not overridable per app


RULES: dict[str, Rule] = {
    # the app
    "app_name": Rule(app_name),
    "app_source": Rule(local_dir),
    "release_exclude": Rule(string_list),
    "app_module": Rule(matches(APP_MODULE_RE, "main:app")),
    "app_lock": Rule(local_file()),
    "app_env": Rule(environment),
    "app_secrets": Rule(lambda v: "; ".join(source_problems(v)) or None),
    "apps": Rule(lambda v: None if v is None else _apps_shape(v), per_app=False),
    # serving
    "bind": Rule(bind_address),
    "backlog": Rule(integer(64, 65535)),
    "worker_class": Rule(worker_class),
    "workers": Rule(integer(1, 256, optional=True)),
    "worker_policy": Rule(one_of(*WORKER_POLICIES)),
    "worker_memory_mb": Rule(integer(16, 65536)),
    "memory_reserve_mb": Rule(integer(0, 1048576)),
    "timeout": Rule(integer(1, 3600)),
    "graceful_timeout": Rule(integer(1, 3600)),
    "websocket_drain_seconds": Rule(integer(0, 3600)),
    "keepalive": Rule(integer(1, 300)),
    "max_requests": Rule(integer(0, 10_000_000)),
    "max_requests_jitter": Rule(integer(0, 10_000_000)),
    "forwarded_allow_ips": Rule(forwarded_ips),
    "log_level": Rule(one_of("debug", "info", "warning", "error", "critical")),
    "access_log": Rule(one_of(False, True)),
    "reload_workers": Rule(one_of("one_at_a_time", "all_at_once")),
    "preload_libraries": Rule(module_names),
    # sandbox
    "unit_read_write_paths": Rule(absolute_paths),
    "unit_ip_address_allow": Rule(lambda v: None if v is None else networks(v)),
    "unit_memory_deny_write_execute": Rule(one_of(False, True)),
    # health gate
    "health_path": Rule(matches(HEALTH_PATH_RE, "/healthz")),
    "health_deadline": Rule(integer(1, 600)),
    "health_consecutive": Rule(integer(1, 100)),
    # releases
    "srv_root": Rule(absolute_path),
    "keep_releases": Rule(integer(2, 100)),
    "rollback": Rule(one_of(False, True), per_app=False),
    "rollback_to": Rule(hex_id(RELEASE_ID_RE, "382435980864"), per_app=False),

    "rollout_batch": Rule(count_or_percent(1, 10000), per_app=False),
    "deploy_lock_max_age": Rule(integer(60, 7 * 86400), per_app=False),
    "break_lock": Rule(hex_id(RUN_ID_RE, "3f2a9c0d1e4b"), per_app=False),
    "rollout_max_failures": Rule(count_or_percent(0, 10000), per_app=False),
    "lb_address": Rule(lb_address, per_app=False),
    "lb_keepalive": Rule(integer(0, 1024), per_app=False),
    # host packages and the package index
    "extra_system_packages": Rule(packages, per_app=False),
    "apt_cache_time": Rule(integer(0, 30 * 86400), per_app=False),
    "wheelhouse": Rule(one_of(False, True), per_app=False),
    "pip_index_url": Rule(matches(INDEX_URL_RE, "https://pypi.example.com/simple", optional=True),
                          per_app=False),
    "pip_ca_bundle": Rule(local_file(optional=True), per_app=False),
}


@dataclass(frozen=True)
class Settings:
    """One app's validated settings on one host (host-wide ones included):
    what every layer reads, by attribute. A field per rule, in RULES' order
    (a unit test keeps the two in step); what each means is in group_data/all.py."""

    # the app
    app_name: str
    app_source: str
    release_exclude: tuple[str, ...]
    app_module: str
    app_lock: str
    app_env: dict[str, str]
    app_secrets: dict[str, Any]
    apps: list[dict[str, Any]] | None
    # serving
    bind: str
    backlog: int
    worker_class: str
    workers: int | None
    worker_policy: str
    worker_memory_mb: int
    memory_reserve_mb: int
    timeout: int
    graceful_timeout: int
    websocket_drain_seconds: int
    keepalive: int
    max_requests: int
    max_requests_jitter: int
    forwarded_allow_ips: str
    log_level: str
    access_log: bool
    reload_workers: str
    preload_libraries: tuple[str, ...]
    # sandbox
    unit_read_write_paths: tuple[str, ...]
    unit_ip_address_allow: tuple[str, ...] | None
    unit_memory_deny_write_execute: bool
    # health gate
    health_path: str
    health_deadline: int
    health_consecutive: int
    # releases
    srv_root: str
    keep_releases: int
    rollback: bool
    rollback_to: str | None
    # the rollout
    rollout_batch: int | str
    deploy_lock_max_age: int
    break_lock: str | None
    rollout_max_failures: int | str
    lb_address: str | None
    lb_keepalive: int
    # host packages and the package index
    extra_system_packages: tuple[str, ...]
    apt_cache_time: int
    wheelhouse: bool
    pip_index_url: str | None
    pip_ca_bundle: str | None

    @property
    def runs_gunicorns_asgi(self) -> bool:
        return runs_gunicorns_asgi(self.worker_class)

    @classmethod
    def of(cls, merged: dict[str, Any]) -> Settings:
        """From validated values (lists become tuples: a Settings never changes)."""
        return cls(**{f.name: tuple(merged[f.name]) if isinstance(merged[f.name], list)
                      and f.name != "apps" else merged[f.name] for f in fields(cls)})


def _apps_shape(value) -> str | None:
    allowed = "must be None or a non-empty list of dicts of per-app settings, each with app_name"
    if not isinstance(value, (list, tuple)) or not value:
        return allowed
    for item in value:
        if not isinstance(item, dict) or "app_name" not in item:
            return allowed
    return None


def _problems(settings: dict[str, Any], where: str) -> list[str]:
    """Every problem with one app's merged settings."""
    prefix = f"{where}: " if where else ""
    problems = []
    for key, rule in RULES.items():
        if key not in settings:
            problems.append(f"{prefix}{key} is missing (every setting has a default in group_data/all.py)")
            continue
        allowed = rule.check(settings[key])
        if allowed:
            problems.append(f"{prefix}{key}={settings[key]!r}: {allowed}")
    if not problems:
        if settings["graceful_timeout"] > settings["timeout"]:
            problems.append(
                f"{prefix}graceful_timeout={settings['graceful_timeout']!r}: must be <= timeout "
                f"({settings['timeout']}), or a draining worker is killed as hung mid-request"
            )
        if settings["websocket_drain_seconds"] and settings["websocket_drain_seconds"] > settings["graceful_timeout"] - 2:
            problems.append(
                f"{prefix}websocket_drain_seconds={settings['websocket_drain_seconds']!r}: must be 0 or at "
                f"most graceful_timeout - 2 ({settings['graceful_timeout'] - 2}), or the worker is "
                "stopped before its WebSockets are closed cleanly"
            )
        if settings["max_requests_jitter"] > settings["max_requests"]:
            problems.append(
                f"{prefix}max_requests_jitter={settings['max_requests_jitter']!r}: "
                f"must be <= max_requests ({settings['max_requests']})"
            )
    return problems


def app_settings(data: dict[str, Any], where: str = "") -> list[Settings]:
    """Validate the settings of one host and return each app's Settings.

    `data` is the host's data (groups, host and --data); a setting it lacks
    has its default from asgi-fleet's group_data/all.py. `apps`, when set, is
    a list of per-app overrides; each app gets the host's settings with its
    overrides on top.
    """
    data = defaults() | {key: value for key, value in data.items() if key in RULES}
    apps_value = data.get("apps")
    allowed = RULES["apps"].check(apps_value)
    if allowed:
        raise InvalidSettings([f"{where}: apps={apps_value!r}: {allowed}"])
    problems = []
    apps = []
    for override in apps_value or [{}]:
        label = f"{where}/{override['app_name']}" if apps_value else where
        for key in override:
            if key not in RULES or not RULES[key].per_app:
                problems.append(f"{label}: apps: {key!r} is not a per-app setting")
        merged = {key: data[key] for key in RULES if key in data} | override
        problems += _problems(merged, label)
        apps.append(merged)
    problems += _collisions(apps, where)
    if problems:
        raise InvalidSettings(list(dict.fromkeys(problems)))
    return [Settings.of(app) for app in apps]


def host_settings(data: dict[str, Any], where: str = "") -> Settings:
    """One host's settings, validated as app_settings does: those of its first
    app, for the host-wide ones (per_app=False) are the same in every app."""
    return app_settings(data, where)[0]


def _collisions(apps: list[dict[str, Any]], where: str) -> list[str]:
    """Two apps on one host must differ in name, in the names derived from it,
    and in what they listen on, however it is spelled (0.0.0.0:8000 takes
    127.0.0.1:8000 too)."""
    problems = []
    names = [app.get("app_name") for app in apps]
    for name in dict.fromkeys(names):
        if names.count(name) > 1:
            problems.append(f"{where}: apps: app_name={name!r} is used by {names.count(name)} apps; "
                            "must be unique per host")
    binds = [app.get("bind") for app in apps if bind_address(app.get("bind")) is None]
    for i, first in enumerate(binds):
        for second in binds[i + 1:]:
            if _same_listener(first, second):
                problems.append(f"{where}: apps: bind={first!r} and bind={second!r} listen on the "
                                "same address; each app needs its own")
    return problems


def _same_listener(first: str, second: str) -> bool:
    if first.startswith("unix:") or second.startswith("unix:"):
        return first == second
    (a, port_a), (b, port_b) = parse_bind(first), parse_bind(second)
    return port_a == port_b and (a == b or a.is_unspecified or b.is_unspecified)
