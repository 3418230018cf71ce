"""Custom pyinfra facts: what asgi-fleet reads off a host."""

from __future__ import annotations

from pyinfra.api import FactBase

from asgi_fleet import commands
from asgi_fleet.agent_state import HostState, agent_command, state_request
from asgi_fleet.sizing import RESOURCES_PROBE, HostResources, parse_resources


class HostResourcesFact(FactBase):
    """Usable CPUs (online, affinity, cgroup quota) and memory (with cgroup limit)."""

    def command(self):
        return RESOURCES_PROBE

    def process(self, output) -> HostResources:
        return parse_resources("\n".join(output))


class VenvState(FactBase):
    """(lock digest at build, dists digest at build, dists digest now, the
    first path the app could write or "") of a virtualenv."""

    def command(self, path, app):
        return commands.venv_state(path, app)

    def process(self, output):
        lines = [line.strip() for line in output] + ["", "", "", ""]
        return tuple(lines[:4])


class HealthStatus(FactBase):
    """The HTTP status of GET health_path through the app's socket ("000": none)."""

    def command(self, bind, path):
        return f"command -v curl >/dev/null || {{ echo 000; exit 0; }}; {commands.health_probe(bind, path)}"

    def process(self, output):
        return output[0].strip() if output else "000"


class FileContent(FactBase):
    """The first line of a small file, or None when it does not exist."""

    def command(self, path):
        return f"cat {commands.q(path)} 2>/dev/null || true"

    def process(self, output):
        return output[0].strip() if output else None


class FilesDigest(FactBase):
    """sha256 over the contents of some files."""

    def command(self, paths):
        return commands.files_digest(*paths)

    def process(self, output):
        return output[0].strip()


class ForeignNames(FactBase):
    """What the host has by an app's names that asgi-fleet did not create
    (an empty list: nothing, or all of it is asgi-fleet's own)."""

    def command(self, paths):
        return commands.foreign_names(paths)

    def process(self, output):
        lines = [line.strip() for line in output if line.strip()]
        return [] if lines == ["ours"] else lines


class LooseFiles(FactBase):
    """The first path in a tree with other owners or looser modes than
    root:GROUP, u=rwX,g=rX,o= (empty: none)."""

    def command(self, tree, group):
        return commands.loose_files(tree, group)

    def process(self, output):
        return output[0].strip() if output else ""


class FileState(FactBase):
    """"SHA256 OWNER GROUP MODE" of a file, or "" when it does not exist."""

    def command(self, path):
        return commands.file_state(path)

    def process(self, output):
        return output[0].strip() if output else ""


class FlagFiles(FactBase):
    """The names of the files in a directory (none when it does not exist)."""

    default = set

    def command(self, path):
        return f"ls -1 {commands.q(path)} 2>/dev/null || true"

    def process(self, output) -> set[str]:
        return {line.strip() for line in output if line.strip()}


class AgentState(FactBase):
    """Everything the activation decides on, for some apps, in one round trip:
    the agent's `state` (asgi_fleet/onhost/agent.py; None before python3 is there)."""

    def command(self, paths):
        return agent_command("state", state_request(list(paths)))

    def process(self, output) -> HostState | None:
        return HostState.parse("\n".join(output))
