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
from asgi_fleet.activation import NONE, activation_time_limit
from asgi_fleet.record import BROKEN
from asgi_fleet.settings import InvalidSettings, app_settings, lb_address
from tasks import changed, render_template

NGINX_CONF = "/etc/nginx/conf.d/asgi-fleet.conf"

LB_GROUP = "lb"  # the inventory group of load balancers
LB_FLAG_DIR = "/run/asgi-fleet-lb"  # drain flags (templates/nginx-lb.conf.j2)
# Who is kept out of rotation after a failed deploy ({app: [host names]}): on
# disk, not in /run, so that neither a reboot nor the next run puts a broken
# host back; only a deploy that finds it healthy does.
LB_KEPT_OUT = "/var/lib/asgi-fleet-lb/kept-out.json"


def is_lb(some_host) -> bool:
    return LB_GROUP in some_host.groups


def short_name(name: str) -> str:
    """A host's name without its connector ("@docker/asgi-web1" -> "asgi-web1")."""
    return name.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Fleet:
    """The inventory's app hosts in inventory order, their batches, what the
    load balancer fronts, and the hosts this run activates (`targeted`: all of
    them, or those a --limit selects).

    The batches and the load balancer come from the whole inventory, so that a
    --limit changes what is activated, never what the load balancer fronts.
    """

    app_hosts: list[str]
    batches: list[list[str]]
    budget: int
    lb_apps: list[rollout.LbApp]
    targeted: list[str]
    load_balancers: list[str]

    def halted(self, failed: set[str]) -> str | None:
        lbs = [h for h in self.load_balancers if h in failed]
        if lbs:  # a load balancer that failed can no longer drain nor keep a broken host out
            return f"the load balancer failed ({', '.join(lbs)})"
        return rollout.halt_reason([h for h in self.targeted if h in failed], self.budget)


def plan_fleet(state) -> Fleet:
    """Worked out once per run from the whole inventory (fleet-wide settings
    come from the first app host; every app host's settings are validated)."""
    fleet = getattr(state, "asgi_fleet_fleet", None)
    if fleet is None:
        hosts = [h for h in state.inventory if not is_lb(h)]
        binds = []
        for app_host in hosts:
            apps = app_settings(app_host.data.dict(), where=app_host.name)
            address = app_host.data.get("lb_address") or short_name(app_host.name)
            if lb_address(address):  # a host name that nginx would read as more than a name
                raise InvalidSettings([f"{app_host.name}: lb_address={address!r} (from the host's "
                                       f"name): {lb_address(address)}; set lb_address"])
            binds.append((app_host.name, address, {a["app_name"]: a["bind"] for a in apps}))
        names = [h.name for h in hosts]
        targeted = [h.name for h in hosts if state.is_host_in_limit(h)]
        first = hosts[0].data if hosts else {}
        fleet = state.asgi_fleet_fleet = Fleet(
            app_hosts=names,
            batches=rollout.batches(names, first.get("rollout_batch", 1)),
            budget=rollout.failure_budget(first.get("rollout_max_failures", 0), len(targeted)),
            lb_apps=rollout.lb_apps(binds),
            targeted=targeted,
            load_balancers=[h.name for h in state.inventory if is_lb(h) and state.is_host_in_limit(h)],
        )
    return fleet


@deploy("Rollout")
def activate_batch(state, fleet: Fleet, number: int, plans, venvs, run, view):
    """Drain the batch at the load balancer, activate and gate each of its
    hosts' apps (rolling a failed one back), then put it back into rotation."""
    batch = fleet.batches[number - 1]
    title = f"Batch {number}/{len(fleet.batches)} ({', '.join(short_name(h) for h in batch)})"

    def halted():
        reason = fleet.halted({h.name for h in state.failed_hosts})
        run.halted(reason)
        return reason

    def drain_flags():  # only the batch's hosts this run activates, and only if they change
        if halted():
            return set()
        return {rollout.drain_flag(app.name, number) for app in fleet.lb_apps
                if any(run.activation(h, app.name) not in (NONE, None)
                       for h in batch if h in app.servers and h in fleet.targeted)}

    def kept_out(recorded):  # a host that failed and is not healthy on its old release stays out
        outcomes = {(h, app.name): run.health(h, app.name) for app in fleet.lb_apps
                    for h in app.servers if h in fleet.targeted}
        return rollout.kept_out_after(
            recorded, fleet.lb_apps,
            healthy={key for key, health in outcomes.items() if health == "healthy"},
            broken={key for key, health in outcomes.items() if health in BROKEN})

    lb = is_lb(host)
    operations.lb_rotation(name=f"{title}: drain at the load balancer",
                           flag_dir=LB_FLAG_DIR if lb else None, drained=drain_flags, view=view)
    if host.name in batch and host.name in fleet.targeted:
        for plan, venv in zip(plans, venvs):
            record = run.app_step(plan, step=f"{title}: activate {plan.paths.app}", batch=number)
            operations.activate(
                name=f"{title}: activate {plan.paths.app}", plan=plan, view=view, halted=halted,
                venv_changed=lambda venv=venv: venv is not None and changed(venv), record=record,
                time_limit=activation_time_limit(plan.app),
            )
    if lb:  # first keep the broken out (nginx reloads), then lift the drain
        front_the_fleet(fleet, view, name=f"{title}: keep failed hosts out of rotation", kept_out=kept_out)
    operations.lb_rotation(name=f"{title}: back into rotation",
                           flag_dir=LB_FLAG_DIR if lb else None, drained=set, view=view)


def front_the_fleet(fleet: Fleet, view, name: str, kept_out=lambda recorded: recorded):
    """The load balancer's nginx config for the whole fleet, without the hosts
    kept out of rotation (`kept_out`: from the record on the LB host to who is
    out now, asked when this runs)."""
    return operations.lb_config(
        name=name, path=NGINX_CONF, kept_out_file=LB_KEPT_OUT, kept_out=kept_out, view=view,
        render=lambda out: render_template("nginx-lb.conf.j2", flag_dir=LB_FLAG_DIR,
                                           apps=rollout.lb_config(fleet.lb_apps, fleet.batches, out)),
    )
