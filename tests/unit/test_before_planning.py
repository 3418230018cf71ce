"""What the deploy reads before it plans (facts.BeforePlanning), run for real
on this machine's shell: its resources and the names an app would take."""

from __future__ import annotations

import subprocess

from asgi_fleet.commands import AppPaths, before_planning, parse_before_planning
from asgi_fleet.sizing import RESOURCES_PROBE, parse_resources


def read(*apps: str):
    script = before_planning(RESOURCES_PROBE, tuple(AppPaths(app, "/srv") for app in apps))
    run = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return parse_before_planning(run.stdout.splitlines())


def test_one_read_gives_the_resources_and_each_apps_foreign_names_apart():
    resources, foreign = read("root", "asgi-fleet-nobody-has-this")
    assert parse_resources("\n".join(resources)).usable_cpus >= 1
    # root is this machine's own user and group: asgi-fleet never made them
    assert "user root" in foreign["root"] and "group root" in foreign["root"]
    assert foreign["asgi-fleet-nobody-has-this"] == []
    assert not any(line.startswith(("user", "group", "path", "unit")) for line in resources)


def test_an_app_found_to_be_ours_ends_only_its_own_part():
    # "ours" exits early: in its subshell, so the next app is still read
    lines = ["online 2", "asgi-fleet names of a", "ours", "asgi-fleet names of b", "user b"]
    resources, foreign = parse_before_planning(lines)
    assert resources == ["online 2"] and foreign == {"a": [], "b": ["user b"]}
