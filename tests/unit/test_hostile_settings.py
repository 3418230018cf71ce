"""Hostile strings in every setting that reaches a sink (a shell, a unit file,
gunicorn.conf.py, the env file, the nginx config): each is either refused,
naming the key, the value and what is allowed, or lands as exactly the value
that was set. The env file is also read back through real systemd on the
fleet (tests/e2e/test_hardening.py)."""

from __future__ import annotations

import json
import os
import re
import shlex

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_fleet import rollout, secrets
from asgi_fleet.agent_state import activation_request, agent_command, preflight_request
from asgi_fleet.commands import AppPaths
from asgi_fleet.onhost.agent import install_argv
from asgi_fleet.rollout import PERCENT_RE
from asgi_fleet.settings import InvalidSettings, app_settings
from asgi_fleet.sizing import WorkerPlan
from test_templates import render

# What breaks out of a shell word, a unit line, a Python string, an nginx
# token or an env-file value, plus text that should pass.
NASTY = list("$`'\"\\;&|<>%{}()[]*?!#=+@~,^ \n\t\r\x00\x1b\u2028éé€😀")
PLAIN = list("abcxyzAZ0189/._-:")
hostile = st.lists(st.one_of(st.sampled_from(NASTY + PLAIN * 3), st.sampled_from(["$(id)", "%n", "\nExecStartPre=+/bin/sh"])),
                   max_size=12).map("".join)


def near(valid: str) -> st.SearchStrategy[str]:
    """A valid value with hostile text spliced in somewhere (or not at all)."""
    return st.tuples(st.integers(0, len(valid)), hostile).map(
        lambda cut: valid[:cut[0]] + cut[1] + valid[cut[0]:])


EXAMPLES = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def outcome(defaults, key, value):
    """The validated app, or None when refused (after checking the message)."""
    try:
        [app] = app_settings(defaults | {key: value}, "web1")
    except InvalidSettings as refused:
        named = [p for p in refused.problems if p.startswith(f"web1: {key}={value!r}: must")]
        assert named, f"refused without naming {key}={value!r} and what is allowed: {refused.problems}"
        return None
    return app


def service_lines(app) -> list[tuple[str, str]]:
    """(key, value) of every setting line of the rendered service and socket
    units, as systemd's parser sees them (one line, one assignment)."""
    paths = AppPaths(app.app_name, app.srv_root)
    lines = []
    for name in ("app.service.j2", "app.socket.j2"):
        for line in render(name, app=app, paths=paths).splitlines():
            if line and not line.startswith(("#", "[")):
                key, sep, value = line.partition("=")
                assert sep and re.fullmatch(r"[A-Za-z]+", key), f"not an assignment: {line!r}"
                assert "%" not in value, f"a systemd specifier in {line!r}"
                lines.append((key, value))
    return lines


def gunicorn_conf(app) -> dict:
    paths = AppPaths(app.app_name, app.srv_root)
    text = render("gunicorn.conf.py.j2", app=app, paths=paths, chdir=paths.current,
                  worker_plan=WorkerPlan(2, "test"))
    namespace = {}
    exec(compile(text, "gunicorn.conf.py", "exec"), namespace)
    return namespace


@pytest.fixture
def baseline_keys(defaults):
    [app] = app_settings(defaults, "web1")
    return [key for key, _ in service_lines(app)]


@EXAMPLES
@given(value=st.one_of(hostile, near("hello")))
def test_app_name(defaults, baseline_keys, value):
    app = outcome(defaults, "app_name", value)
    if app:
        assert [k for k, _ in service_lines(app)] == baseline_keys
        assert ("User", value) in service_lines(app)
        assert gunicorn_conf(app)["proc_name"] == value


@EXAMPLES
@given(value=st.one_of(hostile, near("app:app"), near("pkg.main:create_app()")))
def test_app_module(defaults, value):
    app = outcome(defaults, "app_module", value)
    if app:
        assert gunicorn_conf(app)["wsgi_app"] == value
        assert exec_request(preflight_request(
            AppPaths("hello"), "/srv/hello/releases/x", app_module=value, worker_class="a.B",
            health_path="/", deadline=5, script="/s.py", stamp="/x", digest="d"))["app_module"] == value


