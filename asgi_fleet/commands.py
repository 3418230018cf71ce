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


VENV_MARKER = ".asgi-fleet-complete"  # written last: a venv without it is rebuilt


def installed_dists_digest(venv: str) -> str:
    """A digest of the distributions installed in a venv (their dist-info names).

    Recorded when the venv is built and recomputed on every run: a package
    removed or added by hand (say `pip uninstall uvloop`) changes it, and the
    venv is rebuilt instead of trusted.
    """
    return (f"ls -d {q(venv)}/lib/python3*/site-packages/*.dist-info 2>/dev/null"
            " | sed 's#.*/##' | LC_ALL=C sort | sha256sum | cut -c1-64")


def venv_state(venv: str, app: str) -> str:
    """Three lines: the lock digest and dists digest recorded at build, the
    dists digest now; then the first path in it the app could write, if any."""
    return (f"{{ cat {q(venv + '/' + VENV_MARKER)} 2>/dev/null || printf '\\n\\n'; }} | head -n2; "
            + installed_dists_digest(venv) + "; " + writable_by_app(venv, app))


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


def health_probe(bind: str, path: str) -> str:
    """Print the HTTP status of one GET (000 when nothing answers)."""
    args = " ".join(q(a) for a in curl_args(bind, path))
    return f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 {args} || true"


def wait_healthy(bind: str, path: str, deadline: int, service: str, journal_lines: int = 30,
                 label: str = "health gate", release_dir: str | None = None,
                 workers: int | None = None, consecutive: int = 1) -> str:
    """Poll until GET answers 200 `consecutive` times in a row (0.5 s apart);
    past the deadline fail with the unit's journal.

    With release_dir and workers, also wait until the unit's master has
    exactly that many workers, all running from release_dir: after a HUP the
    old workers keep answering 200 for a while, and a gate that stops at the
    first 200 would pass on the old code.
    """
    args = " ".join(q(a) for a in curl_args(bind, path))
    url = q(curl_args(bind, path)[-1])
    on_release = "true"
    why = ""
    if release_dir is not None and workers is not None:
        on_release = "workers_on_release"
        why = f" and {workers} workers on {release_dir} (seen: $seen)"
    in_a_row = f" {consecutive} times in a row" if consecutive > 1 else ""
    return f"""
workers_on_release() {{
    pid=$(systemctl show -p MainPID --value {q(service)}); seen=0
    want=$(readlink -f {q(release_dir or "")})  # cwd is resolved by the kernel: srv_root may be a symlink
    for child in $(cat /proc/$pid/task/*/children 2>/dev/null); do
        [ "$(readlink /proc/$child/cwd)" = "$want" ] && seen=$((seen + 1))
    done
    [ "$seen" = {workers or 0} ] && [ "$(cat /proc/$pid/task/*/children | wc -w)" = {workers or 0} ]
}}
end=$(( $(date +%s) + {deadline} )); code=000; seen=0; healthy=0
while :; do
    code=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 {args}) || true
    if [ "$code" = 200 ] && {on_release}; then healthy=$((healthy + 1)); else healthy=0; fi
    [ "$healthy" -ge {consecutive} ] && exit 0
    [ "$(date +%s)" -ge "$end" ] && break
    sleep 0.5
done
echo "{label} failed: want GET {url} to answer 200{in_a_row}{why} within {deadline}s; it answered $code." >&2
echo "$(systemctl is-active {q(service)}) {q(service)}; last journal lines:" >&2
journalctl -u {q(service)} -n {journal_lines} --no-pager -o cat >&2
exit 1
""".strip()


def atomic_symlink(link: str, target: str) -> str:
    """Point `link` at `target` with a rename over the old link (never rm then ln).

    rename(2) replaces the link in one step: a reader sees the old target or
    the new one, never a missing `current`.
    """
    tmp = f"{link}.tmp-$$"
    return f"ln -sfn {q(target)} {tmp} && mv -T {tmp} {q(link)}"


