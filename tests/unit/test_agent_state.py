"""The controller's reading of the agent's state, against the readers it stands in for."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asgi_fleet.agent_state import (
    AGENT_NICE, HostState, TreeState, VenvState, agent_command, app_entry, merge_request, state_request,
)
from asgi_fleet.commands import (
    AppPaths, loose_files, writable_by_app,
)
from asgi_fleet.onhost.agent import DEPLOY_NICE, VENV_MARKER
from asgi_fleet.release import ReleasesState

AGENT = Path(__file__).resolve().parents[2] / "asgi_fleet" / "onhost" / "agent.py"


def run_agent(request: dict) -> HostState:
    run = subprocess.run([sys.executable, str(AGENT), "state", json.dumps(request)],
                         capture_output=True, text=True, timeout=60, check=True)
    return HostState.parse(run.stdout)


def test_releases_current_history_and_what_a_gate_rolled_back_from(tmp_path):
    paths = AppPaths("hello", str(tmp_path))
    root = Path(paths.root)
    (root / "venvs" / "v1").mkdir(parents=True)
    for release in ("r1", "r2"):
        (root / "releases" / release).mkdir(parents=True)
        (root / "releases" / release / ".venv").symlink_to(f"{paths.venvs}/v1")
    (root / "current").symlink_to("releases/r2")
    (root / "history").write_text("1 r1\n2 r2\n3 r2 failed\n4 r1\n")
    request = state_request([paths]) | {"systemctl": str(tmp_path / "no-systemctl")}
    found = run_agent(request).app(paths).releases
    assert found == ReleasesState("r2", ["r1", "r2", "r1"], {"r1": f"{paths.venvs}/v1", "r2": f"{paths.venvs}/v1"},
                                  ["v1"], frozenset({"r2"}))


def test_staged_changes_compare_content_owner_and_mode():
    paths = AppPaths("hello")
    state = HostState({"resources": {}, "lock": None, "apps": {"hello": {
        "history": [], "current": None, "releases": {}, "venvs": [], "master": None, "units": {},
        "activation": None, "files": {
            staged: {"sha256": "a", "owner": "root", "group": "hello", "mode": "640"}
            for staged, _ in paths.staged.values()} | {
            paths.gunicorn_conf: {"sha256": "a", "owner": "root", "group": "hello", "mode": "640"},
            paths.env_file: {"sha256": "b", "owner": "root", "group": "hello", "mode": "640"},
            paths.secrets_file: {"sha256": "a", "owner": "root", "group": "hello", "mode": "644"},
        }}}})
    assert state.app(paths).staged_changes == {"env", "secrets", "service_unit", "socket_unit"}


def test_the_master_and_its_slow_workers():
    paths = AppPaths("hello")
    doc = {"apps": {"hello": {"master": {"pid": 7, "venv": "/srv/hello/venvs/v1", "workers": [
        {"pid": 8, "cwd": "/srv/hello/releases/r1", "uvloop": True, "httptools": True},
        {"pid": 9, "cwd": "/srv/hello/releases/r1", "uvloop": True, "httptools": False}]},
        "units": {"hello.socket": {"enabled": "enabled"}, "hello.service": None}}}}
    app = HostState(doc).app(paths)
    master = app.master
    assert (master.pid, master.venv, master.worker_releases, master.slow_workers) == (
        7, "/srv/hello/venvs/v1", ("/srv/hello/releases/r1",) * 2, (9,))
    assert app.units_not_enabled == {"hello.service"}


def shell(command: str) -> str:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def venv(tmp_path):
    """A virtualenv's shape: dist-info directories in site-packages, and a marker."""
    root = tmp_path / "venvs" / "v1"
    site = root / "lib" / "python3.11" / "site-packages"
    for name in ("uvloop-0.21.0.dist-info", "Gunicorn-27.0.1.dist-info", "h11-0.16.0.dist-info"):
        (site / name).mkdir(parents=True)
    (site / "uvloop").mkdir()
    (site / "uvloop" / "__init__.py").write_text("")
    return root


def test_a_venv_reads_as_its_build_recorded_it_and_the_verifier_finds_what_the_deploy_would_rebuild(
        tmp_path, venv):
    # the digest of the dist-info names, sorted, a line each: what the build's marker records
    names = sorted(p.name for p in venv.glob("lib/python3*/site-packages/*.dist-info"))
    dists = hashlib.sha256("".join(f"{name}\n" for name in names).encode()).hexdigest()
    (venv / VENV_MARKER).write_text(f"lock-digest\n{dists}\n")
    request = {"venvs": [{"path": str(venv), "app": "daemon"}], "systemctl": str(tmp_path / "none")}
    found = run_agent(request).venv(str(venv))
    assert found == VenvState("lock-digest", found.dists, found.dists, "")
    # a package removed by hand changes the digest: the deploy rebuilds
    (venv / "lib" / "python3.11" / "site-packages" / "h11-0.16.0.dist-info").rmdir()
    assert run_agent(request).venv(str(venv)).dists != found.dists
    # a file the app could change: both the deploy (rebuild) and verify (finding) see it
    loose = venv / "lib" / "python3.11" / "site-packages" / "uvloop" / "__init__.py"
    if os.geteuid() == 0:
        os.chown(loose, 0, grp.getgrnam("daemon").gr_gid)
        loose.chmod(0o664)
        assert run_agent(request).venv(str(venv)).writable == str(loose)
        assert shell(writable_by_app(str(venv), "daemon")) == str(loose)
    loose.chmod(0o646)
    assert run_agent(request).venv(str(venv)).writable == str(loose)
    assert shell(writable_by_app(str(venv), "daemon")) == str(loose)


