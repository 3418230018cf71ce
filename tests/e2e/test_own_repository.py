"""asgi-fleet used as an operator would, from their own repository: the wheel
installed into a fresh virtualenv, `asgi-fleet init` in a new git repository
whose app has another shape than the example (a src/ layout, its own
dependency and health path, a .env that must not ship), `asgi-fleet pin`,
`pyinfra inventories/docker.py deploy.py` to a fleet host next to the app
already there, then the day-2 commands against it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra

from asgi_fleet.settings import PROJECT_ROOT

pytestmark = pytest.mark.e2e

HOST = "asgi-web2"
APP = "shopapi"
PORT = 8010
SECRET = "do-not-ship-this"

MAIN = textwrap.dedent('''
    """A shop API in a src layout, with its own dependency and health route."""

    import humanize
    from fastapi import FastAPI

    app = FastAPI()


    @app.get("/-/ready")
    async def ready():
        return {"ok": True}


    @app.get("/size/{n}")
    async def size(n: int):
        return {"size": humanize.naturalsize(n)}
''')


def run(argv: list, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout[-6000:]}"
    return done


def git(repo: Path, *args: str) -> None:
    run(["git", "-c", "user.email=ops@example.com", "-c", "user.name=ops", *args], repo)


@pytest.fixture(scope="module")
def host(deployed):
    """web2, serving the example app (the session's deploy) before the shop arrives."""
    found = testinfra.get_host(f"docker://{HOST}")
    yield found
    # Leave the fleet as the other tests know it: without this app.
    found.run(f"systemctl disable --now {APP}.socket {APP}.service; "
              f"rm -rf /etc/systemd/system/{APP}.socket /etc/systemd/system/{APP}.service "
              f"/srv/{APP} /etc/{APP} /var/lib/{APP} /var/lib/asgi-fleet/apps/{APP} "
              f"/var/lib/asgi-fleet/activations/{APP} /var/lib/asgi-fleet/activations/{APP}.json; "
              f"userdel {APP}; groupdel {APP}; systemctl daemon-reload")


@dataclass
class Shop:
    """The operator's repository, and the asgi-fleet installed for it."""

    repo: Path
    bin: Path

    def run(self, *argv, timeout: int = 900) -> str:
        return run([self.bin / str(argv[0]), *argv[1:]], self.repo, timeout=timeout).stdout

    def deploy(self, *args: str) -> dict:
        self.run("pyinfra", "-y", "inventories/docker.py", "deploy.py", *args)
        return json.loads((self.repo / ".asgi-fleet" / "last-run.json").read_text())

    def commit(self, message: str) -> str:
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-qm", message)
        return run(["git", "rev-parse", "--short=12", "HEAD"], self.repo).stdout.strip()


@pytest.fixture(scope="module")
def shop(host, tmp_path_factory) -> Shop:
    tmp_path = tmp_path_factory.mktemp("own-repository")
    # 1-2. the wheel, in a fresh virtualenv outside this repository
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "wheel", PROJECT_ROOT],
        tmp_path)
    [wheel] = (tmp_path / "wheel").glob("asgi_fleet-*.whl")
    run([sys.executable, "-m", "venv", tmp_path / "venv"], tmp_path)
    run([tmp_path / "venv" / "bin" / "pip", "install", "-q", wheel], tmp_path)

    # 3. their repository: a src layout, its own dependency and health path, a .env
    repo = tmp_path / "shop"
    (repo / "src" / APP).mkdir(parents=True)
    (repo / "src" / APP / "__init__.py").write_text("")
    (repo / "src" / APP / "main.py").write_text(MAIN)
    (repo / "pyproject.toml").write_text(
        f'[project]\nname = "{APP}"\nversion = "1.0"\n'
        'dependencies = ["fastapi==0.165.0", "humanize==4.12.1"]\n')
    (repo / ".env").write_text(f"SHOP_TOKEN={SECRET}\n")
    (repo / "src" / ".env").write_text(f"SHOP_TOKEN={SECRET}\n")
    run(["git", "init", "-q"], repo)
    shop = Shop(repo, tmp_path / "venv" / "bin")
    shop.commit("the shop")
    init = shop.run("asgi-fleet", "init", "--port", PORT)
    assert f"{APP}: {APP}.main:app from src, health /-/ready, port {PORT}" in init
    assert all((repo / p).is_file() for p in ("deploy.py", "inventories/prod.py", "inventories/docker.py",
                                              "group_data/all.py", "requirements.in"))
    refused = subprocess.run([shop.bin / "asgi-fleet", "init"], cwd=repo, capture_output=True, text=True)
    assert refused.returncode != 0 and "already exist" in refused.stderr  # never overwrites

    # 4. the lock, with hashes, for the server stack and the app's own dependency
    shop.run("asgi-fleet", "pin")
    lock = (repo / "requirements.lock").read_text()
    assert "humanize==4.12.1" in lock and "uvloop==" in lock and "--hash=sha256:" in lock
    shop.commit("deploy with asgi-fleet")
    return shop


