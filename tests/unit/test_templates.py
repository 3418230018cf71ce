"""Render every template with the default settings and check what lands on a host."""

import configparser
from dataclasses import replace

import pytest
from gunicorn.config import Config

from asgi_fleet.activation import stop_timeout
from asgi_fleet.commands import AppPaths
from asgi_fleet.settings import app_settings
from asgi_fleet.sizing import WorkerPlan
from asgi_fleet.tasks import render_template


def render(name, **values):
    """As the deploy renders it."""
    return render_template(name, **values)


@pytest.fixture
def app(defaults):
    return app_settings(defaults)[0]


def unit(text):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    return parser


@pytest.mark.parametrize("worker_class", ["asgi", "asgi_fleet_gasgi.DrainingASGIWorker"])
def test_gunicorns_asgi_worker_runs_uvloop_as_its_loop(app, tmp_path, worker_class):
    paths = AppPaths("hello", str(tmp_path))
    (tmp_path / "hello" / "current").mkdir(parents=True)
    text = render("gunicorn.conf.py.j2", app=replace(app, worker_class=worker_class), paths=paths,
                  chdir=paths.current, worker_plan=WorkerPlan(2, "x"))
    namespace = {}
    exec(compile(text, "gunicorn.conf.py", "exec"), namespace)
    config = Config()
    for key, value in namespace.items():
        if not key.startswith("_"):
            config.set(key, value)
    assert (config.worker_class_str, config.asgi_loop) == (worker_class, "uvloop")
    assert "asgi_loop" not in render("gunicorn.conf.py.j2", app=app, paths=paths, chdir=paths.current,
                                     worker_plan=WorkerPlan(2, "x"))  # uvicorn's workers: not theirs


def test_gunicorn_conf_is_a_valid_gunicorn_config(app, tmp_path):
    paths = AppPaths("hello", str(tmp_path))
    (tmp_path / "hello" / "current").mkdir(parents=True)  # gunicorn checks chdir exists
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(render("gunicorn.conf.py.j2", app=app, paths=paths, chdir=paths.current,
                           worker_plan=WorkerPlan(3, "cores on 3 usable CPUs")))
    namespace = {}
    exec(compile(conf.read_text(), str(conf), "exec"), namespace)
    config = Config()
    for key, value in namespace.items():
        if not key.startswith("_"):  # gunicorn skips private helpers, as here
            config.set(key, value)  # raises for a name gunicorn does not know
    assert config.workers == 3
    assert config.worker_class_str == "asgi_fleet_worker.DrainingUvicornWorker"
    assert config.chdir == f"{tmp_path}/hello/current"  # the link, re-resolved on every HUP
    assert config.preload_app is False
    assert config.control_socket == "/run/hello/gunicorn.ctl"
    assert config.worker_tmp_dir == "/run/hello"
    assert config.graceful_timeout <= config.timeout
    assert config.accesslog is None and config.errorlog == "-"  # access_log = False
    assert config.proc_name == "hello"


def test_service_unit(app):
    service = unit(render("app.service.j2", app=app, paths=AppPaths("hello")))["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["KillMode"] == "mixed"
    assert int(service["TimeoutStopSec"]) > app.graceful_timeout
    # the controller's time limit for an activation counts with the same stop
    assert int(service["TimeoutStopSec"]) == stop_timeout(app)
    assert service["WorkingDirectory"] == "/srv/hello"
    assert service["ExecStart"].startswith("/srv/hello/current/.venv/bin/gunicorn ")
    assert service["User"] == service["Group"] == service["RuntimeDirectory"] == "hello"
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"] == "/etc/hello/env"


def test_tcp_socket_unit(app):
    socket = unit(render("app.socket.j2", app=app, paths=AppPaths("hello")))["Socket"]
    assert socket["ListenStream"] == "0.0.0.0:8000"
    assert socket["Backlog"] == "2048"


def test_unix_socket_unit_is_group_readable_only(app):
    app = replace(app, bind="unix:/run/hello.sock")
    socket = unit(render("app.socket.j2", app=app, paths=AppPaths("hello")))["Socket"]
    assert socket["ListenStream"] == "/run/hello.sock"
    assert (socket["SocketGroup"], socket["SocketMode"]) == ("hello", "0660")


def test_env_file_quotes_values(app):
    app = replace(app, app_env={"GREETING": 'say "hi"', "A": "1"})
    text = render("app.env.j2", app=app, paths=AppPaths("hello"))
    assert text.splitlines()[1:] == ['A="1"', 'GREETING="say \\"hi\\""']


def test_secrets_are_loaded_into_the_environment_not_into_gunicorn_settings(app, tmp_path, monkeypatch):
    paths = AppPaths("hello", str(tmp_path))
    text = render("gunicorn.conf.py.j2", app=app, paths=paths, chdir="/", worker_plan=WorkerPlan(1, "x"))
    (tmp_path / "secrets").write_text("API_TOKEN=s3cr=t\n")
    text = text.replace(paths.secrets_file, str(tmp_path / "secrets"))
    monkeypatch.delenv("API_TOKEN", raising=False)
    namespace = {}
    exec(compile(text, "gunicorn.conf.py", "exec"), namespace)
    import os
    assert os.environ["API_TOKEN"] == "s3cr=t"
    # gunicorn logs its settings at debug level: no secret goes into one
    assert not any("API_TOKEN" in entry for entry in namespace.get("raw_env", []))


def test_the_default_unit_scores_at_most_1_5_in_systemd_analyze_security(app, tmp_path):
    """The exposure score systemd itself computes, offline, on the rendered unit."""
    import re
    import shutil
    import subprocess

    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed here (the fleet tests check the hosts)")
    unit_file = tmp_path / "hello.service"
    unit_file.write_text(render("app.service.j2", app=app, paths=AppPaths("hello")))
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit_file)],
                         capture_output=True, text=True).stdout
    score = float(re.search(r"Overall exposure level for hello.service: ([\d.]+)", out).group(1))
    assert score <= 1.5, out


@pytest.mark.parametrize("access_log, line", [(True, 'accesslog = "-"'), (False, "accesslog = None")])
def test_the_access_log_is_a_setting(app, access_log, line):
    text = render("gunicorn.conf.py.j2", app=replace(app, access_log=access_log),
                  paths=AppPaths("hello"), chdir="/", worker_plan=WorkerPlan(1, "x"))
    assert line in text.splitlines()


def test_preflight_points_the_same_config_at_the_release_it_checks(app, tmp_path, monkeypatch):
    paths = AppPaths("hello", str(tmp_path))
    release = tmp_path / "hello" / "releases" / "r1"
    release.mkdir(parents=True)
    text = render("gunicorn.conf.py.j2", app=app, paths=paths, chdir=paths.current,
                  worker_plan=WorkerPlan(1, "x"))
    monkeypatch.setenv("ASGI_FLEET_PREFLIGHT_RELEASE", str(release))
    namespace = {}
    exec(compile(text, "gunicorn.conf.py", "exec"), namespace)
    assert namespace["chdir"] == str(release)