def exec_request(request: dict) -> dict:
    """The request as the host's shell hands it to the agent: one argument, whatever it holds."""
    command = agent_command("preflight", request)
    words = shlex.split(command.rstrip("\n").rsplit("\n", 1)[1])
    assert words[:1] == ["exec"]
    return json.loads(words[-1])


@EXAMPLES
@given(value=st.one_of(hostile, near("uvicorn_worker.UvicornWorker")))
def test_worker_class(defaults, value):
    app = outcome(defaults, "worker_class", value)
    if app:
        assert gunicorn_conf(app)["worker_class"] == value


@EXAMPLES
@given(value=st.one_of(hostile, near("0.0.0.0:8000"), near("unix:/run/shop/shop.sock"),
                       near("[::1]:8000")))
def test_bind(defaults, baseline_keys, value):
    app = outcome(defaults, "bind", value)
    if app:
        assert gunicorn_conf(app)["bind"] == [value]
        listen = [v for k, v in service_lines(app) if k == "ListenStream"]
        assert listen == [value.removeprefix("unix:")]


@EXAMPLES
@given(value=st.one_of(hostile, near("/healthz"), near("/health?full=1")))
def test_health_path(defaults, value):
    app = outcome(defaults, "health_path", value)
    if app:
        assert exec_request(activation_request(
            AppPaths("hello"), release_id="r", previous=None, kind="start", reload_units=False,
            bind="0.0.0.0:8000", health_path=value, deadline=5, consecutive=1, workers=1,
            release_dir="/srv/hello/releases/r"))["gate"]["path"] == value


@EXAMPLES
@given(value=st.one_of(hostile, near("/srv")))
def test_srv_root(defaults, baseline_keys, value):
    app = outcome(defaults, "srv_root", value)
    if app:
        assert [k for k, _ in service_lines(app)] == baseline_keys
        assert ("WorkingDirectory", f"{value}/hello") in service_lines(app)
        assert gunicorn_conf(app)["chdir"] == f"{value}/hello/current"


@EXAMPLES
@given(value=st.lists(st.one_of(hostile, near("/var/cache/app")), max_size=3))
def test_unit_read_write_paths(defaults, baseline_keys, value):
    app = outcome(defaults, "unit_read_write_paths", value)
    if app:
        lines = service_lines(app)
        assert [v for k, v in lines if k == "ReadWritePaths"] == value
        assert [k for k, _ in lines if k != "ReadWritePaths"] == baseline_keys


@EXAMPLES
@given(value=st.lists(st.one_of(hostile, near("10.0.0.0/8")), min_size=1, max_size=3))
def test_unit_ip_address_allow(defaults, value):
    app = outcome(defaults, "unit_ip_address_allow", value)
    if app:
        assert [v for k, v in service_lines(app) if k == "IPAddressAllow"] == \
            [" ".join(["localhost", *value])]


@EXAMPLES
@given(value=st.one_of(hostile, near("127.0.0.1"), near("10.0.0.0/8,192.168.1.1")))
def test_forwarded_allow_ips(defaults, value):
    app = outcome(defaults, "forwarded_allow_ips", value)
    if app:
        assert gunicorn_conf(app)["forwarded_allow_ips"] == value


@EXAMPLES
@given(value=st.lists(st.one_of(hostile, near("libpq5")), max_size=3))
def test_extra_system_packages(defaults, value):
    if outcome(defaults, "extra_system_packages", value):  # each a plain shell word for apt
        assert all(shlex.quote(name) == name and not name.startswith("-") for name in value)


@EXAMPLES
@given(value=st.one_of(hostile, near("https://pypi.example.com/simple")))
def test_pip_index_url(defaults, value):
    if outcome(defaults, "pip_index_url", value):
        create, pip, check = install_argv({"lock": "/l", "index_url": value}, "/v", None, None)
        assert pip[pip.index("--index-url") + 1] == value and pip[0] == "/v/bin/pip"  # one argument, no shell


