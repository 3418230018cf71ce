"""Custom pyinfra facts: what asgi-fleet reads off a host."""

from __future__ import annotations

import json

from pyinfra.api import FactBase

from asgi_fleet import commands
from asgi_fleet.agent_state import HostState, agent_command
from asgi_fleet.sizing import RESOURCES_PROBE, HostResources, parse_resources
from asgi_fleet.wheelhouse import PLATFORM_PROBE


class BeforePlanning(FactBase):
    """What the deploy reads before it plans, in one shell read (python3, and
    so the agent, may not be there yet): the host's usable CPUs and memory,
    what its wheels must match (asgi_fleet.wheelhouse.parse_platform reads
    those lines), and per app what the host has by its names that asgi-fleet
    did not create."""

    def command(self, apps: tuple[commands.AppPaths, ...]):
        return commands.before_planning(RESOURCES_PROBE.rstrip() + PLATFORM_PROBE, apps)

    def process(self, output) -> tuple[HostResources, list[str], dict[str, list[str]]]:
        probed, foreign = commands.parse_before_planning(output)
        return parse_resources("\n".join(probed)), probed, foreign


class AgentState(FactBase):
    """What the agent's `state` reads for a request (asgi_fleet/onhost/agent.py),
    in one round trip; None before python3 is there. Without `install`, the
    agent is not installed to answer (a read before the run executes)."""

    def command(self, request: str, install: bool = True):
        return agent_command("state", json.loads(request), install=install)

    def process(self, output) -> HostState | None:
        return HostState.parse("\n".join(output))