def build_virtualenv(
    venv: str, lock: str, *, python: str = "python3", index_url: str | None = None,
    ca_bundle: str | None = None, modules: tuple[str, ...] = (),
) -> str:
    """Create a virtualenv in place and install a hash-locked requirements file.

    It is built where it will live (scripts carry the venv path in their
    shebang, so it cannot be moved), and marked complete only at the end. A
    half-built venv from an interrupted run has no marker and is rebuilt.
    `modules` are single-file modules uploaded beside the venv as VENV.NAME.py,
    moved into its site-packages (asgi-fleet's worker class).
    """
    pip = [f"{venv}/bin/pip", "install", "--no-input", "--disable-pip-version-check",
           "--require-hashes", "--no-deps", "-r", lock]
    if index_url:
        pip += ["--index-url", index_url]
    if ca_bundle:
        pip += ["--cert", ca_bundle]
    return " && ".join([
        f"rm -rf {q(venv)}",
        f"{q(python)} -m venv {q(venv)}",
        " ".join(q(p) for p in pip),
        f"{q(venv + '/bin/pip')} check",
        *[f"install -m 644 {q(f'{venv}.{name}.py')} $(echo {q(venv)}/lib/python3*/site-packages)/{name}.py"
          f" && rm {q(f'{venv}.{name}.py')}" for name in modules],
        f"{{ sha256sum {q(lock)} | cut -c1-64; {installed_dists_digest(venv)}; }}"
        f" > {q(venv + '/' + VENV_MARKER)}",
    ])


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


def files_digest(*paths: str) -> str:
    """sha256 over the named files' contents (missing files count as empty)."""
    return f"cat {' '.join(q(p) for p in paths)} 2>/dev/null | sha256sum | cut -c1-64"


def run_as_app(paths: AppPaths, release_dir: str, env_file: str, time_limit: int) -> str:
    """Run a command the way the service runs: as the app user, with its
    environment (and, through gunicorn.conf.py, its candidate secrets),
    stopped after `time_limit` seconds (an import that hangs never hangs a deploy)."""
    return (f"systemd-run --quiet --collect --wait --pipe -p User={paths.app} -p Group={paths.app}"
            f" -p RuntimeMaxSec={int(time_limit)}"
            f" -p EnvironmentFile={q(env_file)} -p WorkingDirectory={q(release_dir)}"
            f" -E ASGI_FLEET_PREFLIGHT_RELEASE={q(release_dir)}"
            f" -E ASGI_FLEET_PREFLIGHT_SECRETS={q(paths.candidates + '/secrets')}")


def preflight(paths: AppPaths, release_dir: str, *, app_module: str, worker_class: str,
              health_path: str, deadline: int, script: str, stamp: str, digest: str) -> str:
    """Check a release with its virtualenv and the candidate config, before any switch.

    1. the preflight script imports the app (an ASGI callable, or a factory
       called as such) and the worker class;
    2. `gunicorn --check-config` loads the candidate gunicorn.conf.py;
    3. a one-worker canary boots from the release on a private unix socket
       (a transient unit, as the app user, with the candidate environment)
       and must answer the health endpoint with 200 within the deadline.
    Only then is the stamp written. Nothing here touches the running service.
    """
    unit = paths.preflight_unit
    sock = f"/run/{unit}/canary.sock"
    gunicorn = q(f"{release_dir}/.venv/bin/gunicorn")
    as_app = run_as_app(paths, release_dir, f"{paths.candidates}/env", deadline)
    hung = (f"{{ rc=$?; [ $rc = 1 ] || echo \"preflight failed: the check ended with status $rc; "
            f"one that hangs is stopped after {deadline} s (health_deadline)\" >&2; exit 1; }}")
    canary = (
        f"systemd-run --quiet --collect --unit={unit} -p User={paths.app} -p Group={paths.app}"
        f" -p EnvironmentFile={q(paths.candidates + '/env')} -p WorkingDirectory={q(release_dir)}"
        f" -E ASGI_FLEET_PREFLIGHT_RELEASE={q(release_dir)}"
        f" -E ASGI_FLEET_PREFLIGHT_SECRETS={q(paths.candidates + '/secrets')}"
        f" -p RuntimeDirectory={unit} {gunicorn} -c {q(paths.candidates + '/gunicorn.conf.py')}"
        f" --chdir {q(release_dir)} --workers 1 --bind unix:{sock} --control-socket /run/{unit}/ctl"
        f" --worker-tmp-dir /run/{unit} {q(app_module)}"
    )
    wait = wait_healthy(f"unix:{sock}", health_path, deadline, f"{unit}.service",
                        label="preflight: the canary's health check")
    return f"""
{as_app} {q(release_dir + '/.venv/bin/python')} {q(script)} {q(app_module)} {q(worker_class)} {q(paths.candidates + '/gunicorn.conf.py')} || {hung}
{as_app} {gunicorn} --check-config -c {q(paths.candidates + '/gunicorn.conf.py')} --chdir {q(release_dir)} {q(app_module)} \\
    || {{ echo "preflight failed: gunicorn --check-config refused the candidate config" >&2; exit 1; }}
systemctl stop {unit}.service 2>/dev/null; systemctl reset-failed {unit}.service 2>/dev/null
{canary} || exit 1
if ( {wait} ); then healthy=yes; else healthy=no; fi
systemctl stop {unit}.service 2>/dev/null
[ "$healthy" = yes ] || exit 1
echo {q(digest)} > {q(stamp)} && chown root:{q(paths.app)} {q(stamp)} && chmod 640 {q(stamp)}
""".strip()


