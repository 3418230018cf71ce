"""Issue 3: the verification suite tells the truth about every host.

It passes on a freshly deployed fleet, and when a host is broken in a known
way it fails on exactly the checks that break, with a message that names the
host, the cause and the fix. Each break is repaired by a plain redeploy (or by
undoing an operator's override), and the suite passes again.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from asgi_fleet.settings import PROJECT_ROOT

from e2e_helpers import infra_of, run_deploy, run_verify, wait_until, fleet_hosts

WEB1 = "@docker/asgi-web1"
APP = "asgi-web1/hello"
SERVICE = "hello.service"
WORKERS = f"cat /proc/$(systemctl show -p MainPID --value {SERVICE})/task/*/children"
VENV = "/srv/hello/current/.venv"
SITE = f"$(echo {VENV}/lib/python3*/site-packages)"
UP = (f"for i in $(seq 120); do [ $({WORKERS} | wc -w) = 2 ] && curl -sf 127.0.0.1:8000/healthz"
      " >/dev/null && break; sleep 0.5; done")


def check(name: str) -> str:
    """A check's test id: NAME[host/app] for web1's app, or as given with its own [id]."""
    return f"test_{name}" if name.endswith("]") else f"test_{name}[{APP}]"


# name: (break it, wait until broken, the checks that must fail, words of the message, repair)
BREAKS = {
    "sync-worker": (
        "sed -i 's/^worker_class = .*/worker_class = \"sync\"/' /etc/hello/gunicorn.conf.py"
        f" && old=$({WORKERS}) && systemctl reload {SERVICE} && echo $old > /tmp/old-workers",
        f"[ \"$(curl -s -o /dev/null -w '%{{http_code}}' 127.0.0.1:8000/healthz)\" = 500 ]"
        f" && ! grep -qw \"$({WORKERS} | cut -d' ' -f1)\" /tmp/old-workers"
        f" && [ $({WORKERS} | wc -w) = 2 ]",
        {"workers_run_the_configured_worker_class", "workers_run_uvloop_and_httptools",
         "health_endpoint_answers_through_the_bind",
         # the load balancer sees it too: one of its upstream servers answers 500
         "every_upstream_server_answers_from_the_load_balancer[asgi-lb]"},
        "asgi-web1/hello: 2 of 2 workers run gunicorn's sync worker, but an ASGI app needs "
        "asgi_fleet_worker.DrainingUvicornWorker; set worker_class and redeploy",
        "deploy",
    ),
    "no-fast-stack": (
        f"{VENV}/bin/pip uninstall -y -q uvloop httptools && systemctl restart {SERVICE}",
        f"[ $({WORKERS} | wc -w) = 2 ] && curl -sf 127.0.0.1:8000/healthz",
        {"workers_run_uvloop_and_httptools"},
        "uvicorn silently fell back to asyncio/h11",
        "deploy",
    ),
    "unit-disabled": (
        f"systemctl disable -q {SERVICE}", "true",
        {"service_is_active_and_enabled"},
        "asgi-web1/hello: hello.service is not enabled",
        "deploy",
    ),
    "worker-removed": (
        f"kill -TTOU $(systemctl show -p MainPID --value {SERVICE})",
        f"[ $({WORKERS} | wc -w) = 1 ]",
        {"worker_count_matches_the_hosts_sizing"},
        "asgi-web1/hello: 1 workers run but this host should run 2",
        "deploy",
    ),
    "current-switched-without-reload": (
        "cp -a $(readlink -f /srv/hello/current) /srv/hello/releases/other"
        " && ln -sfn releases/other /srv/hello/current.tmp && mv -T /srv/hello/current.tmp /srv/hello/current",
        "true",
        {"workers_run_the_release_current_points_to"},
        "but current points to /srv/hello/releases/other; `current` was switched without a reload",
        "deploy; rm -rf /srv/hello/releases/other",
    ),
    # Drift that a plain redeploy repairs although nothing was staged anew:
    "secrets-readable": (
        "chmod 644 /etc/hello/secrets", "true",
        {"code_config_and_secrets_are_root_owned_and_not_writable_by_the_app"},
        "/etc/hello/secrets is root hello 644, want root hello 640",
        "deploy",
    ),
    "workers-without-uvloop": (  # restarted while uvloop was missing, then put back
        f"mv {SITE}/uvloop /root/uvloop-away && systemctl restart {SERVICE} && {UP}"
        f" && mv /root/uvloop-away {SITE}/uvloop",
        f"[ -d {SITE}/uvloop ]",
        {"workers_run_uvloop_and_httptools"},
        "uvicorn silently fell back to asyncio/h11",
        "deploy",
    ),
    "release-file-loose": (
        "chmod g+w,o+r $(readlink -f /srv/hello/current)/app.py", "true",
        {"no_file_under_the_code_virtualenv_or_config_is_the_apps_to_change"},
        "app.py (under /srv/hello/releases/",
        "deploy",
    ),
    "venv-file-writable-by-the-app": (
        f"chgrp hello {SITE}/uvicorn/main.py && chmod g+w {SITE}/uvicorn/main.py", "true",
        {"no_file_under_the_code_virtualenv_or_config_is_the_apps_to_change"},
        "uvicorn/main.py (under /srv/hello/venvs/",
        "deploy",
    ),
    "stop-timeout-below-graceful": (
        "mkdir -p /etc/systemd/system/hello.service.d && printf '[Service]\\nTimeoutStopSec=10\\n'"
        " > /etc/systemd/system/hello.service.d/override.conf && systemctl daemon-reload",
        "true",
        {"configuration_is_coherent"},
        "asgi-web1/hello: want graceful_timeout (25) <= timeout (30) < TimeoutStopSec (10)",
        "rm -rf /etc/systemd/system/hello.service.d && systemctl daemon-reload",
    ),
}


def test_the_suite_passes_on_a_freshly_deployed_fleet(deployed, tmp_path):
    run = run_verify(tmp_path)
    assert run.returncode == 0 and not run.failures, run.output[-4000:]
    assert run.passed >= 10 * len(fleet_hosts())
    assert "asgi-fleet: inventories/docker.py" in run.output  # the summary table


@pytest.mark.parametrize("name", list(BREAKS))
def test_a_broken_host_fails_exactly_the_right_check(deployed, tmp_path, name):
    breaking, broken, failing, message, repair = BREAKS[name]
    [web1] = [h for h in fleet_hosts() if h.name == WEB1]
    host = infra_of(web1)
    host.check_output(breaking)
    try:
        wait_until(host, broken)
        run = run_verify(tmp_path)
        assert set(run.failures) == {check(name) for name in failing}, run.output[-6000:]
        messages = "\n".join(run.failures.values())
        assert message in messages, messages
    finally:
        for step in repair.split("; "):
            if step == "deploy":
                redeploy = run_deploy(tmp_path, "--limit", WEB1)
                assert redeploy.returncode == 0, redeploy.output[-4000:]
            else:
                host.check_output(step)
    repaired = run_verify(tmp_path)
    assert repaired.returncode == 0 and not repaired.failures, repaired.output[-4000:]


def test_an_unreachable_host_is_reported_without_hiding_the_others(deployed, tmp_path):
    inventory = tmp_path / "with-a-ghost.py"
    inventory.write_text(textwrap.dedent("""
        app = [
            "@docker/asgi-web2",
            ("ghost", {"ssh_hostname": "127.0.0.1", "ssh_port": 2299, "ssh_user": "deploy"}),
        ]
    """))
    run = run_verify(tmp_path, inventory=str(inventory))
    assert run.returncode != 0
    assert set(run.failures) == {"test_host_is_reachable[ghost]"}, run.output[-4000:]
    assert "ghost: unreachable" in run.failures["test_host_is_reachable[ghost]"]
    assert run.passed >= 10  # every check of asgi-web2 still ran and passed
    assert "UNREACHABLE" in run.output


@pytest.mark.parametrize("inventory, says", [
    ("inventories/typo.py", "inventory 'inventories/typo.py': no such file"),
    ("lb-only", "has no app host (only 1 in group lb): nothing to check"),
])
def test_an_inventory_with_nothing_to_check_fails_loudly(tmp_path, inventory, says):
    """A typo in CI must not be green: neither verify nor status exits 0."""
    if inventory == "lb-only":
        inventory = str(tmp_path / "lb-only.py")
        (tmp_path / "lb-only.py").write_text('lb = ["@docker/asgi-lb"]\n')
    verify = subprocess.run([sys.executable, "-m", "pytest", "tests/verify", "--inventory", inventory,
                             "-q", "-p", "no:cacheprovider"], cwd=PROJECT_ROOT, text=True,
                            capture_output=True, timeout=300)
    assert verify.returncode not in (0, 1) and says in verify.stderr + verify.stdout, verify
    status = subprocess.run([sys.executable, "-m", "asgi_fleet.status", inventory], cwd=PROJECT_ROOT,
                            text=True, capture_output=True, timeout=300)
    assert status.returncode == 2 and says in status.stderr, status
