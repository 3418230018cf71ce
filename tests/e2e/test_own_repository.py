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


@pytest.fixture
def host(fleet):
    found = testinfra.get_host(f"docker://{HOST}")
    yield found
    # Leave the fleet as the other tests know it: without this app.
    found.run(f"systemctl disable --now {APP}.socket {APP}.service; "
              f"rm -rf /etc/systemd/system/{APP}.socket /etc/systemd/system/{APP}.service "
              f"/srv/{APP} /etc/{APP} /var/lib/{APP} /var/lib/asgi-fleet/apps/{APP} "
              f"/var/lib/asgi-fleet/activations/{APP} /var/lib/asgi-fleet/activations/{APP}.json; "
              f"userdel {APP}; groupdel {APP}; systemctl daemon-reload")


def test_an_operator_deploys_their_own_repository_with_the_package(host, tmp_path):
    # 1-2. the wheel, in a fresh virtualenv outside this repository
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "wheel", PROJECT_ROOT],
        tmp_path)
    [wheel] = (tmp_path / "wheel").glob("asgi_fleet-*.whl")
    run([sys.executable, "-m", "venv", tmp_path / "venv"], tmp_path)
    run([tmp_path / "venv" / "bin" / "pip", "install", "-q", wheel], tmp_path)
    bin_dir = tmp_path / "venv" / "bin"

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
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the shop")
    init = run([bin_dir / "asgi-fleet", "init", "--port", PORT], repo)
    assert f"{APP}: {APP}.main:app from src, health /-/ready, port {PORT}" in init.stdout
    assert sorted(p for p in ("deploy.py", "inventories/prod.py", "inventories/docker.py",
                              "group_data/all.py", "requirements.in") if (repo / p).is_file()) == sorted(
        ["deploy.py", "inventories/prod.py", "inventories/docker.py", "group_data/all.py", "requirements.in"])
    refused = subprocess.run([bin_dir / "asgi-fleet", "init"], cwd=repo, capture_output=True, text=True)
    assert refused.returncode != 0 and "already exist" in refused.stderr  # never overwrites

    # 4. the lock, with hashes, for the server stack and the app's own dependency
    run([bin_dir / "asgi-fleet", "pin"], repo)
    lock = (repo / "requirements.lock").read_text()
    assert "humanize==4.12.1" in lock and "uvloop==" in lock and "--hash=sha256:" in lock
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "deploy with asgi-fleet")
    commit = run(["git", "rev-parse", "--short=12", "HEAD"], repo).stdout.strip()

    # 5. the deploy, to a host that already serves the example app
    before = host.check_output("curl -s localhost:8000/healthz")
    deployed = run([bin_dir / "pyinfra", "-y", "inventories/docker.py", "deploy.py"], repo)
    record = json.loads((repo / ".asgi-fleet" / "last-run.json").read_text())
    assert record["hosts"][f"@docker/{HOST}"]["apps"][APP]["health"] == "healthy", deployed.stdout[-3000:]
    assert host.check_output(f"curl -s localhost:{PORT}/size/4096") == '{"size":"4.1 kB"}'
    assert host.check_output("curl -s localhost:8000/healthz") == before  # its neighbour untouched
    release = host.check_output(f"readlink -f /srv/{APP}/current")
    assert host.run(f"test -e {release}/{APP}/main.py").rc == 0
    assert host.run(f"grep -rl {SECRET} /srv/{APP} /etc/{APP}").stdout == ""  # no .env shipped

    # 6. verify passes, and the day-2 commands see what was deployed
    verified = run([bin_dir / "asgi-fleet", "verify", "inventories/docker.py"], repo, timeout=600)
    assert "ASGI-FLEET OK" in verified.stdout
    releases = run([bin_dir / "asgi-fleet", "releases", "inventories/docker.py"], repo).stdout
    assert f"*{Path(release).name}" in releases and commit in releases and "activated" in releases
    logs = run([bin_dir / "asgi-fleet", "logs", "inventories/docker.py", "-n", "20"], repo).stdout
    assert f"{HOST}/{APP} |" in logs and "Application startup complete" in logs
    locks = run([bin_dir / "asgi-fleet", "lock", "status", "inventories/docker.py"], repo).stdout
    assert f"{HOST}  free" in locks