def activate_release(paths: AppPaths, *, release_id: str, previous: str | None, command: str,
                     undo: str, reload_units: bool, gate: str, back_gate: str) -> str:
    """Install the staged files, point `current` at the release, activate, gate;
    on a failed gate put everything back as it was and exit 1.

    One script on the host, so a host never stays half-activated because the
    controller moved on: the live files it replaces are kept in
    /etc/APP/previous, and a failed gate restores them, points `current` back
    at `previous`, applies that with `undo` and reports whether the old
    release is healthy again.
    """
    install, restore = [], []
    for name, (staged, live) in paths.staged.items():
        backup = q(f"{paths.previous_files}/{name}")
        install.append(f"if [ -e {q(live)} ]; then cp -p {q(live)} {backup}; fi")
        install.append(f"cp -p {q(staged)} {q(live + '.new')} && mv -f {q(live + '.new')} {q(live)}")
        restore.append(f"if [ -e {backup} ]; then cp -p {backup} {q(live)}; else rm -f {q(live)}; fi")
    daemon_reload = "systemctl daemon-reload" if reload_units else "true"
    switch_back = (switch_release(paths, previous) if previous and previous != release_id
                   else "true")
    went_back = f"releases/{previous}" if previous else "nothing (the first release: stopped)"
    # rollback=1 must never pick a release a gate rolled back from (unless it
    # is the one that ran before too: a config change on the same release)
    mark_failed = (f"echo \"$(date +%s) {release_id} failed\" >> {q(paths.root + '/history')}"
                   if previous != release_id else "true")
    return f"""
set -u
rm -rf {q(paths.previous_files)} && mkdir -p {q(paths.previous_files)} || exit 1
{chr(10).join(install)}
{switch_release(paths, release_id) if previous != release_id else "true"} || exit 1
{daemon_reload}
systemctl enable --quiet {q(paths.socket)} {q(paths.service)} && systemctl start {q(paths.socket)} || exit 1
if {command} && ( {gate} ); then echo "activated: {paths.app} runs releases/{release_id} and answers 200"; exit 0; fi
echo "rolling back {paths.app} to {went_back}" >&2
{chr(10).join(restore)}
{switch_back}
{mark_failed}
{daemon_reload}
{undo}
if [ -z {q(previous or "")} ]; then exit 1; fi
if ( {back_gate} ) 2>/dev/null; then
    echo "rolled back: {paths.app} runs releases/{previous} again and answers 200" >&2
else
    echo "rollback FAILED: {paths.app} on releases/{previous} does not answer 200 either" >&2
fi
exit 1
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


def releases_state(paths: AppPaths) -> str:
    """Report `current`, the activation history, each release's venv, and the venvs."""
    root = q(paths.root)
    return f"""
echo "current $(readlink {root}/current)"
sed 's/^/history /' {root}/history 2>/dev/null
for dir in {root}/releases/*/; do
    [ -d "$dir" ] && echo "release $(basename "$dir") $(readlink "$dir.venv")"
done
for dir in {root}/venvs/*/; do [ -d "$dir" ] && echo "venv $(basename "$dir")"; done
true
""".strip()


