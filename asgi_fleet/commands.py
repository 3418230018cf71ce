"""Shell commands that asgi-fleet runs on hosts, built by pure functions.

Building a command is kept apart from running it (pyinfra operations in
operations.py run these), so each can be unit-tested without a host.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

q = shlex.quote

UNIT_DIR = "/etc/systemd/system"


@dataclass(frozen=True)
class AppPaths:
    """Where one app lives on a host. Everything is keyed by the app's name."""

    app: str
    srv_root: str = "/srv"

    @property
    def root(self) -> str:  # stable parent: the unit's WorkingDirectory
        return f"{self.srv_root}/{self.app}"

    @property
    def releases(self) -> str:
        return f"{self.root}/releases"

    @property
    def venvs(self) -> str:
        return f"{self.root}/venvs"

    @property
    def current(self) -> str:
        return f"{self.root}/current"

    @property
    def etc(self) -> str:
        return f"/etc/{self.app}"

    @property
    def gunicorn_conf(self) -> str:
        return f"{self.etc}/gunicorn.conf.py"

    @property
    def candidates(self) -> str:  # the next config, checked by preflight before it is installed
        return f"{self.etc}/next"

    @property
    def env_file(self) -> str:
        return f"{self.etc}/env"

    @property
    def secrets_file(self) -> str:
        return f"{self.etc}/secrets"

    @property
    def runtime_dir(self) -> str:
        return f"/run/{self.app}"

    @property
    def control_socket(self) -> str:
        return f"{self.runtime_dir}/gunicorn.ctl"

    @property
    def state_dir(self) -> str:
        return f"/var/lib/{self.app}"

    @property
    def service(self) -> str:
        return f"{self.app}.service"

    @property
    def socket(self) -> str:
        return f"{self.app}.socket"

    @property
    def preflight_unit(self) -> str:  # the transient unit preflight's canary runs in (no suffix)
        return f"{self.app}-preflight"

    @property
    def activation_unit(self) -> str:  # the transient unit an activation runs in
        return f"asgi-fleet-activate-{self.app}.service"

    @property
    def activation_record(self) -> str:  # "START END STATUS" of the last activation (verify's window)
        return f"{ACTIVATIONS_DIR}/{self.app}"

    @property
    def activation_result(self) -> str:  # the last activation's steps and outcome (agent.py's JSON)
        return f"{ACTIVATIONS_DIR}/{self.app}.json"

    @property
    def previous_files(self) -> str:  # the live files an activation replaced, for its rollback
        return f"{self.etc}/previous"

    @property
    def staged(self) -> dict[str, tuple[str, str]]:
        """The files a deploy stages in `candidates` and installs when it activates:
        {name (as activation.py calls them): (staged path, live path)}."""
        return {
            "config": (f"{self.candidates}/gunicorn.conf.py", self.gunicorn_conf),
            "env": (f"{self.candidates}/env", self.env_file),
            "secrets": (f"{self.candidates}/secrets", self.secrets_file),
            "service_unit": (f"{self.candidates}/{self.service}", f"{UNIT_DIR}/{self.service}"),
            "socket_unit": (f"{self.candidates}/{self.socket}", f"{UNIT_DIR}/{self.socket}"),
        }

    def release(self, release_id: str) -> str:
        return f"{self.releases}/{release_id}"

    def venv(self, venv_id: str) -> str:
        return f"{self.venvs}/{venv_id}"


def writable_by_app(tree: str, app: str) -> str:
    """The first path under `tree` (symlinks aside) the app's user could change:
    not owned by root, writable by others, or by the app's group. One `find`."""
    return (f"find {q(tree)} -not -type l \\( -not -user root -o -perm /o=w "
            f"-o \\( -group {q(app)} -perm /g=w \\) \\) -print -quit 2>/dev/null || true")


def curl_args(bind: str, path: str) -> list[str]:
    """curl arguments that reach `path` through the app's own socket, from the host."""
    if bind.startswith("unix:"):
        return ["--unix-socket", bind[5:], f"http://localhost{path}"]
    host, _, port = bind.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
    return [f"http://{host}:{port}{path}"]


def loose_files(tree: str, group: str) -> str:
    """The first path under `tree` (symlinks aside) not owned by root:GROUP,
    writable by the group, or open to others: one `find`, fast on any tree."""
    return (f"find {q(tree)} -not -type l \\( -not -user root -o -not -group {q(group)} "
            f"-o -perm /g=w -o -perm /o=rwx \\) -print -quit 2>/dev/null || true")


def release_modes(release_dir: str, group: str) -> str:
    """Code belongs to root and is readable by the app's group only."""
    return f"chown -R root:{q(group)} {q(release_dir)} && chmod -R u=rwX,g=rX,o= {q(release_dir)}"


def unpack_release(release_dir: str, tarball: str, release_id: str, venv_dir: str, group: str) -> str:
    """Unpack a release beside its final place, then rename it into place.

    The rename makes a release appear whole or not at all; REVISION is what
    the app reports, and .venv links the release to its virtualenv.
    """
    tmp = f"{release_dir}.tmp"
    return " && ".join([
        f"rm -rf {q(tmp)}",
        f"mkdir -p {q(tmp)}",
        f"tar -xzf {q(tarball)} -C {q(tmp)} --no-same-owner",
        f"ln -sfn {q(venv_dir)} {q(tmp + '/.venv')}",
        f"echo {q(release_id)} > {q(tmp + '/REVISION')}",
        release_modes(tmp, group),
        f"mv -T {q(tmp)} {q(release_dir)}",
        f"rm -f {q(tarball)}",
    ])


