"""App secrets: resolved on the controller, never shown.

A secret's setting names where its value comes from, never the value:
`app_secrets = {"API_TOKEN": "env:SHOP_API_TOKEN", "DB_PASSWORD": "file:~/.secrets/db"}`
(an environment variable of the controller, or a file kept out of git). The
values land in /etc/APP/secrets (root:APP, 0640); gunicorn.conf.py loads them
into the master's environment each time it is read, so a change goes live
with a reload and workers inherit them. They are not gunicorn settings, so
gunicorn never logs them, and every object here that holds one prints as
"<redacted>".
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

SOURCE_RE = re.compile(r"^(env|file):(.+)$")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Redacted(bytes):
    """Secret bytes that never show in a repr, a log line or a traceback."""

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__


def source_problems(secrets) -> list[str]:
    """What is wrong with app_secrets, without ever reading or printing a value."""
    allowed = ('must be a dict of NAME: "env:VARIABLE" or "file:/path", '
               "NAME made of letters, digits and _")
    if not isinstance(secrets, dict):
        return [allowed]
    problems = []
    for name, source in secrets.items():
        match = SOURCE_RE.match(source) if isinstance(source, str) else None
        if not isinstance(name, str) or not NAME_RE.match(name) or not match:
            problems.append(f"{name!r}: {allowed}")
        elif match.group(1) == "env" and match.group(2) not in os.environ:
            problems.append(f"{name}: the controller has no environment variable {match.group(2)}")
        elif match.group(1) == "file" and not Path(match.group(2)).expanduser().is_file():
            problems.append(f"{name}: the controller has no file {match.group(2)}")
    return problems


def _value(source: str) -> str:
    kind, where = SOURCE_RE.match(source).groups()
    if kind == "env":
        return os.environ[where]
    return Path(where).expanduser().read_text().rstrip("\n")


def secrets_file(secrets: dict[str, str]) -> Redacted:
    """The content of /etc/APP/secrets: NAME=value lines, sorted."""
    lines = []
    for name in sorted(secrets):
        value = _value(secrets[name])
        if not value.isprintable():  # the value itself is never shown
            raise ValueError(f"secret {name}: must be printable text on one line, without a "
                             "newline, carriage return, NUL or other control character")
        lines.append(f"{name}={value}\n")
    return Redacted("".join(lines).encode())


def digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()
