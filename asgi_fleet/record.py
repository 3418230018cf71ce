"""The deploy's own record of a run, as JSON, for people and tests.

pyinfra prints its results for a person to read; tests and tools need them as
data ("did the second run change anything?", "which host failed?"). A state
callback writes, after every operation on every host, which operations ran,
changed or failed, and what each app was planned and activated with.

The file is .asgi-fleet/last-run.json, or $ASGI_FLEET_RECORD.
"""

from __future__ import annotations

import atexit
import getpass
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import gevent
from pyinfra import logger
from pyinfra.api.state import BaseStateCallback

from asgi_fleet.agent_state import agent_command, lock_request
from asgi_fleet.rollout import SUMMARY_COLUMNS, summary_rows


def record_path() -> Path:
    return Path(os.environ.get("ASGI_FLEET_RECORD") or Path.cwd() / ".asgi-fleet" / "last-run.json")


def dry_run() -> bool:
    """Whether pyinfra runs with --dry. pyinfra keeps the option out of its
    state, and the deploy runs in a greenlet of its own, outside click's
    context: the command line says it (a flag, never a value: --data
    takes key=value)."""
    return "--dry" in sys.argv[1:]


class RunRecord(BaseStateCallback):
    def __init__(self, path: Path, dry: bool = False):
        self.path = path
        self.dry = dry  # --dry: the plan is printed, the last run's record left alone
        self.hosts: dict[str, dict[str, Any]] = {}
        self.rollout: dict[str, Any] = {"batches": [], "halted": None}
        self.steps: dict[tuple[str, str], dict[str, Any]] = {}  # (op name, host) -> app entry
        self.run_id = uuid.uuid4().hex[:12]
        self.lock_owner = f"{self.run_id} {socket.gethostname()} {os.getpid()} {int(time.time())}"
        self.by = f"{getpass.getuser()}@{socket.gethostname()}"  # who deploys, for the hosts' history

    def host(self, name: str) -> dict[str, Any]:
        return self.hosts.setdefault(name, {"status": "pending", "ops": [], "apps": {}})

    def for_host(self, name: str) -> HostRecord:
        return HostRecord(self, name)

    # What the rollout reads back (rollout.Rollout) and tells.
    def _app(self, host_name: str, app: str) -> dict[str, Any]:
        """A host's app entry, read only (a host outside the run has none)."""
        return self.hosts.get(host_name, {}).get("apps", {}).get(app, {})

    def activation(self, host_name: str, app: str) -> str | None:
        """The activation a host's app was planned with (None: not known)."""
        return self._app(host_name, app).get("activation")

    def health(self, host_name: str, app: str) -> str | None:
        """How a host's app came out of this run's activation (None: not yet, or not in the run)."""
        return self._app(host_name, app).get("health")

    def halted(self, reason: str | None) -> None:
        if reason and not self.rollout["halted"]:
            self.rollout["halted"] = reason
            logger.warning(f"--> Rollout stopped: {reason}. Hosts not yet activated keep their release.")
            self.write()

    def write(self) -> None:
        if self.dry:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "hosts": self.hosts,
                                   "rollout": self.rollout}, indent=2, sort_keys=True))
        os.replace(tmp, self.path)

    def summary(self) -> str:
        """The table printed when the run ends: one row per host and app."""
        from asgi_fleet.verify import format_table

        rows = summary_rows(self.hosts)
        lines = format_table([list(SUMMARY_COLUMNS), *rows]) if rows else []
        if self.rollout["halted"]:
            lines.append(f"rollout stopped: {self.rollout['halted']}")
        for name, entry in self.hosts.items():
            for app, info in entry["apps"].items():
                if info.get("cause"):
                    lines.append(f"{name} {app}: {info.get('step', 'failed')}:")
                    lines += [f"    {line}" for line in info["cause"]]
        heading = ("--> asgi-fleet plan (--dry: what a run would activate; nothing changed, "
                   f"{self.path} left alone)" if self.dry else f"--> asgi-fleet summary ({self.path})")
        return "\n".join(["", heading, *lines])

    # Rolling activation steps: timing, progress lines, outcome and cause.
    def operation_host_start(self, state, host, op_hash):
        for step in self._steps(state, host, op_hash):
            step["started"] = time.time()
            logger.info(f"    [{host.name}] {step['step']}: started")

    def operation_host_success(self, state, host, op_hash, retry_count=0):
        self._step_done(state, host, op_hash, ok=True)

    def _step_done(self, state, host, op_hash, ok: bool):
        for step in self._steps(state, host, op_hash):
            step["ended"] = time.time()
            step["seconds"] = round(step["ended"] - step.get("started", step["ended"]), 2)
            logger.info(f"    [{host.name}] {step['step']}: {'done' if ok else 'FAILED'}"
                        f" ({step.get('activation', '?')}, {step['seconds']:.1f} s)")

    def _steps(self, state, host, op_hash):
        names = {name.rpartition(" | ")[2] for name in state.get_op_meta(op_hash).names}
        return [self.steps[(name, host.name)] for name in names if (name, host.name) in self.steps]

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
                for step in self._steps(state, host, op_hash):  # a timeout leaves no words
                    step.setdefault("health", "unreachable")
                    step.setdefault("cause", ["no answer from the host in time"])
            elif entry["status"] == "pending":
                entry["status"] = "ok"
        self.write()

    def operation_host_error(self, state, host, op_hash, retry_count=0, max_retries=0):
        entry = self.host(host.name)
        entry["status"] = "failed"
        entry["failed_op"] = sorted(state.get_op_meta(op_hash).names)[0]
        self._step_done(state, host, op_hash, ok=False)
        self.write()
        # A failed host runs no more operations: give its deploy lock back now
        # (bounded: the host may be the one that stopped answering).
        try:
            with gevent.Timeout(15, TimeoutError):
                host.run_shell_command(agent_command("lock", lock_request("give", run_id=self.run_id)),
                                       _sudo=bool(host.data.get("_sudo")), _timeout=15)
        except Exception as error:  # noqa: BLE001 - the run goes on; the lock message names the path
            logger.warning(f"{host.name}: could not give the deploy lock back: {error}")

    def host_connect_error(self, state, host, error):
        self.host(host.name).update(status="unreachable", error=str(error))
        self.write()


