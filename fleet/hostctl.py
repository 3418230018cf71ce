"""Start, inspect and remove the test host containers.

systemd runs as PID 1 with the flags that work on this kind of machine
(`--privileged` fails: the bounding set lacks CAP_SYS_RESOURCE).  `up` is
idempotent: running hosts are never restarted or recreated, only checked.
`up --fresh` recreates them from their image: a test run then starts from
bare servers, whatever an earlier, interrupted run left on them.
SSH hosts get the controller's key in authorized_keys, and their host keys are
read through `docker exec` (a trusted channel) into .fleet/known_hosts, so
clients do strict host-key checking instead of trust-on-first-use.
"""

import json
import time

from .hosts import DEPLOY_USER, LABEL, LABEL_KEY, NETWORK, PIP_CACHE_VOLUME, TEST_HOSTS, TestHost, get_host
from .util import KNOWN_HOSTS, SSH_CONFIG, SSH_KEY, STATE_DIR, FleetError, log, ok, run, timed

BOOT_TIMEOUT = 60  # seconds for systemd to finish booting, and again for sshd + sudo

SYSTEMD_FLAGS = [
    "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run", "--tmpfs", "/run/lock",
    "--security-opt", "seccomp=unconfined",
    # Root on a real server has these; without them root in the container
    # cannot read other users' /proc/PID/{cwd,maps} (what the verification
    # reads), and systemd cannot apply a unit's sandboxing (ProtectSystem=...).
    "--cap-add", "SYS_PTRACE", "--cap-add", "SYS_ADMIN",
    "--stop-signal", "SIGRTMIN+3",  # systemd's "halt": `docker stop` shuts down cleanly
]


def container_state(name: str):
    """(status, labels, image id) of a container, or None if there is none."""
    out = run(["docker", "container", "inspect", name], check=False, capture=True, quiet=True)
    info = json.loads(out or "[]")
    if not info:
        return None
    return info[0]["State"]["Status"], info[0]["Config"]["Labels"] or {}, info[0]["Image"]


def ssh_args(host: TestHost) -> list:
    """An ssh command line to a test host with strict host-key checking, key only."""
    return ["ssh", "-i", SSH_KEY, "-p", str(host.ssh_port),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={KNOWN_HOSTS}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
            f"{DEPLOY_USER}@127.0.0.1"]


def ensure_key() -> str:
    """Create the controller's SSH key pair once; return the public key."""
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    if not SSH_KEY.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "asgi-fleet", "-f", SSH_KEY])
    return SSH_KEY.with_suffix(".pub").read_text().strip()


def up(names=None, fresh=False) -> None:
    hosts = [get_host(n) for n in names] if names else TEST_HOSTS
    pubkey = ensure_key()
    for host in hosts:
        with timed(f"up {host.name}"):
            if fresh:
                remove(host)
            start(host)
            wait_booted(host)
            if host.connector == "ssh":
                setup_ssh(host, pubkey)
    write_ssh_config()


def owned_state(host: TestHost):
    """container_state, refusing a container of that name that is not a test host."""
    state = container_state(host.name)
    if state and state[1].get(LABEL_KEY) != LABEL.split("=", 1)[1]:
        raise FleetError(f"container {host.name} exists but is not a test host (no label {LABEL})")
    return state


def remove(host: TestHost) -> None:
    if owned_state(host):
        log(f"{host.name}: removing it, to start it fresh from {host.image}")
        run(["docker", "rm", "-f", host.name], capture=True)


def start(host: TestHost) -> None:
    state = owned_state(host)
    if state and state[0] == "running":
        log(f"{host.name}: running, left alone")
        return
    if state:
        log(f"{host.name}: {state[0]}, starting it")
        run(["docker", "start", host.name], capture=True)
        return
    if not ok(["docker", "image", "inspect", host.image]):
        raise FleetError(f"image {host.image} missing: run `python -m asgi_fleet.fleet build` first")
    if not ok(["docker", "network", "inspect", NETWORK]):
        run(["docker", "network", "create", "--label", LABEL, NETWORK], capture=True)
    cmd = ["docker", "run", "-d", "--name", host.name, "--hostname", host.name,
           "--network", NETWORK, "--label", LABEL, *SYSTEMD_FLAGS]
    if host.cpuset is not None:
        cmd += ["--cpuset-cpus", host.cpuset]
    if host.cpus is not None:
        cmd += ["--cpus", str(host.cpus)]
    if host.ssh_port is not None:
        cmd += ["-p", f"127.0.0.1:{host.ssh_port}:22"]  # loopback only
    if host.pip_cache:
        cmd += ["-v", f"{PIP_CACHE_VOLUME}:/root/.cache/pip"]
    run(cmd + [host.image, "/sbin/init"], capture=True)


