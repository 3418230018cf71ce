"""Rolling activation: batch by batch, in inventory order, behind the load balancer.

Every host of the run (app hosts and load balancers) calls `activate_batch`
for every batch, so each batch's operations form one step of pyinfra's
operation order: batch 2 starts only when batch 1 finished on every host.
A host outside the batch, or past a stopped rollout, has nothing to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import deploy

from asgi_fleet import operations, rollout
from asgi_fleet.activation import NONE
from asgi_fleet.settings import app_settings
from tasks import changed

LB_GROUP = "lb"  # the inventory group of load balancers
LB_FLAG_DIR = "/run/asgi-fleet-lb"  # drain flags (templates/nginx-lb.conf.j2)


def is_lb(some_host) -> bool:
    return LB_GROUP in some_host.groups


def short_name(name: str) -> str:
    """A host's name without its connector ("@docker/asgi-web1" -> "asgi-web1")."""
    return name.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Fleet:
    """The run's app hosts in inventory order, their batches, and what the load balancer fronts."""

    app_hosts: list[str]
    batches: list[list[str]]
    budget: int
    lb_apps: list[rollout.LbApp]

    def halted(self, failed: set[str]) -> str | None:
        return rollout.halt_reason([h for h in self.app_hosts if h in failed], self.budget)


def plan_fleet(state) -> Fleet:
    """Worked out once per run from the inventory (fleet-wide settings come
    from the first app host; every host's settings are validated here)."""
    fleet = getattr(state, "asgi_fleet_fleet", None)
    if fleet is None:
        hosts = [h for h in state.inventory if not is_lb(h) and state.is_host_in_limit(h)]
        binds = []
        for app_host in hosts:
            apps = app_settings(app_host.data.dict(), where=app_host.name)
            address = app_host.data.get("lb_address") or short_name(app_host.name)
            binds.append((app_host.name, address, {a["app_name"]: a["bind"] for a in apps}))
        names = [h.name for h in hosts]
        first = hosts[0].data if hosts else {}
        fleet = state.asgi_fleet_fleet = Fleet(
            app_hosts=names,
            batches=rollout.batches(names, first.get("rollout_batch", 1)),
            budget=rollout.failure_budget(first.get("rollout_max_failures", 0), len(names)),
            lb_apps=rollout.lb_apps(binds),
        )
    return fleet


@deploy("Rollout")
def activate_batch(state, fleet: Fleet, number: int, plans, venvs, run):
    """Drain the batch at the load balancer, activate and gate each of its
    hosts' apps (rolling a failed one back), then put it back into rotation."""
    batch = fleet.batches[number - 1]
    title = f"Batch {number}/{len(fleet.batches)} ({', '.join(short_name(h) for h in batch)})"

    def halted():
        reason = fleet.halted({h.name for h in state.failed_hosts})
        run.halted(reason)
        return reason

    def drain_flags():
        if halted():
            return set()
        return {rollout.drain_flag(app.name, number) for app in fleet.lb_apps
                if any(run.activation(h, app.name) not in (NONE, None)
                       for h in batch if h in app.servers)}

    def broken_flags():  # a host that failed and is not healthy on its old release stays out
        return {rollout.drain_flag(app.name, number) for app in fleet.lb_apps
                if any(run.broken(h, app.name) for h in batch if h in app.servers)}

    flag_dir = LB_FLAG_DIR if is_lb(host) else None
    operations.lb_rotation(name=f"{title}: drain at the load balancer", flag_dir=flag_dir,
                           drained=drain_flags)
    if host.name in batch:
        for plan, venv in zip(plans, venvs):
            record = run.app_step(plan, step=f"{title}: activate {plan.paths.app}", batch=number)
            operations.activate(
                name=f"{title}: activate {plan.paths.app}", plan=plan, halted=halted,
                venv_changed=lambda venv=venv: venv is not None and changed(venv), record=record,
                # the gate, and a rollback's gate, with room to spare; never longer
                time_limit=2 * plan.app["health_deadline"] + 30,
            )
    operations.lb_rotation(name=f"{title}: back into rotation", flag_dir=flag_dir,
                           drained=broken_flags)