def test_an_operator_deploys_their_own_repository_with_the_package(host, shop):
    # 5. the deploy, to a host that already serves the example app
    before = host.check_output("curl -s localhost:8000/healthz")
    record = shop.deploy()
    assert record["hosts"][f"@docker/{HOST}"]["apps"][APP]["health"] == "healthy"
    assert host.check_output(f"curl -s localhost:{PORT}/size/4096") == '{"size":"4.1 kB"}'
    assert host.check_output("curl -s localhost:8000/healthz") == before  # its neighbour untouched
    release = host.check_output(f"readlink -f /srv/{APP}/current")
    assert host.run(f"test -e {release}/{APP}/main.py").rc == 0
    assert host.run(f"grep -rl {SECRET} /srv/{APP} /etc/{APP}").stdout == ""  # no .env shipped

    # 6. verify passes; status and the journal see it
    assert "ASGI-FLEET OK" in shop.run("asgi-fleet", "verify", "inventories/docker.py", timeout=600)
    assert f"{HOST}  {APP}" in shop.run("asgi-fleet", "status", "inventories/docker.py")
    logs = shop.run("asgi-fleet", "logs", "inventories/docker.py", APP, "-n", "20")
    assert f"{HOST}/{APP} |" in logs and "Application startup complete" in logs
    assert f"{HOST}: running, left alone" in shop.run("asgi-fleet", "fleet", "up", HOST)  # idempotent
    assert HOST in shop.run("asgi-fleet", "fleet", "status")


def test_three_deploys_are_in_the_history_and_a_named_release_comes_back(host, shop):
    releases = [host.check_output(f"readlink /srv/{APP}/current").rsplit("/", 1)[1]]
    commits = []
    for n in (1, 2):  # two more releases, each its own commit
        with (shop.repo / "src" / APP / "main.py").open("a") as f:
            f.write(f"\n# release {n}\n")
        commits.append(shop.commit(f"release {n}"))
        shop.deploy()
        releases.append(host.check_output(f"readlink /srv/{APP}/current").rsplit("/", 1)[1])
    assert len(set(releases)) == 3
    listed = shop.run("asgi-fleet", "releases", "inventories/docker.py")
    history = [line.split() for line in listed.split("when (UTC)", 1)[1].splitlines()[1:] if APP in line]
    # when (date, time), host, app, release, activation, outcome, by, commit
    assert [(row[4], row[5], row[6], row[8]) for row in history[-3:]] == [
        (releases[0], "start", "activated", history[-3][8]),
        (releases[1], "reload", "activated", commits[0]), (releases[2], "reload", "activated", commits[1])]
    assert f"*{releases[2]}" in listed

    shop.run("asgi-fleet", "rollback", "inventories/docker.py", releases[0])
    assert host.check_output(f"readlink /srv/{APP}/current").endswith(f"/{releases[0]}")
    assert host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' localhost:{PORT}/-/ready") == "200"
    assert "ASGI-FLEET OK" in shop.run("asgi-fleet", "verify", "inventories/docker.py", timeout=600)
    refused = subprocess.run([shop.bin / "asgi-fleet", "rollback", "inventories/docker.py", "0123456789ab"],
                             cwd=shop.repo, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "rollback_to='0123456789ab': not kept on the host" in (
        refused.stdout + refused.stderr)


def test_a_lock_left_by_a_stuck_run_is_shown_and_released(host, shop):
    stuck = "9f8e7d6c5b4a stuck-laptop 999999 1764626400"  # a run on another machine, gone quiet
    assert host.run(f"echo '{stuck}' > /run/lock/asgi-fleet.deploy").rc == 0
    shown = shop.run("asgi-fleet", "lock", "status", "inventories/docker.py")
    assert f"{HOST}  held  {stuck}" in shown
    released = shop.run("asgi-fleet", "lock", "release", "inventories/docker.py")
    assert f"{HOST}: given ({stuck})" in released
    assert f"{HOST}  free" in shop.run("asgi-fleet", "lock", "status", "inventories/docker.py")