@EXAMPLES
@given(value=st.one_of(hostile, near("asgi-web1"), near("10.0.0.5"), near("[fd00::5]")))
def test_lb_address(defaults, value):
    if outcome(defaults, "lb_address", value):
        apps = rollout.lb_apps([("web1", value, {"hello": "0.0.0.0:8000"})])
        text = render("nginx-lb.conf.j2", apps=rollout.lb_config(apps, [["web1"]]), keepalive=16,
                      idle_ms=4000)
        assert re.findall(r"^    server (.*) max_fails=1 fail_timeout=5s;$", text, re.M) == [f"{value}:8000"]
        assert text.count("{") == text.count("}")


@EXAMPLES
@given(value=st.dictionaries(st.one_of(hostile, st.just("API_URL")), st.one_of(hostile, st.text(max_size=12)),
                             max_size=3))
def test_app_env(defaults, value):
    app = outcome(defaults, "app_env", value)
    if app:
        paths = AppPaths("hello")
        lines = [l for l in render("app.env.j2", app=app, paths=paths).splitlines() if not l.startswith("#")]
        assert len(lines) == len(value)  # one line each: nothing spills into another assignment
        assert sorted(l.partition("=")[0] for l in lines) == sorted(value)


@EXAMPLES
@given(value=st.one_of(hostile, st.text(max_size=16)).map(lambda v: v.replace("\x00", "")))
def test_a_secret_value_reaches_the_app_exactly_or_is_refused(tmp_path_factory, value):
    os.environ["ASGI_FLEET_HOSTILE_SECRET"] = value  # (an environment holds no NUL)
    try:
        content = secrets.secrets_file({"TOKEN": "env:ASGI_FLEET_HOSTILE_SECRET"})
    except ValueError as refused:
        assert "TOKEN" in str(refused) and (len(value) < 4 or value not in str(refused))
        return
    finally:
        del os.environ["ASGI_FLEET_HOSTILE_SECRET"]
    path = tmp_path_factory.mktemp("secrets") / "secrets"
    path.write_bytes(content)
    conf = gunicorn_conf(app_settings(runpy_defaults(), "web1")[0])
    environ = dict(os.environ)
    try:
        conf["_load_secrets"](str(path))
        assert os.environ["TOKEN"] == value
    finally:
        os.environ.clear()
        os.environ.update(environ)


def runpy_defaults():
    import runpy

    from asgi_fleet.settings import PROJECT_ROOT

    loaded = runpy.run_path(str(PROJECT_ROOT / "group_data" / "all.py"))
    return {k: v for k, v in loaded.items() if not k.startswith("_")}


# The settings above land as exactly what was set; every other one may not be
# a free string at all (a number, a choice, a file on the controller...).
COVERED = {"app_name", "app_module", "worker_class", "bind", "health_path", "srv_root",
           "unit_read_write_paths", "unit_ip_address_allow", "forwarded_allow_ips",
           "extra_system_packages", "pip_index_url", "lb_address", "app_env", "app_secrets"}


# Settings whose grammar has a character of NASTY in it: a value of that
# grammar may be accepted ("0%" is a share of the fleet), nothing else.
GRAMMARS = {"rollout_batch": PERCENT_RE, "rollout_max_failures": PERCENT_RE}


@EXAMPLES
@given(value=hostile.filter(lambda v: any(c in v for c in NASTY)))
def test_every_other_setting_refuses_a_hostile_string(defaults, value):
    from asgi_fleet.settings import RULES

    for key in sorted(set(RULES) - COVERED):
        if key in GRAMMARS and GRAMMARS[key].fullmatch(value):
            continue
        assert outcome(defaults, key, value) is None, f"{key}={value!r} was accepted"


@pytest.mark.parametrize("key", sorted(GRAMMARS))
def test_a_share_of_the_fleet_is_read_as_one(defaults, key):
    assert getattr(outcome(defaults, key, "25%"), key) == "25%"
    assert outcome(defaults, key, "25%;") is None
