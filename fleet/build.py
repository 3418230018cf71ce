"""Build the host images asgi-fleet-host:<dist>.

A base Debian rootfs comes from `docker pull debian:<dist>` where a registry is
reachable, else from `debootstrap --variant=minbase` + `docker import` (this
controller has no registry, only the Debian mirror).  fleet/image-setup.sh then
turns the base into a bare server (systemd, sshd, sudo, CA trust, user deploy)
inside a throw-away container, which is committed, verified and only then
tagged: a half-built or wrong image never carries the final name, so re-runs
are safe.  Each image carries the digest of what it was built from (this
file's lists and image-setup.sh): `build` without --rebuild trusts an
existing image only when that digest is still today's.
"""

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .hosts import DEPLOY_USER, DISTS, IMAGE_PATTERN
from .util import FleetError, log, ok, run, timed

MIRROR = "http://deb.debian.org/debian"
CONTROLLER_CA = Path("/etc/ssl/certs/ca-certificates.crt")
SETUP_SCRIPT = Path(__file__).with_name("image-setup.sh")

REQUIRED = ("systemd", "systemd-sysv", "dbus", "openssh-server", "sudo", "ca-certificates")
# The deploy must install these itself.  (procps is not on this list: it is a
# hard dependency of openssh-server on bookworm and trixie, so it is always there.)
FORBIDDEN = ("python3", "curl", "wget")

# Image config for systemd as PID 1.  (docker 20.10's commit cannot set
# STOPSIGNAL; `fleet up` passes --stop-signal SIGRTMIN+3 instead.)
COMMIT_CHANGES = (
    'CMD ["/sbin/init"]',
    "ENV container=docker",
    "LABEL asgi-fleet.image=1",
)
INPUTS_LABEL = "asgi-fleet.image-inputs"


def inputs_digest() -> str:
    """What an image is built from: a change to any of it means a rebuild."""
    inputs = json.dumps([REQUIRED, FORBIDDEN, COMMIT_CHANGES, DEPLOY_USER, MIRROR]).encode()
    return hashlib.sha256(inputs + SETUP_SCRIPT.read_bytes()).hexdigest()[:16]


def image_inputs(ref: str):
    """The inputs digest an existing image was built from ("" if unlabelled), or None if absent."""
    out = run(["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", ref],
              check=False, capture=True, quiet=True).strip()
    if not out:
        return None
    return (json.loads(out) or {}).get(INPUTS_LABEL, "")


def build(dists=None, rebuild=False) -> None:
    if not CONTROLLER_CA.is_file():
        raise FleetError(f"{CONTROLLER_CA} missing: test hosts must trust the controller's CAs")
    todo = []
    for dist in dists or DISTS:
        image = IMAGE_PATTERN.format(dist=dist)
        built_from = image_inputs(image)
        if built_from == inputs_digest() and not rebuild:
            log(f"{image} exists, built from today's inputs, skipping (use --rebuild to rebuild)")
            continue
        if built_from is not None and not rebuild:
            log(f"{image} was built from other inputs ({built_from or 'unlabelled'}): rebuilding")
        todo.append((dist, image))
    if not todo:
        return
    # Side by side: each build waits mostly on the Debian mirror and on dpkg's
    # fsyncs, so the two took 70 s together against 100 s one after the other.
    # Every name a build uses carries its dist, so they cannot collide.
    with timed(f"build {', '.join(image for _, image in todo)}"):
        with ThreadPoolExecutor(max_workers=len(todo)) as pool:
            builds = [pool.submit(timed_build, dist, image) for dist, image in todo]
        failed = [str(b.exception()) for b in builds if b.exception()]
    if failed:
        raise FleetError("\n".join(failed))


def timed_build(dist: str, image: str) -> None:
    with timed(f"build {image}"):
        build_one(dist, image)


def build_one(dist: str, image: str) -> None:
    base, imported = base_image(dist)
    candidate = f"{image}-candidate"
    workname = f"asgi-fleet-build-{dist}"
    run(["docker", "rm", "-f", workname], check=False, capture=True, quiet=True)
    try:
        with timed(f"{dist}: setup in container"):
            run(["docker", "create", "--name", workname, base,
                 "/bin/bash", "/tmp/image-setup.sh", dist, DEPLOY_USER])
            run(["docker", "cp", SETUP_SCRIPT, f"{workname}:/tmp/image-setup.sh"])
            run(["docker", "cp", CONTROLLER_CA, f"{workname}:/tmp/controller-ca.crt"])
            run(["docker", "start", "--attach", workname])
            code = run(["docker", "inspect", "-f", "{{.State.ExitCode}}", workname],
                       capture=True, quiet=True).strip()
            if code != "0":
                raise FleetError(f"image-setup.sh failed in {workname} (exit {code})")
            labels = COMMIT_CHANGES + (f"LABEL {INPUTS_LABEL}={inputs_digest()}",)
            changes = [a for c in labels for a in ("--change", c)]
            run(["docker", "commit", *changes, workname, candidate])
        with timed(f"{dist}: verify"):
            verify(candidate, dist)
        old = run(["docker", "image", "inspect", "-f", "{{.Id}}", image], check=False,
                  capture=True, quiet=True).strip()
        run(["docker", "tag", candidate, image])
        if old:  # the replaced image; stays if a container still uses it
            run(["docker", "rmi", old], check=False, capture=True, quiet=True)
        size = run(["docker", "image", "inspect", "-f", "{{.Size}}", image], capture=True, quiet=True)
        log(f"built {image} ({int(size) / 1e6:.0f} MB)")
    finally:
        run(["docker", "rm", "-f", workname], check=False, capture=True, quiet=True)
        run(["docker", "rmi", candidate], check=False, capture=True, quiet=True)
        if imported:
            run(["docker", "rmi", base], check=False, capture=True, quiet=True)


