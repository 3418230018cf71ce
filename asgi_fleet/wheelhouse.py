"""The wheelhouse: each lock's wheels, downloaded once per platform on the
controller and shipped to every host, which installs offline.

A host's platform is what its wheels must match: its Python (major.minor),
its machine and its glibc. Hosts on one Debian release share one; bookworm
and trixie are two. The controller downloads with its own pip and its own
pip configuration (PIP_INDEX_URL, pip.conf), never the hosts' pip_index_url:
hosts behind a firewall or air-gapped need no index at all. pip checks every
file against the lock's hashes twice: as it downloads, and on the host.

Wheelhouses are cached on the controller, keyed by lock and platform
(ASGI_FLEET_CACHE, else $XDG_CACHE_HOME/asgi-fleet, else ~/.cache/asgi-fleet),
so a second deploy, or a first provision of new hosts, downloads nothing.
One that a host will need is fetched in the background as soon as the deploy
knows it (`prefetch`), while the host installs its packages.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import gevent


# What a host's wheels must match, in one shell read that needs no python3
# (a bare host gets Debian's python3 later in the same run).
PLATFORM_PROBE = r"""
echo "machine $(uname -m)"
echo "glibc $(getconf GNU_LIBC_VERSION 2>/dev/null | cut -d' ' -f2)"
echo "debian $(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null)"
command -v python3 >/dev/null && echo "python $(python3 --version 2>&1 | cut -d' ' -f2)"
true
"""

# Debian's python3 per release: what a host without python3 yet will get.
DEBIAN_PYTHON = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}

OLDEST_MANYLINUX_GLIBC = 17  # manylinux2014 = manylinux_2_17: the oldest tag a wheel here may carry
VERSION_RE = re.compile(r"(\d+)\.(\d+)(\.\d+)?", re.ASCII)
MACHINE_RE = re.compile(r"[a-z0-9_]{1,20}", re.ASCII)


class WheelhouseError(Exception):
    """A wheelhouse that cannot be made: the message says why and what to do."""


@dataclass(frozen=True)
class Platform:
    """What a host's wheels must match."""

    python: str  # the full version when python3 is there, else Debian's "3.11"
    machine: str  # uname -m: x86_64, aarch64
    glibc: str  # "2.36"

    @property
    def python_minor(self) -> str:
        return ".".join(self.python.split(".")[:2])

    @property
    def abi(self) -> str:
        return "cp" + self.python_minor.replace(".", "")

    @property
    def key(self) -> str:
        return f"{self.abi}-manylinux_{self.glibc.replace('.', '_')}_{self.machine}"

    def manylinux_tags(self) -> list[str]:
        """Every manylinux tag this glibc runs, newest first (PEP 600), and the
        legacy aliases of the oldest (PEP 599, 571, 513)."""
        major, minor = (int(part) for part in self.glibc.split("."))
        tags = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, OLDEST_MANYLINUX_GLIBC - 1, -1)]
        return tags + [f"manylinux{alias}_{self.machine}" for alias in ("2014", "2010", "1")]

    def pip_download_options(self) -> list[str]:
        options = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.python_minor,
                   "--abi", self.abi]
        for tag in self.manylinux_tags():
            options += ["--platform", tag]
        return options

    def marker_environment(self) -> dict[str, str]:
        """PEP 508's environment on the host, for the lock's markers."""
        full = self.python if self.python.count(".") == 2 else f"{self.python_minor}.0"
        return {"implementation_name": "cpython", "implementation_version": full, "os_name": "posix",
                "platform_machine": self.machine, "platform_python_implementation": "CPython",
                "platform_release": "", "platform_system": "Linux", "platform_version": "",
                "python_full_version": full, "python_version": self.python_minor, "sys_platform": "linux"}


def has_python3(lines: list[str]) -> bool:
    """Whether PLATFORM_PROBE found python3 on the host."""
    return any(line.strip().startswith("python ") for line in lines)


def parse_platform(lines: list[str], where: str) -> Platform:
    """PLATFORM_PROBE's lines (other lines are ignored) as a Platform, or an
    error that says what is missing."""
    found = {}
    for line in lines:
        key, _, value = line.strip().partition(" ")
        if key in ("machine", "glibc", "debian", "python"):
            found[key] = value.strip()
    machine, glibc = found.get("machine", ""), found.get("glibc", "")
    python = found.get("python") or DEBIAN_PYTHON.get(found.get("debian", ""), "")
    if not MACHINE_RE.fullmatch(machine) or not re.fullmatch(r"\d+\.\d+", glibc):
        raise WheelhouseError(f"{where}: wheelhouse: cannot tell the host's platform (uname -m {machine!r}, "
                              f"glibc {glibc!r}); set wheelhouse=False to install from its package index")
    if not VERSION_RE.fullmatch(python):
        raise WheelhouseError(
            f"{where}: wheelhouse: the host has no python3 yet, and Debian {found.get('debian')!r} is not "
            f"one whose python3 asgi-fleet knows ({', '.join(sorted(DEBIAN_PYTHON))}); install python3 "
            "first, or set wheelhouse=False to install from its package index")
    return Platform(python, machine, glibc)