def switch_release(paths: AppPaths, release_id: str) -> str:
    """Point `current` at a release (atomically) and append it to the history."""
    return (f"{atomic_symlink(paths.current, f'releases/{release_id}')}"
            f" && echo \"$(date +%s) {release_id}\" >> {q(paths.root + '/history')}")


DEPLOY_LOCK = "/run/lock/asgi-fleet.deploy"


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


ACTIVATIONS_DIR = "/var/lib/asgi-fleet/activations"  # each app's last activation: when, and its status
ACTIVATION_LOGS = "/run/asgi-fleet"  # each app's last activation: what it said, root only
LOCK_MUTEX = "/run/lock/asgi-fleet.deploy.mutex"


def acquire_lock(owner: str, stale: str | None = None) -> str:
    """Create the host's deploy lock (noclobber: atomic), or print who holds
    it, which activation units still run, and the last words of each app's
    last activation. `stale`: a holder found gone, whose lock is replaced
    only if it is still exactly that one (under a mutex, so two runs that
    found it stale cannot both take it)."""
    lock = DEPLOY_LOCK
    replace = (f"[ \"$(cat {lock} 2>/dev/null)\" = {q(stale)} ] && rm -f {lock}; " if stale else "")
    return (
        f"mkdir -p /run/lock && exec 9>{LOCK_MUTEX} && flock -w 10 9 && {{ {replace}"
        f"( set -C; echo {q(owner)} > {lock} ) 2>/dev/null && echo acquired || {{ "
        f"echo \"held $(cat {lock})\"; "
        "systemctl list-units --no-legend --plain --state=activating,active "
        "'asgi-fleet-activate-*' 2>/dev/null | while read -r unit rest; do echo \"activating $unit\"; done; "
        f"for log in {ACTIVATION_LOGS}/*.log; do [ -s \"$log\" ] && "
        "echo \"last $(basename \"$log\" .log): $(tail -n1 \"$log\")\"; done; }; }; true"
    )


def release_lock(run_id: str) -> str:
    """Remove the deploy lock if this run holds it."""
    return (f"[ \"$(cut -d' ' -f1 {DEPLOY_LOCK} 2>/dev/null)\" = {q(run_id)} ]"
            f" && rm -f {DEPLOY_LOCK}; true")


def detached(paths: AppPaths, script: str) -> str:
    """Run an activation script as a transient systemd unit and wait for it.

    The unit belongs to systemd, not to the SSH or docker-exec session: a
    controller that dies mid-activation leaves a host that finishes, or rolls
    itself back, on its own. What it says goes to a log that outlives it
    (the next run's lock check reports its last line), then to stderr here.
    """
    unit, log = paths.activation_unit, f"{ACTIVATION_LOGS}/{paths.app}.log"
    record = q(paths.activation_record)
    # When it ran, kept across reboots: verify fails on journal alarms from
    # that window (the deploy caused them) and only warns about older ones.
    recorded = (f"started=$(date +%s)\n( {script}\n)\nrc=$?\n"
                f"mkdir -p {ACTIVATIONS_DIR} && echo \"$started $(date +%s) $rc\" > {record}.new"
                f" && mv -f {record}.new {record}\nexit $rc")
    return (f"mkdir -p -m 700 {ACTIVATION_LOGS} && systemctl reset-failed {unit} 2>/dev/null; "
            f"systemd-run --quiet --wait --collect --unit={unit} -p StandardOutput=truncate:{log} "
            f"-p StandardError=file:{log} /bin/sh -c {q(recorded)}; "
            f"rc=$?; cat {log} >&2; exit $rc")


def file_state(path: str) -> str:
    """One line: sha256, owner, group and octal mode of a file (empty if missing)."""
    return (f"[ -f {q(path)} ] && echo \"$(sha256sum < {q(path)} | cut -c1-64)"
            f" $(stat -c '%U %G %a' {q(path)})\" || true")