class HostRecord:
    """The part of the record that belongs to one host's deploy."""

    def __init__(self, run: RunRecord, host_name: str):
        self.entry = run.host(host_name)
        self.run = run
        self.host_name = host_name

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

    def app_step(self, plan, step: str, batch: int) -> dict[str, Any]:
        """This app's entry, tracked as the rollout step `step` of batch `batch`."""
        app = self.app(plan)
        app.update(step=step, batch=batch)
        self.run.steps[(step, self.host_name)] = app
        return app


def start_record(state, app_hosts: list[str], batches: list[list[str]], budget: int,
                 targeted: list[str]) -> RunRecord:
    """The run's record, with every host of the run (even one that never
    connected). Its summary is printed when the run ends, however it ends."""
    run = RunRecord(record_path(), dry=dry_run())
    run.rollout.update(batches=batches, failure_budget=budget, targeted=targeted)
    state.add_callback_handler(run)
    # On stderr, with pyinfra's own progress: stdout is pyinfra's (--json)
    atexit.register(lambda: print(run.summary(), file=sys.stderr, flush=True))
    for other in state.inventory:
        if not state.is_host_in_limit(other):
            continue
        run.host(other.name)
        if other.name not in app_hosts:
            run.host(other.name)["role"] = "lb"
        if other in state.failed_hosts:  # connecting comes before the deploy file runs
            run.host(other.name)["status"] = "unreachable"
    run.write()
    return run
