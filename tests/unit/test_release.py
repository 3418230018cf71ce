import ast
import io
import sys
import tarfile

import subprocess

import pytest

from asgi_fleet.release import WORKER_MODULES, lock_problems, locked_versions, release_files, release_id, release_tarball

LOCK = """\
gunicorn==27.0.1 \\
    --hash=sha256:aa
uvicorn==0.54.0 \\
    --hash=sha256:bb
uvicorn-worker==0.4.0 \\
    --hash=sha256:cc
uvloop==0.23.0 ; sys_platform != 'win32' \\
    --hash=sha256:dd
httptools==0.9.0 \\
    --hash=sha256:ee
setproctitle==1.3.8 \\
    --hash=sha256:ff
"""


def make_app(tmp_path, body="app = 1\n"):
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    (app / "main.py").write_text(body)
    (app / "__pycache__").mkdir(exist_ok=True)
    (app / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"junk")
    lock = tmp_path / "requirements.lock"
    lock.write_text(LOCK)
    return app, lock


def test_release_id_is_stable_and_ignores_build_leftovers(tmp_path):
    app, lock = make_app(tmp_path)
    first = release_id(app, lock)
    (app / "__pycache__" / "other.pyc").write_bytes(b"more junk")
    assert release_id(app, lock) == first


def test_release_id_changes_with_code_and_with_the_lock(tmp_path):
    app, lock = make_app(tmp_path)
    first = release_id(app, lock)
    (app / "main.py").write_text("app = 2\n")
    second = release_id(app, lock)
    lock.write_text(LOCK + "# changed\n")
    assert len({first, second, release_id(app, lock)}) == 3


def test_tarball_is_reproducible_and_holds_only_release_files(tmp_path):
    app, _ = make_app(tmp_path)
    data = release_tarball(app)
    assert data == release_tarball(app)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["main.py"]


def test_locked_versions_normalizes_names():
    assert locked_versions(LOCK)["uvicorn-worker"] == "0.4.0"
    assert locked_versions("Foo_Bar.baz[x]==1.0 \\\n")["foo-bar-baz"] == "1.0"


def test_lock_without_the_fast_stack_is_refused():
    plain = LOCK.replace("uvloop==0.23.0 ; sys_platform != 'win32' \\\n    --hash=sha256:dd\n", "")
    problems = lock_problems(plain, "app.lock")
    assert problems == ["app_lock='app.lock': does not pin uvloop "
                        "(the fast event loop: lock uvicorn[standard], not plain uvicorn)"]


def test_lock_without_hashes_is_refused():
    assert any("no --hash" in p for p in lock_problems("gunicorn==1\n", "x"))


from asgi_fleet.release import (  # noqa: E402
    ReleasesState, failed_releases, parse_history, previous_release, releases_to_prune,
)


def test_history_and_previous_release():
    history = parse_history("100 r1\n200 r2\n300 r3\n")
    assert history == ["r1", "r2", "r3"]
    assert previous_release(history, "r3") == "r2"
    assert previous_release(history, "r1") is None
    # after a rollback from r3 to r2, the previous release of r2 is r3
    assert previous_release(history + ["r2"], "r2") == "r3"


def test_prune_keeps_the_most_recent_and_never_the_running_or_previous():
    history = ["r1", "r2", "r3", "r4", "r5", "r6"]
    present = ["r1", "r2", "r3", "r4", "r5", "r6", "failed"]
    assert sorted(releases_to_prune(history, present, "r6", keep=3)) == ["failed", "r1", "r2", "r3"]
    # rolled back to r2: r2 runs, r6 is its previous; both stay even with keep=2
    assert sorted(releases_to_prune(history + ["r2"], present, "r2", keep=2)) == [
        "failed", "r1", "r3", "r4", "r5"]


def test_prune_with_fewer_releases_than_kept_deletes_nothing():
    assert releases_to_prune(["r1"], ["r1"], "r1", keep=5) == []


from asgi_fleet.agent_state import HostState  # noqa: E402
from asgi_fleet.commands import AppPaths  # noqa: E402
from asgi_fleet.release import venvs_to_prune  # noqa: E402


def test_prune_unused_venvs():
    state = ReleasesState("r2", ["r1", "r2"], {"r1": "/srv/shop/venvs/v1", "r2": "/srv/shop/venvs/v2"},
                          ["v1", "v2", "v0"])
    assert venvs_to_prune(state, ["r2"]) == ["v1", "v0"]
    assert venvs_to_prune(state, ["r1", "r2"]) == ["v0"]


def _tree(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"contents of {name}\n")


LEAKS = [".env", ".env.production", "node_modules/left-pad/index.js", ".tox/py311/log.txt",
         ".git/config", "web/.env", ".venv/bin/python", "pkg/__pycache__/m.cpython-311.pyc"]


