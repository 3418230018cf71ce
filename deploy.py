"""asgi-fleet: take Debian hosts to a running, health-checked ASGI service.

    pyinfra inventories/docker.py deploy.py                   # the local test fleet
    pyinfra inventories/prod.py deploy.py                     # your servers, over SSH + sudo
    pyinfra inventories/prod.py deploy.py --data rollback=1   # back to the previous release

Stage, then activate: the release is shipped, installed and preflighted on
every host at once, with no change to traffic; then the hosts are activated
batch by batch in inventory order, each drained at the load balancer (group
`lb`) and health-gated, and rolled back if it fails.
"""

from pyinfra import host, state

from asgi_fleet.facts import BeforePlanning
from asgi_fleet.host_view import HostView
from asgi_fleet.operations import app_releases
from asgi_fleet.plan import plan_host
from asgi_fleet.settings import host_settings
from asgi_fleet.tasks.config import stage_files
from asgi_fleet.tasks.lb import LB_PACKAGES, load_balancer
from asgi_fleet.tasks.lock import give_back_deploy_lock, take_deploy_lock
from asgi_fleet.tasks.preflight import install_preflight_script, preflight
from asgi_fleet.tasks.python_env import (
    fetch_wheelhouses, install_verify_tools, install_virtualenv, package_index,
)
from asgi_fleet.tasks.release import prune_releases, ship_release
from asgi_fleet.tasks.rollout import activate_batch, is_lb, plan_rollout
from asgi_fleet.tasks.service import plan_activation
from asgi_fleet.tasks.system import app_host_packages, prepare_host, refuse_foreign_names

# Validates every setting (raising before any host is changed): the rollout
# (the fleet's batches, failure budget and load balancer upstreams, and the
# run's record), and for this host each app's release, virtualenv, paths and,
# from its CPUs and memory, its worker count.
rollout = plan_rollout(state)
settings = host_settings(host.data.dict(), where=host.name)  # the same in every app of the host
plans, platform = [], []
if not is_lb(host):
    plans = plan_host(host.data.dict(), where=host.name)
    resources, platform, foreign = host.get_fact(BeforePlanning, apps=tuple(plan.paths for plan in plans))
    plans = [plan.sized(resources) for plan in plans]
    refuse_foreign_names(host, plans, foreign)  # never take over a user, unit or path we did not create
if settings.rollback:
    plans = [plan.rolled_back(app_releases(plan.paths), f"{host.name}/{plan.paths.app}",
                              to=settings.rollback_to) for plan in plans]
run = rollout.record.for_host(host.name)
# What the operations below decide on: the host read once, again only after a change.
view = HostView()
take_deploy_lock(run, settings.deploy_lock_max_age, settings.break_lock, view,
                 LB_PACKAGES if is_lb(host) else app_host_packages(settings))

# Stage: every host at once; nothing that serves traffic changes.
venvs = []
if is_lb(host):
    load_balancer(rollout, settings.apt_cache_time, view)
else:
    pip = package_index(settings, platform, view)
    fetch_wheelhouses(plans, pip, view)  # on the controller, while the host installs its packages
    prepare_host(plans, settings, view)
    install_verify_tools(pip, view)
    install_preflight_script(view)
for plan in plans:
    venvs.append(install_virtualenv(plan, pip, view))
    will_stage = stage_files(plan, view)  # before the release: a code-only release reads the host once
    ship_release(plan, view)
    preflight(plan, view)  # a release that fails here never takes traffic
    plan_activation(plan, view, venvs[-1], will_stage, run.app(plan))

# Activate: batch by batch; a failed host is rolled back and stops the rollout.
for number in host.loop(range(1, len(rollout.batches) + 1)):
    activate_batch(state, rollout, number, plans, venvs, run, view)

for plan in plans:
    prune_releases(plan, view, run.app(plan))
give_back_deploy_lock(run)
