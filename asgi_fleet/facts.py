"""Custom pyinfra facts: what asgi-fleet reads off a host."""

from __future__ import annotations

import json

from pyinfra.api import FactBase

from asgi_fleet import commands
from asgi_fleet.agent_state import HostState, agent_command
from asgi_fleet.sizing import RESOURCES_PROBE, HostResources, parse_resources


class HostResourcesFact(FactBase):
    """Usable CPUs (online, affinity, cgroup quota) and memory (with cgroup limit)."""

    def command(self):
        return RESOURCES_PROBE

    def process(self, output) -> HostResources:
        return parse_resources("\n".join(output))


class ForeignNames(FactBase):
    """What the host has by an app's names that asgi-fleet did not create
    (an empty list: nothing, or all of it is asgi-fleet's own)."""

    def command(self, paths):
        return commands.foreign_names(paths)

    def process(self, output):
        lines = [line.strip() for line in output if line.strip()]
        return [] if lines == ["ours"] else lines


class AgentState(FactBase):
    """What the agent's `state` reads for a request (asgi_fleet/onhost/agent.py),
    in one round trip; None before python3 is there."""

    def command(self, request: str):
        return agent_command("state", json.loads(request))

    def process(self, output) -> HostState | None:
        return HostState.parse("\n".join(output))