@pytest.mark.skipif(os.geteuid() != 0, reason="owners are set as root")
def test_a_release_tree_is_loose_exactly_where_the_verifier_says_so(tmp_path):
    release = tmp_path / "releases" / "r1"
    (release / "app").mkdir(parents=True)
    (release / "app" / "main.py").write_text("app = None\n")
    subprocess.run(["chown", "-R", "root:daemon", str(release)], check=True)
    subprocess.run(["chmod", "-R", "u=rwX,g=rX,o=", str(release)], check=True)
    request = {"trees": [{"path": str(release), "group": "daemon"},
                         {"path": str(tmp_path / "releases" / "r2"), "group": "daemon"}]}
    assert run_agent(request).tree(str(release)) == TreeState(True, "")
    assert run_agent(request).tree(str(tmp_path / "releases" / "r2")) == TreeState(False, "")
    for loosen in (["chmod", "g+w"], ["chmod", "o+r"], ["chown", "root:root"], ["chown", "daemon:daemon"]):
        subprocess.run([*loosen, str(release / "app" / "main.py")], check=True)
        found = run_agent(request).tree(str(release)).loose
        assert found == shell(loose_files(str(release), "daemon")) == str(release / "app" / "main.py"), loosen
        subprocess.run(["chown", "root:daemon", str(release / "app" / "main.py")], check=True)
        subprocess.run(["chmod", "u=rw,g=r,o=", str(release / "app" / "main.py")], check=True)


def test_a_preflight_stamp_and_the_digest_of_what_it_covers(tmp_path):
    files = [tmp_path / name for name in ("gunicorn.conf.py", "env", "missing")]
    files[0].write_text("workers = 2\n")
    files[1].write_text("A=1\n")
    stamp = tmp_path / ".preflight-ok"
    request = {"digests": {str(stamp): [str(f) for f in files]}, "texts": [str(stamp), str(tmp_path / "none")]}
    found = run_agent(request)
    # as `cat FILES | sha256sum` reads them, a missing file as empty
    assert found.digest(str(stamp)) == hashlib.sha256(b"workers = 2\nA=1\n").hexdigest()
    assert found.text(str(stamp)) is None and found.text(str(tmp_path / "none")) is None
    stamp.write_text(found.digest(str(stamp)) + "\n")
    assert run_agent(request).text(str(stamp)) == found.digest(str(stamp))


def test_requests_merge_so_that_one_read_covers_every_operation():
    paths = AppPaths("hello")
    first = merge_request({}, {"apps": [app_entry(paths)], "paths": ["/srv"], "digests": {"a": ["/x"]}})
    merged = merge_request(first, {"apps": [app_entry(paths, health=("127.0.0.1:8000", "/healthz"))],
                                   "paths": ["/srv", "/etc/hello"], "digests": {"b": ["/y"]},
                                   "flag_dir": "/run/flags"})
    assert [app["name"] for app in merged["apps"]] == ["hello"]
    assert merged["apps"][0]["health"] == {"bind": "127.0.0.1:8000", "path": "/healthz"}
    assert merged["apps"][0]["root"] == "/srv/hello"
    assert merged["paths"] == ["/srv", "/etc/hello"]
    assert merged["digests"] == {"a": ["/x"], "b": ["/y"]} and merged["flag_dir"] == "/run/flags"
    assert first["paths"] == ["/srv"]  # the one merged into is left as it was


def test_a_bare_hosts_state_is_what_the_agent_reads_where_nothing_exists(tmp_path):
    """bare_state (the prediction on a host without python3) agrees with `state`
    on paths that do not exist, but for what depends on the machine."""
    from asgi_fleet.onhost.agent import bare_state, state

    gone = str(tmp_path / "gone")
    request = {
        "systemctl": str(tmp_path / "no-systemctl"), "lock": f"{gone}/lock", "flag_dir": f"{gone}/flags",
        "apps": [{"name": "hello", "root": f"{gone}/srv/hello", "service": "hello.service", "units": [],
                  "files": [f"{gone}/etc/hello/env"], "activation_record": f"{gone}/rec",
                  "health": {"bind": f"unix:{gone}/sock", "path": "/healthz"},
                  "deploys": {"path": f"{gone}/deploys.jsonl", "last": 3}}],
        "venvs": [{"path": f"{gone}/venv", "app": "hello"}], "trees": [{"path": f"{gone}/tree", "group": "hello"}],
        "digests": {"preflight": [f"{gone}/a", f"{gone}/b"]}, "texts": [f"{gone}/t"], "paths": [f"{gone}/p"],
        "files": [f"{gone}/f"], "mtimes": [f"{gone}/m"],
    }
    machine = ("now", "resources", "packages", "accounts", "units")
    read, bare = state(request), bare_state(request)
    assert {k: v for k, v in read.items() if k not in machine} == {
        k: v for k, v in bare.items() if k not in machine}


def test_the_agent_starts_at_the_deploys_nice_as_its_units_do(tmp_path):
    """The command text, run by a real shell: python3 (a stand-in on PATH that
    reports its niceness, then runs the real one) starts AGENT_NICE above the
    shell, and the agent gives its units the same nice."""
    reporter = tmp_path / "python3"
    reporter.write_text(f"#!/bin/sh\nnice >&2\nexec {sys.executable} \"$@\"\n")
    reporter.chmod(0o755)
    command = agent_command("prune", {"root": str(tmp_path), "releases": [], "venvs": []}, install=False)
    run = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}"))
    assert run.returncode == 0 and json.loads(run.stdout)["outcome"] == "pruned", run.stderr
    assert int(run.stderr.split()[0]) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + AGENT_NICE)
    assert DEPLOY_NICE == AGENT_NICE