def base_image(dist: str):
    """Return (image ref, imported?) of a plain Debian rootfs for dist."""
    official = f"debian:{dist}"
    with timed(f"{dist}: docker pull"):
        pulled = ok(["docker", "pull", official], timeout=300)
    if pulled:
        return official, False
    log(f"docker pull {official} failed; falling back to debootstrap from {MIRROR}")
    ref = f"asgi-fleet-base:{dist}"
    rootfs = Path(tempfile.mkdtemp(prefix=f"asgi-fleet-rootfs-{dist}-", dir="/var/tmp"))
    try:
        with timed(f"{dist}: debootstrap"):
            run(["debootstrap", "--variant=minbase", dist, rootfs, MIRROR])
        with timed(f"{dist}: docker import"):
            tar = subprocess.Popen(["tar", "--numeric-owner", "-C", rootfs, "-c", "."],
                                   stdout=subprocess.PIPE)
            imp = subprocess.run(["docker", "import", "-", ref], stdin=tar.stdout)
            tar.stdout.close()
            if tar.wait() != 0 or imp.returncode != 0:
                raise FleetError(f"tar | docker import {ref} failed")
    finally:
        remove_rootfs(rootfs)
    return ref, True


def remove_rootfs(rootfs: Path) -> None:
    """Delete the debootstrap tree, first unmounting anything an aborted run left mounted
    inside it (rmtree must never descend into a bind-mounted /proc, /sys or /dev)."""
    prefix = str(rootfs) + "/"
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for mnt in sorted(mounts, key=len, reverse=True):
        run(["umount", "-l", mnt], check=False)
    with open("/proc/mounts") as f:
        if any(line.split()[1].startswith(prefix) for line in f):
            raise FleetError(f"{rootfs} still has mounts; not deleting it")
    shutil.rmtree(rootfs, ignore_errors=False)
    log(f"removed {rootfs}")


def pem_blocks(text: str) -> set:
    return set(re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S))


def verify(image: str, dist: str) -> None:
    """Fail unless the image is what the deploy expects to find on a fresh server."""
    script = (
        ". /etc/os-release; echo codename=$VERSION_CODENAME; "
        "dpkg-query -W -f='pkg=${Package} ${db:Status-Status}\\n' "
        + " ".join(REQUIRED + FORBIDDEN + ("procps",)) + " 2>/dev/null; "
        "id " + DEPLOY_USER + "; echo nopasswd-rules=$(sudo -l -U " + DEPLOY_USER + " | grep -c NOPASSWD); "
        "grep -h '^deb ' /etc/apt/sources.list; "
        "test -f /usr/local/share/ca-certificates/asgi-fleet-controller.crt && echo ca-file=ok; "
        "readlink -f /sbin/init"
    )
    out = run(["docker", "run", "--rm", "--entrypoint", "/bin/sh", image, "-c", script],
              capture=True, quiet=True)
    log(f"verify {image}:\n  " + "\n  ".join(out.strip().splitlines()))
    status = dict(re.findall(r"^pkg=(\S+) (\S+)$", out, re.M))
    problems = [f"{p} not installed" for p in REQUIRED if status.get(p) != "installed"]
    problems += [f"{p} must not be installed" for p in FORBIDDEN if status.get(p) == "installed"]
    if f"codename={dist}" not in out:
        problems.append(f"not {dist}")
    if not re.search(r"^nopasswd-rules=[1-9]", out, re.M):
        problems.append(f"{DEPLOY_USER} has no NOPASSWD sudo rule")
    if f" {dist}-updates " not in out or f" {dist}-security " not in out:
        problems.append("apt sources lack -updates or -security")
    if "ca-file=ok" not in out:
        problems.append("controller CA file missing")
    if "/lib/systemd/systemd" not in out and "/usr/lib/systemd/systemd" not in out:
        problems.append("/sbin/init is not systemd")

    # The image's bundle must contain every certificate the controller trusts
    # (in particular the TLS proxy CA), or pip on the test hosts fails.
    image_bundle = run(["docker", "run", "--rm", "--entrypoint", "/bin/cat", image,
                        "/etc/ssl/certs/ca-certificates.crt"], capture=True, quiet=True)
    ours, theirs = pem_blocks(CONTROLLER_CA.read_text()), pem_blocks(image_bundle)
    log(f"CA bundle: controller {len(ours)} certs, image {len(theirs)} certs, "
        f"missing in image {len(ours - theirs)}")
    if ours - theirs:
        problems.append(f"{len(ours - theirs)} controller CA certs missing from image bundle")
    if problems:
        raise FleetError(f"{image} failed verification: " + "; ".join(problems))
