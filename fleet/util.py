"""Small helpers shared by the build and host commands: paths, running commands, timing."""

import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

#: Repository root (this file is <repo>/fleet/util.py), so the commands work from any cwd.
REPO = Path(__file__).resolve().parent.parent
#: Controller-side state: SSH key pair, known_hosts, ssh_config. Git-ignored.
STATE_DIR = REPO / ".fleet"
SSH_KEY = STATE_DIR / "id_ed25519"
KNOWN_HOSTS = STATE_DIR / "known_hosts"
SSH_CONFIG = STATE_DIR / "ssh_config"


class FleetError(Exception):
    """A step failed; __main__ prints it and exits non-zero."""


def log(msg: str) -> None:
    # One write per line: print() writes the newline separately, and the image
    # builds log from two threads.
    sys.stdout.write(f"[fleet] {msg}\n")
    sys.stdout.flush()


def run(cmd, *, check=True, capture=False, input=None, timeout=None, quiet=False):
    """Run a command (list of args); raise FleetError with its output on failure.

    capture=True returns stdout as text; otherwise output goes to our terminal so
    long steps (debootstrap, apt) show progress.
    """
    if not quiet:
        log("$ " + shlex.join(str(c) for c in cmd))
    try:
        proc = subprocess.run(
            [str(c) for c in cmd],
            input=input,
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise FleetError(f"timed out after {timeout}s: {shlex.join(map(str, cmd))}") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or "").strip() if capture else ""
        raise FleetError(
            f"exit {proc.returncode}: {shlex.join(map(str, cmd))}" + (f"\n{detail}" if detail else "")
        )
    return proc.stdout if capture else proc.returncode


def ok(cmd, timeout=30) -> bool:
    """True if the command exits 0 (output discarded); for probes and polling."""
    try:
        return subprocess.run(
            [str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=timeout,
        ).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@contextmanager
def timed(what: str):
    """Log how long a step took (the brief asks for timings of build and up)."""
    start = time.monotonic()
    try:
        yield
    finally:
        log(f"{what}: {time.monotonic() - start:.1f}s" + (" (failed)" if sys.exc_info()[0] else ""))