def requirements_for(lock_text: str, platform: Platform) -> str:
    """The lock's requirements that apply on `platform` (their markers
    evaluated for the host, not for the controller, then dropped), each with
    its hashes: what pip on the controller downloads for the host."""
    # here, not at the top: only a download needs it, and it is a tenth of a no-op's imports
    from packaging.markers import InvalidMarker
    from packaging.requirements import InvalidRequirement, Requirement

    environment = platform.marker_environment()
    logical, kept = [], []
    for raw in lock_text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("--hash") else raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        logical.append(line.rstrip("\\").strip())
        if line.endswith("\\"):
            continue
        text, logical = " ".join(logical), []
        if text.startswith("-"):
            continue  # the hosts' options (an index, say) are not the controller's
        requirement, _, hashes = text.partition(" --hash=")
        try:
            parsed = Requirement(requirement.strip())
        except (InvalidRequirement, InvalidMarker) as error:
            raise WheelhouseError(f"wheelhouse: cannot read {requirement.strip()!r} in the lock: {error}")
        if parsed.marker is not None and not parsed.marker.evaluate(environment):
            continue
        parsed.marker = None
        kept.append(f"{parsed} --hash={hashes}" if hashes else str(parsed))
    return "\n".join(kept) + "\n"


# The downloads prefetch started, by wheelhouse key, and how each failed.
_FETCHING: dict[str, threading.Thread] = {}
_FAILED: dict[str, WheelhouseError] = {}


def cache_root() -> Path:
    if os.environ.get("ASGI_FLEET_CACHE"):
        return Path(os.environ["ASGI_FLEET_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "asgi-fleet"


@dataclass(frozen=True)
class Wheelhouse:
    """The wheels of one lock for one platform."""

    lock: Path
    platform: Platform

    @property
    def key(self) -> str:
        digest = hashlib.sha256(self.lock.read_bytes()).hexdigest()
        return f"{digest[:16]}-{self.platform.key}"

    @property
    def directory(self) -> Path:
        return cache_root() / "wheelhouse" / self.key

    def tarball(self) -> Path:
        """The wheels as one tar file (wheels are compressed already): from
        the cache, else from the download prefetch started (waited for, the
        other hosts' work going on meanwhile), else downloaded now, once."""
        tar = self.directory / "wheels.tar"
        fetching = _FETCHING.get(self.key)
        while fetching is not None and fetching.is_alive():
            gevent.sleep(0.05)
        if self.key in _FAILED:
            raise _FAILED[self.key]
        if tar.exists():
            return tar
        self.download()
        return tar

    def prefetch(self) -> None:
        """Start downloading, in a thread of this process, a wheelhouse not in
        the cache (once per key): tarball() takes it from there."""
        if self.key in _FETCHING or (self.directory / "wheels.tar").exists():
            return

        def fetch() -> None:
            try:
                self.download()
            except WheelhouseError as error:
                _FAILED[self.key] = error
            except Exception as error:  # noqa: BLE001 - tarball() reports it, on the host that needs it
                _FAILED[self.key] = WheelhouseError(f"wheelhouse for {self.lock.name} on "
                                                    f"{self.platform.key}: {error}")

        _FETCHING[self.key] = threading.Thread(target=fetch, name=f"wheelhouse {self.key}")
        _FETCHING[self.key].start()

    def download(self) -> None:
        parent = self.directory.parent
        parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{self.key}-", dir=parent))
        try:
            wanted = work / "requirements.txt"
            wanted.write_text(requirements_for(self.lock.read_text(), self.platform))
            wheels = work / "wheels"
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--no-input",
                 "--disable-pip-version-check", "--progress-bar", "off", "--dest", str(wheels),
                 "-r", str(wanted), *self.platform.pip_download_options()],
                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800)
            if done.returncode != 0:
                why = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-3:]
                raise WheelhouseError(
                    f"wheelhouse for {self.lock.name} on {self.platform.key}: pip download failed "
                    f"({' / '.join(why)}); a package with no wheel for this platform needs one built "
                    "(or set wheelhouse=False, and each host builds from its package index)")
            names = sorted(p.name for p in wheels.iterdir())
            pack(wheels, names, work / "wheels.tar")
            (work / "wheels.json").write_text(json.dumps({
                "lock": self.lock.name, "platform": self.platform.key, "wheels": {
                    name: hashlib.sha256((wheels / name).read_bytes()).hexdigest() for name in names}},
                indent=1, sort_keys=True) + "\n")
            shutil.rmtree(wheels)
            try:
                os.rename(work, self.directory)  # whole or not at all; another run may have won
            except OSError:
                if not (self.directory / "wheels.tar").exists():
                    raise
            else:
                work = None
                with open(parent / "downloads.log", "a") as log:  # what the bench counts
                    log.write(f"{int(time.time())} {self.key} {len(names)} wheels "
                              f"{time.monotonic() - started:.1f}s\n")
        finally:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)


def pack(directory: Path, names: list[str], target: Path) -> None:
    """An uncompressed tar of `names`, the same bytes for the same wheels."""
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            data = (directory / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
