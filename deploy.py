"""asgi-fleet: take Debian hosts to a running, health-checked ASGI service.

    pyinfra inventories/docker.py deploy.py                   # the local test fleet
    pyinfra inventories/prod.py deploy.py                     # your servers, over SSH + sudo
    pyinfra inventories/prod.py deploy.py --data rollback=1   # back to the previous release
"""

from pyinfra import host, state

from asgi_fleet.facts import HostResourcesFact, Releases
from asgi_fleet.plan import plan_host
from asgi_fleet.record import record_run
from tasks.config import install_config, install_secrets, write_candidate_config
from tasks.lock import give_back_deploy_lock, take_deploy_lock
from tasks.preflight import install_preflight_script, preflight
from tasks.python_env import install_verify_tools, install_virtualenv, package_index
from tasks.release import prune_releases, ship_release, switch_current
from tasks.service import run_service
from tasks.system import prepare_host

# Validates every setting (raising before any host is changed) and works out
# each app's release, virtualenv, paths and, from this host's CPUs and memory,
# its worker count (the same decision the verification suite recomputes).
resources = host.get_fact(HostResourcesFact)
plans = [plan.sized(resources) for plan in plan_host(host.data.dict(), where=host.name)]
if host.data.get("rollback"):
    plans = [plan.rolled_back(host.get_fact(Releases, paths=plan.paths), f"{host.name}/{plan.paths.app}")
             for plan in plans]
run = record_run(state, host)

take_deploy_lock(run)
settings = plans[0].app  # host-wide settings are the same in every app
prepare_host(plans, settings)
pip = package_index(settings)
install_verify_tools(pip)
install_preflight_script()
for plan in plans:
    venv = install_virtualenv(plan, pip)
    ship_release(plan)
    write_candidate_config(plan)
    secrets = install_secrets(plan)
    preflight(plan)  # a release that fails here never takes traffic
    config, env = install_config(plan)
    code = switch_current(plan)
    changes = {"venv": venv, "secrets": secrets, "config": config, "env": env, "code": code}
    run_service(plan, changes, run.app(plan))
    prune_releases(plan)
give_back_deploy_lock(run)