def running_master(service: str) -> str:
    """Report the unit's main PID, its virtualenv and each worker's cwd.

    The master's virtualenv is the one whose site-packages its memory maps
    (setproctitle's extension is always loaded): its command line is
    rewritten by setproctitle and its exe is the system python. A worker's cwd
    is the release it imported, since gunicorn chdirs to `current` and the
    kernel resolves the link. A worker without uvloop or httptools in its
    memory maps ("slow") fell back to asyncio/h11, say after a restart while
    the packages were missing.
    """
    return f"""
pid=$(systemctl show -p MainPID --value {q(service)} 2>/dev/null)
[ -n "$pid" ] && [ "$pid" -gt 0 ] || exit 0
echo "pid $pid"
echo "site $(grep -o '/[^ ]*/site-packages/' /proc/$pid/maps | head -n1)"
for child in $(cat /proc/$pid/task/*/children 2>/dev/null); do
    echo "worker $child $(readlink /proc/$child/cwd)"
    grep -q /uvloop/ /proc/$child/maps 2>/dev/null && grep -q /httptools/ /proc/$child/maps 2>/dev/null \
        || echo "slow $child"
done
""".strip()


def set_flags(flag_dir: str, present: list[str], absent: list[str]) -> str:
    """Make the flag files `present` exist and `absent` not, in flag_dir."""
    parts = [f"mkdir -p {q(flag_dir)}"]
    parts += [f"touch {q(flag_dir + '/' + name)}" for name in present]
    parts += [f"rm -f {q(flag_dir + '/' + name)}" for name in absent]
    return " && ".join(parts)


def install_nginx_config(config: str, kept_out: str) -> str:
    """Put CONFIG.new and KEPT_OUT.new in place and reload nginx gracefully,
    unless `nginx -t` refuses the new config: then the previous one is put
    back (so that no later run meets an untested file) and the command fails."""
    c, prev = q(config), q(config + ".prev")
    return "; ".join([
        "set -e",
        f"mv -f {q(kept_out + '.new')} {q(kept_out)}",
        f"if [ -e {c} ]; then cp -p {c} {prev}; else rm -f {prev}; fi",
        f"mv -f {q(config + '.new')} {c}",
        f"if ! nginx -t -q; then if [ -e {prev} ]; then mv -f {prev} {c}; else rm -f {c}; fi; "
        f"echo 'nginx -t refused the new config; the previous one is back in place' >&2; exit 1; fi",
        f"rm -f {prev}",
        "systemctl reload-or-restart nginx",
    ])


DEPLOY_LOCK = "/run/lock/asgi-fleet.deploy"
PREFLIGHT_SCRIPT = "/opt/asgi-fleet/preflight.py"  # run with each release's own virtualenv


NAMES_DIR = "/var/lib/asgi-fleet/apps"  # a marker per app name asgi-fleet took


def foreign_names(paths: AppPaths) -> str:
    """What the host already has by an app's names that asgi-fleet did not
    create: "ours" when it did (its marker, or a unit it wrote before markers
    existed), else a line per user, group, unit or path found."""
    app = q(paths.app)
    units = " ".join(q(u) for u in (paths.service, paths.socket, f"{paths.preflight_unit}.service"))
    dirs = " ".join(q(d) for d in (paths.root, paths.etc, paths.runtime_dir, paths.state_dir))
    return "; ".join([
        f"if [ -e {q(NAMES_DIR + '/' + paths.app)} ] || head -n1 {q(UNIT_DIR + '/' + paths.service)} "
        "2>/dev/null | grep -q 'managed by asgi-fleet'; then echo ours; exit 0; fi",
        f"getent passwd {app} >/dev/null && echo user {app}",
        f"getent group {app} >/dev/null && echo group {app}",
        f"for unit in {units}; do path=$(systemctl show -p FragmentPath --value \"$unit\" 2>/dev/null); "
        "[ -n \"$path\" ] && echo \"unit $unit ($path)\"; done",
        f"for dir in {dirs}; do [ -e \"$dir\" ] && echo \"path $dir\"; done",
        "true",
    ])


NAMES_HEADING = "asgi-fleet names of"  # before each app's foreign_names in before_planning


def before_planning(resources_probe: str, apps: tuple[AppPaths, ...]) -> str:
    """The resources probe, then each app's foreign_names (in a subshell: it
    exits early) under a heading line that names the app."""
    parts = [resources_probe.strip()]
    for paths in apps:
        parts.append(f"echo {q(NAMES_HEADING + ' ' + paths.app)}; ( {foreign_names(paths)} )")
    return "\n".join(parts) + "\ntrue"


def parse_before_planning(lines: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """before_planning's output: the probe's lines, and per app the names
    found that asgi-fleet did not create (empty: none, or all its own)."""
    resources: list[str] = []
    foreign: dict[str, list[str]] = {}
    found = resources
    for line in (line.strip() for line in lines):
        if line.startswith(NAMES_HEADING + " "):
            found = foreign.setdefault(line[len(NAMES_HEADING) + 1:], [])
        elif line:
            found.append(line)
    return resources, {app: [] if names == ["ours"] else names for app, names in foreign.items()}


DEPLOY_HISTORY = "/var/lib/asgi-fleet/deploys.jsonl"  # every activation, a JSON line: who, what, how it ended
ACTIVATIONS_DIR = "/var/lib/asgi-fleet/activations"  # each app's last activation: when, and its status
ACTIVATION_LOGS = "/run/asgi-fleet"  # each app's last activation: what it said, root only
LOCK_MUTEX = "/run/lock/asgi-fleet.deploy.mutex"
