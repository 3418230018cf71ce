"""Issue 7: a sandboxed unit, least privilege, and secrets that never leak."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import textwrap
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_fleet.commands import AppPaths
from asgi_fleet.settings import PROJECT_ROOT, environment
from asgi_fleet.tasks import render_template
from e2e_helpers import Target, fleet_hosts, infra_of, run_deploy, run_verify

HOST = "@docker/asgi-web2"


def test_the_unit_scores_at_most_1_5_and_still_runs_the_fast_stack(deployed, target: Target):
    host = infra_of(target.host)
    out = host.check_output(f"systemd-analyze security --no-pager {target.plan.paths.service}")
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out).group(1))
    assert score <= 1.5, out[-2000:]
    # sandboxed, it still serves through uvloop + httptools (the verify suite checks the maps)
    assert host.run(f"curl -sf {'127.0.0.1:' + target.plan.app.bind.rsplit(':', 1)[1]}/healthz").rc == 0


def test_the_app_user_cannot_write_its_code_virtualenv_or_config(deployed, target: Target):
    host, plan = infra_of(target.host), target.plan
    for path in (plan.release_dir, f"{plan.release_dir}/app.py", plan.venv_dir,
                 f"{plan.venv_dir}/bin/python3", plan.paths.etc, plan.paths.gunicorn_conf,
                 plan.paths.secrets_file):
        attempt = host.run(f"runuser -u {plan.paths.app} -- sh -c "
                           f"'touch {path}/.probe 2>/dev/null || touch {path} 2>/dev/null'")
        host.run(f"rm -f {path}/.probe")
        assert attempt.rc != 0, f"{plan.paths.app} could write {path}"


def test_a_secret_reaches_the_app_and_never_shows(deployed, tmp_path):
    secret = f"s3cret-{uuid.uuid4().hex}"
    inventory = tmp_path / "web2.py"
    inventory.write_text(textwrap.dedent(f"""
        app = [("{HOST}", {{"app_secrets": {{"API_TOKEN": "env:ASGI_FLEET_TEST_SECRET"}}}})]
    """))
    [web2] = [h for h in fleet_hosts() if h.name == HOST]
    host = infra_of(web2)
    pid = host.check_output("systemctl show -p MainPID --value hello.service")
    try:
        run = run_deploy(tmp_path, "-vvv", inventory=str(inventory),
                         env={"ASGI_FLEET_TEST_SECRET": secret})
        assert run.returncode == 0, run.output[-3000:]
        assert secret not in run.output  # stdout and stderr, at pyinfra's most verbose
        debug_log = PROJECT_ROOT / "pyinfra-debug.log"
        assert not debug_log.exists() or secret not in debug_log.read_text()
        assert run.host(HOST)["apps"]["hello"]["activation"] == "reload"  # only a secret changed
        assert host.check_output("systemctl show -p MainPID --value hello.service") == pid
        # root:hello 0640, and the app's workers have it in their environment
        assert host.check_output("stat -c '%U %G %a' /etc/hello/secrets") == "root hello 640"
        # the app reads it (new workers, after the reload): every worker answers alike
        want = hashlib.sha256(secret.encode()).hexdigest()
        for _ in range(6):
            answer = json.loads(host.check_output("curl -sf 127.0.0.1:8000/secret-fingerprint"))
            assert answer["api_token_sha256"] == want
        assert secret not in host.check_output("journalctl --no-pager -o cat")
        # the verification reads the same settings, so it resolves the same sources
        verify = run_verify(tmp_path, inventory=str(inventory),
                            env={"ASGI_FLEET_TEST_SECRET": secret})
        assert verify.returncode == 0, verify.output[-3000:]
        assert secret not in verify.output
    finally:
        restored = run_deploy(tmp_path, "--limit", HOST)  # back to no secrets
        assert restored.returncode == 0, restored.output[-3000:]
    assert host.check_output("cat /etc/hello/secrets") == ""


def test_a_release_ships_neither_env_files_nor_node_modules_and_only_the_app_group_reads_it(
        deployed, tmp_path):
    app = tmp_path / "app"
    shutil.copytree(PROJECT_ROOT / "example", app)
    leaks = {".env": "API_TOKEN=from-the-developers-laptop\n", ".env.local": "X=1\n",
             "node_modules/left-pad/index.js": "module.exports = 1\n", ".tox/log": "x\n"}
    for name, text in leaks.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    (app / "app.py").write_text((app / "app.py").read_text() + "\n# shipped without its .env\n")
    [web2] = [h for h in fleet_hosts() if h.name == HOST]
    host = infra_of(web2)
    try:
        run = run_deploy(tmp_path, "--limit", HOST, "--data", f"app_source={app}")
        assert run.returncode == 0, run.output[-3000:]
        release = f"/srv/hello/releases/{run.host(HOST)['apps']['hello']['release']}"
        assert host.check_output("readlink -f /srv/hello/current") == release
        shipped = host.check_output(f"cd {release} && find . -mindepth 1 -not -name .venv").split()
        assert "./app.py" in shipped
        assert not [p for p in shipped if ".env" in p or "node_modules" in p or ".tox" in p], shipped
        assert host.check_output(f"stat -c '%U %G %a' {release}") == "root hello 750"
        # nothing in it belongs to anyone but root:hello, or is readable by others
        odd = host.check_output(f"find {release} -not -type l \\( -not -user root -o -not -group hello "
                                "-o -perm /o=rwx -o -perm /g=w \\) -print")
        assert odd == "", odd
    finally:
        restored = run_deploy(tmp_path, "--limit", HOST)
        assert restored.returncode == 0, restored.output[-3000:]


def test_app_env_values_are_read_back_by_systemd_exactly(deployed):
    """Hostile app_env values that validation accepts, rendered by the deploy's
    template, read by real systemd (EnvironmentFile) into a real process."""
    [web2] = [h for h in fleet_hosts() if h.name == HOST]
    host = infra_of(web2)
    accepted = st.text(alphabet=st.one_of(st.sampled_from(list("$`'\"\\;&|<>%{}()[]*?!#=+@~, aZ09é€😀")), st.characters()),
                       max_size=20).filter(lambda v: environment({"V": v}) is None)

    @settings(max_examples=25, deadline=None)
    @given(values=st.dictionaries(st.sampled_from(["API_URL", "GREETING", "X"]), accepted, min_size=1))
    def read_back(values):
        text = render_template("app.env.j2", app={"app_env": values}, paths=AppPaths("hello"))
        encoded = base64.b64encode(text.encode()).decode()
        out = host.check_output(
            f"echo {encoded} | base64 -d > /run/asgi-fleet-env-test && "
            "systemd-run --quiet --wait --pipe -p EnvironmentFile=/run/asgi-fleet-env-test "
            "/usr/bin/env -0 | base64 -w0")
        seen = dict(item.split("=", 1) for item in base64.b64decode(out).decode().split("\0") if item)
        assert {name: seen.get(name) for name in values} == values

    try:
        read_back()
    finally:
        host.run("rm -f /run/asgi-fleet-env-test")


def test_an_app_named_like_an_existing_account_is_refused_before_any_change(deployed, tmp_path):
    """asgi-web3's SSH user is `deploy` (every fleet host has one): taking it
    over would lock the deploy out."""
    hosts = {h.name: infra_of(h) for h in fleet_hosts()}
    shell = hosts["asgi-web3"].check_output("getent passwd deploy | cut -d: -f7")
    run = run_deploy(tmp_path, "--data", "app_name=deploy")
    assert run.returncode != 0
    # Every fleet host has the `deploy` user; the run stops at whichever host
    # pyinfra prepares first, so the message may name any of them.
    assert re.search(r"asgi-web\d: app_name='deploy': the host already has user deploy; "
                     r"group deploy, not created by asgi-fleet", run.output), run.output[-3000:]
    assert all(not entry["ops"] for entry in run.record["hosts"].values()), run.record["hosts"]
    assert hosts["asgi-web3"].check_output("getent passwd deploy | cut -d: -f7") == shell
    for name, host in hosts.items():
        assert not host.file("/srv/deploy").exists, name
        assert not host.file("/var/lib/asgi-fleet/apps/deploy").exists, name


def test_an_app_that_reads_a_secret_at_import_passes_preflight_and_a_removed_secret_leaves(
        deployed, tmp_path):
    """Over SSH with sudo (asgi-web3): pydantic-settings style, the app reads
    API_TOKEN when it is imported, so preflight must run with the candidate
    secrets; once the secret is removed, no worker has it any more."""
    secret = f"s3cret-{uuid.uuid4().hex}"
    app = tmp_path / "needs-token"
    shutil.copytree(PROJECT_ROOT / "example", app)
    (app / "app.py").write_text('import os\n\nAPI_TOKEN_AT_IMPORT = os.environ["API_TOKEN"]\n'
                                + (app / "app.py").read_text())
    inventory = tmp_path / "web3.py"
    inventory.write_text(textwrap.dedent(f"""
        import runpy
        _base = runpy.run_path({str(PROJECT_ROOT / 'inventories' / 'docker.py')!r})
        app = [(name, {{**data, "app_source": {str(app)!r},
                        "app_secrets": {{"API_TOKEN": "env:ASGI_FLEET_TEST_SECRET"}}}})
               for name, data in _base["app"] if name == "asgi-web3"]
    """))
    [web3] = [h for h in fleet_hosts() if h.name == "asgi-web3"]
    host = infra_of(web3)
    want = hashlib.sha256(secret.encode()).hexdigest()

    def fingerprints():
        return {json.loads(host.check_output("curl -sf 127.0.0.1:8000/secret-fingerprint"))["api_token_sha256"]
                for _ in range(6)}

    try:
        run = run_deploy(tmp_path, inventory=str(inventory), env={"ASGI_FLEET_TEST_SECRET": secret})
        assert run.returncode == 0, run.output[-3000:]
        assert run.host("asgi-web3")["apps"]["hello"]["health"] == "healthy"
        assert fingerprints() == {want}
        # the upload went through a private directory, and left nothing behind
        assert host.run(f"grep -rl {secret} /tmp /var/tmp /home/deploy").stdout == ""
        assert host.check_output("ls -d /tmp/asgi-fleet-upload-* 2>/dev/null || true") == ""
    finally:
        removed = run_deploy(tmp_path, "--limit", "asgi-web3")  # the example app, no secrets
        assert removed.returncode == 0, removed.output[-3000:]
    assert removed.host("asgi-web3")["apps"]["hello"]["activation"] == "reload"
    assert fingerprints() == {None}
    for pid in host.check_output("pgrep -f 'gunicorn: worker \\[hello\\]'").split():
        environ = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
        assert "API_TOKEN=" not in environ, f"worker {pid} still has API_TOKEN"
