"""Shell commands that asgi-fleet runs on hosts, built by pure functions.

Building a command is kept apart from running it (pyinfra operations in
operations.py run these), so each can be unit-tested without a host.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

q = shlex.quote


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
    def env_file(self) -> str:
        return f"{self.etc}/env"

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


def venv_state(venv: str) -> str:
    """Three lines: the lock digest and dists digest recorded at build, the dists digest now."""
    return (f"{{ cat {q(venv + '/' + VENV_MARKER)} 2>/dev/null || printf '\\n\\n'; }} | head -n2; "
            + installed_dists_digest(venv))


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


def wait_healthy(bind: str, path: str, deadline: int, service: str, journal_lines: int = 30) -> str:
    """Poll until GET answers 200; past the deadline fail with the unit's journal.

    The unit's start time bounds the journal so the operator reads this start's
    failure, not an older one.
    """
    args = " ".join(q(a) for a in curl_args(bind, path))
    url = q(curl_args(bind, path)[-1])
    return f"""
end=$(( $(date +%s) + {deadline} )); code=000
while :; do
    code=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 {args}) || true
    [ "$code" = 200 ] && exit 0
    [ "$(date +%s)" -ge "$end" ] && break
    sleep 0.5
done
echo "health gate failed: GET {url} answered ${{code}} (want 200) within {deadline}s." >&2
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
    ca_bundle: str | None = None,
) -> str:
    """Create a virtualenv in place and install a hash-locked requirements file.

    It is built where it will live (scripts carry the venv path in their
    shebang, so it cannot be moved), and marked complete only at the end. A
    half-built venv from an interrupted run has no marker and is rebuilt.
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
        f"{{ sha256sum {q(lock)} | cut -c1-64; {installed_dists_digest(venv)}; }}"
        f" > {q(venv + '/' + VENV_MARKER)}",
    ])


def unpack_release(release_dir: str, tarball: str, release_id: str, venv_dir: str) -> str:
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
        f"chown -R root:root {q(tmp)}",
        f"chmod -R u=rwX,go=rX {q(tmp)}",
        f"mv -T {q(tmp)} {q(release_dir)}",
        f"rm -f {q(tarball)}",
    ])


def running_master(service: str) -> str:
    """Report the unit's main PID, its virtualenv and each worker's cwd.

    The master's virtualenv is the one whose site-packages its memory maps
    (setproctitle's extension is always loaded): its command line is
    rewritten by setproctitle and its exe is the system python. A worker's cwd
    is the release it imported, since gunicorn chdirs to `current` and the
    kernel resolves the link.
    """
    return f"""
pid=$(systemctl show -p MainPID --value {q(service)} 2>/dev/null)
[ -n "$pid" ] && [ "$pid" -gt 0 ] || exit 0
echo "pid $pid"
echo "site $(grep -o '/[^ ]*/site-packages/' /proc/$pid/maps | head -n1)"
for child in $(cat /proc/$pid/task/*/children 2>/dev/null); do
    echo "worker $child $(readlink /proc/$child/cwd)"
done
""".strip()