def wait_booted(host: TestHost) -> None:
    """Wait until systemd has finished booting: `running` or `degraded` (bounded)."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    state = "?"
    while time.monotonic() < deadline:
        left = max(1, int(deadline - time.monotonic()))
        state = run(["docker", "exec", host.name, "timeout", str(left),
                     "systemctl", "is-system-running", "--wait"],
                    check=False, capture=True, quiet=True, timeout=left + 5) or ""
        state = state.strip()
        if state in ("running", "degraded"):
            break
        time.sleep(0.5)  # systemd not yet reachable (exec before PID 1 is up)
    else:
        raise FleetError(f"{host.name}: systemd not up after {BOOT_TIMEOUT}s (state {state!r})")
    if state == "degraded":
        failed = run(["docker", "exec", host.name, "systemctl", "--failed", "--no-legend"],
                     check=False, capture=True, quiet=True)
        log(f"{host.name}: degraded; failed units:\n{failed}")
    else:
        log(f"{host.name}: systemd {state}")


def setup_ssh(host: TestHost, pubkey: str) -> None:
    """authorized_keys for deploy, known_hosts entry, then prove `ssh ... sudo -n id -un` prints root."""
    home = f"/home/{DEPLOY_USER}"
    current = run(["docker", "exec", host.name, "cat", f"{home}/.ssh/authorized_keys"],
                  check=False, capture=True, quiet=True) or ""
    if current.strip() != pubkey:
        run(["docker", "exec", "-i", host.name, "sh", "-ec",
             f"install -d -m 0700 -o {DEPLOY_USER} -g {DEPLOY_USER} {home}/.ssh; "
             f"cat >{home}/.ssh/authorized_keys; "
             f"chown {DEPLOY_USER}:{DEPLOY_USER} {home}/.ssh/authorized_keys; "
             f"chmod 0600 {home}/.ssh/authorized_keys"],
            input=pubkey + "\n", capture=True)
        log(f"{host.name}: installed {SSH_KEY}.pub for {DEPLOY_USER}")

    deadline = time.monotonic() + BOOT_TIMEOUT
    while not ok(["docker", "exec", host.name, "systemctl", "is-active", "--quiet", "ssh.service"]):
        if time.monotonic() > deadline:
            raise FleetError(f"{host.name}: ssh.service not active after {BOOT_TIMEOUT}s")
        time.sleep(0.5)
    update_known_hosts(host)

    while True:
        out = run(ssh_args(host) + ["sudo", "-n", "id", "-un"], check=False, capture=True,
                  quiet=True, timeout=15)
        if out and out.strip() == "root":
            log(f"{host.name}: ssh {DEPLOY_USER}@127.0.0.1:{host.ssh_port} + sudo -n works")
            return
        if time.monotonic() > deadline:
            raise FleetError(f"{host.name}: `ssh ... sudo -n` does not work: {' '.join(map(str, ssh_args(host)))}")
        time.sleep(0.5)


def update_known_hosts(host: TestHost) -> None:
    """Put the container's own host keys, read via docker exec, into .fleet/known_hosts
    under "[127.0.0.1]:PORT" (replacing older lines for that port, e.g. after a re-create)."""
    keys = run(["docker", "exec", host.name, "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub"],
               capture=True, quiet=True)
    marker = f"[127.0.0.1]:{host.ssh_port}"
    lines = [f"{marker} {' '.join(k.split()[:2])}" for k in keys.splitlines() if k.strip()]
    old = KNOWN_HOSTS.read_text().splitlines() if KNOWN_HOSTS.exists() else []
    kept = [line for line in old if line.split(" ", 1)[0] != marker]
    if sorted(lines) != sorted(line for line in old if line.split(" ", 1)[0] == marker):
        KNOWN_HOSTS.write_text("\n".join(kept + lines) + "\n")
        log(f"{host.name}: wrote {len(lines)} host keys to {KNOWN_HOSTS}")


def write_ssh_config() -> None:
    """.fleet/ssh_config, so people and testinfra can `ssh -F .fleet/ssh_config asgi-web3`."""
    blocks = []
    for h in TEST_HOSTS:
        if h.connector == "ssh":
            blocks.append(
                f"Host {h.name}\n  HostName 127.0.0.1\n  Port {h.ssh_port}\n  User {DEPLOY_USER}\n"
                f"  IdentityFile {SSH_KEY}\n  IdentitiesOnly yes\n  StrictHostKeyChecking yes\n"
                f"  UserKnownHostsFile {KNOWN_HOSTS}\n  GlobalKnownHostsFile /dev/null\n")
    SSH_CONFIG.write_text("\n".join(blocks))


def labelled_containers() -> list:
    out = run(["docker", "ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}"],
              capture=True, quiet=True)
    return out.split()


def down() -> None:
    names = labelled_containers()
    if not names:
        log("no test host containers")
        return
    with timed("down"):
        run(["docker", "rm", "-f", *names], capture=True)
    log("removed " + " ".join(names))


def status() -> None:
    images = {}
    for h in TEST_HOSTS:
        state = container_state(h.name)
        limits = ", ".join(x for x in (
            h.cpuset is not None and f"cpuset={h.cpuset}", h.cpus is not None and f"cpus={h.cpus}",
            h.ssh_port and f"ssh=127.0.0.1:{h.ssh_port}") if x) or "no limits"
        if state is None:
            detail = "absent"
        else:
            detail = state[0]
            if state[0] == "running":
                sysstate = run(["docker", "exec", h.name, "systemctl", "is-system-running"],
                               check=False, capture=True, quiet=True) or "?"
                detail += f", systemd {sysstate.strip()}"
            if h.image not in images:
                images[h.image] = run(["docker", "image", "inspect", "-f", "{{.Id}}", h.image],
                                      check=False, capture=True, quiet=True).strip()
            if images[h.image] and state[2] != images[h.image]:
                detail += ", OLDER IMAGE (fleet down && fleet up to recreate)"
        print(f"{h.name:10} {h.dist:9} {h.connector:6} {limits:28} {detail}")
    extra = set(labelled_containers()) - {h.name for h in TEST_HOSTS}
    for name in sorted(extra):
        print(f"{name:10} (labelled test host, not in fleet/hosts.py; `fleet down` removes it)")
