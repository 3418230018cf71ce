"""Rolling activation: batch by batch, in inventory order, behind the load balancer.

Every host of the run (app hosts and load balancers) calls `activate_batch`
for every batch, so each batch's operations form one step of pyinfra's
operation order: batch 2 starts only when batch 1 finished on every host.
A host outside the batch, or past a stopped rollout, has nothing to do.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from asgi_fleet import operations
from asgi_fleet.activation import activation_time_limit
from asgi_fleet.record import start_record
from asgi_fleet.rollout import (FLAG_DIR, KEPT_OUT_FILE, LB_GROUP, NGINX_CONF, Rollout, batches,
                                failure_budget, lb_apps, lb_idle_ms, short_name)
from asgi_fleet.settings import InvalidSettings, app_settings, lb_address
from asgi_fleet.tasks import changed, render_template


def is_lb(some_host) -> bool:
    return LB_GROUP in some_host.groups


def plan_rollout(state) -> Rollout:
    """Worked out once per run from the whole inventory (fleet-wide settings
    come from the first app host; every app host's settings are validated),
    with the run's record."""
    rollout = getattr(state, "asgi_fleet_rollout", None)
    if rollout is None:
        hosts = [h for h in state.inventory if not is_lb(h)]
        binds = []
        first = None  # fleet-wide settings: the first app host's
        keepalives = []
        for app_host in hosts:
            apps = app_settings(app_host.data.dict(), where=app_host.name)
            first = first or apps[0]
            keepalives += [a.keepalive for a in apps]
            address = apps[0].lb_address or short_name(app_host.name)
            if lb_address(address):  # a host name that nginx would read as more than a name
                raise InvalidSettings([f"{app_host.name}: lb_address={address!r} (from the host's "
                                       f"name): {lb_address(address)}; set lb_address"])
            binds.append((app_host.name, address, {a.app_name: a.bind for a in apps}))
        names = [h.name for h in hosts]
        targeted = [h.name for h in hosts if state.is_host_in_limit(h)]
        in_batches = batches(names, first.rollout_batch if first else 1)
        budget = failure_budget(first.rollout_max_failures if first else 0, len(targeted))
        rollout = state.asgi_fleet_rollout = Rollout(
            app_hosts=names, batches=in_batches, budget=budget, lb_apps=lb_apps(binds),
            targeted=targeted,
            load_balancers=[h.name for h in state.inventory if is_lb(h) and state.is_host_in_limit(h)],
            record=start_record(state, names, in_batches, budget, targeted),
            lb_keepalive=first.lb_keepalive if first else 0, lb_idle_ms=lb_idle_ms(keepalives),
        )
    return rollout


@deploy("Rollout")
def activate_batch(state, rollout: Rollout, number: int, plans, venvs, run, view):
    """Drain the batch at the load balancer, activate and gate each of its
    hosts' apps (rolling a failed one back), keep out who is broken, then put
    the batch back into rotation."""
    title = rollout.title(number)
    lb = is_lb(host)

    def failed() -> set[str]:
        return {h.name for h in state.failed_hosts}

    operations.lb_rotation(name=f"{title}: drain at the load balancer", flag_dir=FLAG_DIR if lb else None,
                           drained=lambda: rollout.drains(number, failed()), view=view)
    if rollout.activates(host.name, number):
        for plan, venv in zip(plans, venvs):
            step = f"{title}: activate {plan.paths.app}"
            operations.activate(
                name=step, plan=plan, view=view, halted=lambda: rollout.halted(failed()),
                venv_changed=lambda venv=venv: venv is not None and changed(venv),
                record=run.app_step(plan, step=step, batch=number),
                who={"by": run.run.by, "run_id": run.run_id, "commit": plan.commit},
                time_limit=activation_time_limit(plan.app),
            )
    if lb:  # first keep the broken out (nginx reloads), then lift the drain
        front_the_fleet(rollout, view, name=f"{title}: keep failed hosts out of rotation",
                        kept_out=rollout.kept_out)
    operations.lb_rotation(name=f"{title}: back into rotation", flag_dir=FLAG_DIR if lb else None,
                           drained=set, view=view)


def front_the_fleet(rollout: Rollout, view, name: str, kept_out=lambda recorded: recorded):
    """The load balancer's nginx config for the whole fleet, without the hosts
    kept out of rotation (`kept_out`: from the record on the LB host to who is
    out now, asked when this runs)."""
    return operations.lb_config(
        name=name, path=NGINX_CONF, kept_out_file=KEPT_OUT_FILE, kept_out=kept_out, view=view,
        render=lambda out: render_template("nginx-lb.conf.j2", apps=rollout.lb_config(out),
                                           keepalive=rollout.lb_keepalive, idle_ms=rollout.lb_idle_ms),
    )
