"""The deploy's own record of a run, as JSON, for people and tests.

pyinfra prints its results for a person to read; tests and tools need them as
data ("did the second run change anything?", "which host failed?"). A state
callback writes, after every operation on every host, which operations ran,
changed or failed, and what each app was planned and activated with.

The file is .asgi-fleet/last-run.json, or $ASGI_FLEET_RECORD.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from pyinfra.api.state import BaseStateCallback

from asgi_fleet import commands
from asgi_fleet.settings import PROJECT_ROOT


def record_path() -> Path:
    return Path(os.environ.get("ASGI_FLEET_RECORD") or PROJECT_ROOT / ".asgi-fleet" / "last-run.json")


class RunRecord(BaseStateCallback):
    def __init__(self, path: Path):
        self.path = path
        self.hosts: dict[str, dict[str, Any]] = {}
        self.run_id = uuid.uuid4().hex[:12]
        self.lock_owner = f"{self.run_id} {socket.gethostname()} {os.getpid()} {int(time.time())}"

    def host(self, name: str) -> dict[str, Any]:
        return self.hosts.setdefault(name, {"status": "pending", "ops": [], "apps": {}})

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "hosts": self.hosts}, indent=2,
                                  sort_keys=True))
        os.replace(tmp, self.path)

    # pyinfra calls these with the state first. An op's result is complete only
    # once every host ran it, hence the recording in operation_end.
    def operation_end(self, state, op_hash):
        names = sorted(state.get_op_meta(op_hash).names)
        for host in state.inventory:
            try:
                meta = state.get_op_data_for_host(host, op_hash).operation_meta
            except KeyError:
                continue
            if not meta.is_complete():
                continue
            entry = self.host(host.name)
            success = meta.did_succeed()
            entry["ops"].append({"name": names[0] if names else op_hash, "success": success,
                                 "changed": meta.did_change()})
            if not success:
                entry["status"] = "failed"
            elif entry["status"] == "pending":
                entry["status"] = "ok"
        self.write()

    def operation_host_error(self, state, host, op_hash, retry_count=0, max_retries=0):
        entry = self.host(host.name)
        entry["status"] = "failed"
        entry["failed_op"] = sorted(state.get_op_meta(op_hash).names)[0]
        self.write()
        # A failed host runs no more operations: give its deploy lock back now.
        host.run_shell_command(commands.release_lock(self.run_id), _sudo=bool(host.data.get("_sudo")))

    def host_connect_error(self, state, host, error):
        self.host(host.name).update(status="unreachable", error=str(error))
        self.write()


class HostRecord:
    """The part of the record that belongs to one host's deploy."""

    def __init__(self, run: RunRecord, host_name: str):
        self.entry = run.host(host_name)
        self.run = run

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def lock_owner(self) -> str:
        return self.run.lock_owner

    def app(self, plan) -> dict[str, Any]:
        app = self.entry["apps"].setdefault(plan.paths.app, {})
        app.update(release=plan.release_id, venv=plan.venv_id)
        self.run.write()
        return app


def record_run(state, host) -> HostRecord:
    """The run's record (created with the first host), and this host's part of it."""
    run = getattr(state, "asgi_fleet_record", None)
    if run is None:
        run = state.asgi_fleet_record = RunRecord(record_path())
        state.add_callback_handler(run)
        for other in state.inventory:  # every host of the run, even one that never connected
            if not state.is_host_in_limit(other):
                continue
            run.host(other.name)
            if other in state.failed_hosts:  # connecting comes before the deploy file runs
                run.host(other.name)["status"] = "unreachable"
        run.write()
    return HostRecord(run, host.name)
