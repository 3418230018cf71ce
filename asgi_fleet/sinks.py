"""Quoting for each place a setting lands, in one place.

Settings are first validated by allow-lists (settings.py); what may still hold
any character (app_env values) is encoded here for its sink, so that what the
app, systemd or gunicorn reads back is exactly the value that was set.
"""

from __future__ import annotations

import shlex

shell = shlex.quote  # an argument of a command run by sh on a host


def command(*argv: str) -> str:
    """One command line for sh on a host, from its words."""
    return shlex.join(argv)


def commands_in_order(*argvs: list[str]) -> str:
    """Commands for sh on a host, each run only if the one before succeeded."""
    return " && ".join(command(*argv) for argv in argvs)


def python(value: str | int | bool | None) -> str:
    """A literal in a Python file (gunicorn.conf.py) that evaluates to `value`."""
    return repr(value)


# What a backslash must precede inside double quotes in a systemd
# EnvironmentFile (systemd's env-file parser, SHELL_NEED_ESCAPE).
_ENV_FILE_ESCAPED = '"\\`$'


def env_file_value(value: str) -> str:
    """A value in a systemd EnvironmentFile, double-quoted and escaped so
    that systemd reads back exactly `value` (settings.py refuses newlines and
    other control characters, which such a file cannot hold)."""
    return '"' + "".join("\\" + c if c in _ENV_FILE_ESCAPED else c for c in value) + '"'


# Every template's filters, {{ app.app_module | py }}: the deploy's renderer
# (tasks.render_template) and the Ansible bench (bench/ansible/filter_plugins)
# register these same functions.
TEMPLATE_FILTERS = {"py": python, "env_value": env_file_value}


def prometheus_label(value: str) -> str:
    """A label value in Prometheus' text exposition format, quotes included."""
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return f'"{escaped}"'