def test_a_release_outside_git_leaves_out_secrets_dependencies_caches_and_what_gitignore_names(tmp_path):
    app = tmp_path / "app"
    _tree(app, ["main.py", "pkg/mod.py", "static/site.css", "local.db", "docs/a.md", *LEAKS])
    (app / ".gitignore").write_text("*.db\n")
    assert [str(p) for p in release_files(app, exclude=("docs/",))] == [
        ".gitignore", "main.py", "pkg/mod.py", "static/site.css"]


def test_a_release_from_git_is_what_git_tracks_and_never_a_committed_env(tmp_path):
    app = tmp_path / "repo" / "app"
    _tree(app, ["main.py", "pkg/mod.py", ".env", "web/.env", "untracked.py", "node_modules/x.js"])
    git = ["git", "-C", str(tmp_path / "repo"), "-c", "user.email=t@e", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "app/main.py", "app/pkg/mod.py", "app/.env", "app/web/.env",
                    "-f", "app/node_modules/x.js"], check=True)
    (app / "pkg" / "mod.py").write_text("changed in the work tree\n")
    files = release_files(app)
    assert [str(p) for p in files] == ["main.py", "pkg/mod.py"]
    with tarfile.open(fileobj=io.BytesIO(release_tarball(app))) as tar:
        assert tar.extractfile("pkg/mod.py").read() == b"changed in the work tree\n"


def test_release_files_are_readable_by_owner_and_group_only(tmp_path):
    app, _ = make_app(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(release_tarball(app))) as tar:
        assert {m.mode for m in tar.getmembers()} == {0o640}


def test_a_rollback_never_goes_back_to_a_release_that_was_rolled_back_from():
    # r2 failed its gate on the host and was rolled back (the script marks it)
    text = "100 r1\n200 r2\n201 r1\n201 r2 failed\n"
    assert failed_releases(text) == {"r2"}
    assert previous_release(parse_history(text), "r1", failed_releases(text)) is None
    state = HostState({"apps": {"shop": {"current": "r1", "history": text.splitlines(), "releases": {},
                                         "venvs": []}}}).app(AppPaths("shop")).releases
    assert state.failed == {"r2"} and state.history == ["r1", "r2", "r1"]
    # deployed again later and healthy: no longer a failed release
    assert failed_releases(text + "300 r2\n") == set()


def test_gunicorns_asgi_worker_needs_its_loop_and_a_gunicorn_that_has_it():
    hashed = "  --hash=sha256:00\n"
    stack = "".join(f"{line}\n{hashed}" for line in ("gunicorn==27.0.1", "uvloop==0.21.0", "setproctitle==1.3.8"))
    assert lock_problems(stack, "app.lock", "asgi") == []  # no uvicorn, no httptools: its own parser
    assert any("does not pin uvicorn" in p for p in lock_problems(stack, "app.lock"))  # uvicorn's worker
    old = stack.replace("gunicorn==27.0.1", "gunicorn==24.1.1")
    assert lock_problems(old, "app.lock", "asgi") == [
        "app_lock='app.lock': pins gunicorn 24.1.1; worker_class 'asgi' needs gunicorn 25.1 or later"]
    no_loop = stack.replace("uvloop==0.21.0", "anyio==4.0")
    assert any("does not pin uvloop" in p for p in lock_problems(no_loop, "app.lock", "asgi"))
    draining = "asgi_fleet_gasgi.DrainingASGIWorker"  # asgi-fleet's subclass needs what it needs
    assert lock_problems(stack, "app.lock", draining) == []
    assert lock_problems(old, "app.lock", draining) == [
        f"app_lock='app.lock': pins gunicorn 24.1.1; worker_class {draining!r} needs gunicorn 25.1 or later"]


# What each app virtualenv has besides the standard library (the lock's gunicorn,
# uvicorn-worker and uvicorn[standard]): a module copied alone into it may use
# nothing else, and never asgi_fleet.
IN_EVERY_VENV = {"gunicorn", "uvicorn", "uvicorn_worker"}


@pytest.mark.parametrize("host_name", sorted(WORKER_MODULES))
def test_each_module_shipped_into_the_venvs_is_self_contained(host_name):
    imported = set()
    for node in ast.walk(ast.parse(WORKER_MODULES[host_name].read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{host_name}: a relative import"
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
    assert imported - sys.stdlib_module_names - {"__future__"} <= IN_EVERY_VENV, imported


def test_what_a_healthy_activation_will_leave_to_prune():
    """The activation is asked to prune from the releases as they will be
    once it is healthy: the new release current, the old one previous."""
    from asgi_fleet.release import to_prune
    state = ReleasesState("r3", ["r1", "r2", "r3"], {f"r{i}": f"/srv/a/venvs/v{i}" for i in range(1, 5)},
                          ["v1", "v2", "v3", "v4", "v0"])
    after = state.activated("r4")
    assert (after.current, after.history) == ("r4", ["r1", "r2", "r3", "r4"])
    assert to_prune(after, keep=2) == (["r1", "r2"], ["v1", "v2", "v0"])
    assert state.activated("r3") is state  # a re-activation is not a switch: no history line
    assert to_prune(state, keep=5) == ([], ["v0"])
