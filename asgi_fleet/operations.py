"""Custom pyinfra operations: each describes a desired state and yields only
the commands needed to reach it, so that an unchanged re-run changes nothing.

Each decides on the host's view (host_view.py: the agent's `state`, read once
for all of them) and yields argv lists quoted in one place (sinks.py), or one
call of the agent (asgi_fleet/onhost/agent.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import gevent
from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, FunctionCommand, operation
from pyinfra.api.exceptions import OperationError

from asgi_fleet import commands, lock, secrets
from asgi_fleet.activation import NEEDS_UNIT_RELOAD, NONE, activation_kind
from asgi_fleet.agent_state import (
    ActivationResult, AppState, FileState, PathState, activation_request, agent_command, app_entry,
    lock_request, parse_answer, preflight_request, state_request,
)
from asgi_fleet.commands import PREFLIGHT_SCRIPT
from asgi_fleet.facts import AgentState
from asgi_fleet.host_view import HostView, predicting, view_operation
from asgi_fleet.release import ReleasesState, to_prune
from asgi_fleet.sinks import command, commands_in_order
from asgi_fleet.wheelhouse import Wheelhouse, WheelhouseError

APT_UPDATED = "/var/lib/apt/periodic/update-success-stamp"  # touched after each update (as pyinfra's apt.update)


@view_operation(lambda packages, **_: {"packages": list(packages), "mtimes": [APT_UPDATED]})
def debian_packages(packages: list[str], cache_time: int, view: HostView):
    """
    Debian packages installed (without recommends). The package lists are
    refreshed first only when a package is missing and they are older than
    `cache_time` seconds: a host that has everything is not touched.

    + packages: the package names
    + cache_time: how old the lists may be before an install refreshes them
    + view: the host's state (HostView)
    """
    state = view.state()
    missing = [name for name in packages if not state.installed(name)]
    if not missing:
        host.noop(f"installed: {', '.join(packages)}")
        return
    updated = state.mtime(APT_UPDATED)
    if updated is None or state.now - updated > cache_time:
        yield REFRESH_PACKAGE_LISTS
    yield apt_install(missing)


REFRESH_PACKAGE_LISTS = commands_in_order(["apt-get", "update", "-qq"], ["mkdir", "-p", APT_UPDATED.rsplit("/", 1)[0]],
                                          ["touch", APT_UPDATED])


def apt_install(packages: list[str]) -> str:
    return "DEBIAN_FRONTEND=noninteractive " + command("apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                                       *packages)


@view_operation(lambda account, **_: {"accounts": [account]})
def system_account(account: str, home: str, shell: str, view: HostView):
    """
    A system group and a system user of that name, in it, with that home
    (not created: the deploy makes it) and shell. One that differs is put right.

    + account: the user's and the group's name
    + home: the user's home directory
    + shell: its login shell (/usr/sbin/nologin: no login)
    + view: the host's state (HostView)
    """
    state = view.state()
    user, want = state.user(account), {"group": account, "home": home, "shell": shell}
    if state.group(account) is not None and user is not None and all(
            user[key] == value for key, value in want.items()):
        host.noop(f"user and group {account}")
        return
    if state.group(account) is None:
        yield command("groupadd", "--system", account)
    if user is None:
        yield command("useradd", "--system", "--gid", account, "--home-dir", home, "--no-create-home",
                      "--shell", shell, account)
        return
    flags = {"group": "--gid", "home": "--home", "shell": "--shell"}
    changes = [word for key, value in want.items() if user[key] != value for word in (flags[key], value)]
    if changes:
        yield command("usermod", *changes, account)


@view_operation(lambda unit, **_: {"units": [unit]})
def service_running(unit: str, view: HostView):
    """
    A systemd unit enabled and running (started if it is not).

    + unit: the unit, e.g. nginx.service
    + view: the host's state (HostView)
    """
    found = view.state().unit(unit) or {}
    if found.get("active") == "active" and found.get("enabled") == "enabled":
        host.noop(f"{unit} is running and enabled")
        return
    yield commands_in_order(["systemctl", "enable", "--quiet", unit], ["systemctl", "start", unit])


@view_operation(lambda path, **_: {"paths": [path]})
def directory(path: str, user: str, group: str, mode: str, view: HostView):
    """
    A directory with this owner, group and mode (octal, e.g. "755").

    + path: the directory
    + user, group, mode: what it must have
    + view: the host's state (HostView)
    """
    found = view.state().path(path)
    if found == PathState("dir", user, group, mode):
        host.noop(f"{path} is in place")
        return
    if found is not None and found.type != "dir":
        raise OperationError(f"{path} exists and is not a directory ({found.type}); move it away")
    yield commands_in_order(["mkdir", "-p", path], ["chown", f"{user}:{group}", path],
                            ["chmod", mode, path])


@dataclass(frozen=True)
class WantedFile:
    """A file with this content, owner, group and mode."""

    path: str
    content: bytes
    user: str
    group: str
    mode: str


@view_operation(lambda files, **_: {"files": [f.path for f in files]})
def files(files: list[WantedFile], view: HostView, changing: set[str] | None = None):
    """
    Files with these contents, owners, groups and modes, in one operation
    (one read, one command for all of them); a new content lands by a rename
    (a reader sees the old file or the new one, never half of one).

    + files: each file as wanted
    + view: the host's state (HostView)
    + changing: receives the path of each file this changes (before the run
      executes, what it will change)
    """
    state = view.state()
    uploads, argvs = [], []
    for want in files:
        found = state.file(want.path)
        wanted = FileState(hashlib.sha256(want.content).hexdigest(), want.user, want.group, want.mode)
        if found == wanted:
            continue
        if changing is not None:
            changing.add(want.path)
        owner = f"{want.user}:{want.group}"
        if found is not None and found.sha256 == wanted.sha256:
            argvs += [["chown", owner, want.path], ["chmod", want.mode, want.path]]
            continue
        upload = f"{want.path}.asgi-fleet-new"
        uploads.append(FileUploadCommand(io.BytesIO(want.content), upload))
        argvs += [["chown", owner, upload], ["chmod", want.mode, upload], ["mv", "-f", upload, want.path]]
    if not argvs:
        host.noop(f"up to date: {', '.join(f.path for f in files)}")
        return
    yield from uploads
    yield commands_in_order(*argvs)




def venv_is_current(found, lock_sha256: str) -> bool:
    """Whether a virtualenv (its VenvState) is complete, built from this lock,
    unchanged since, and not the app's to change: else it is built again."""
    return found.built_lock == lock_sha256 and found.built_dists == found.dists and not found.writable


@view_operation(lambda venvs, **_: {"venvs": [{"path": path, "app": app} for path, app, _, _ in venvs]})
def prefetch_wheelhouses(venvs: list[tuple[str, str, str, Wheelhouse]], view: HostView):
    """
    Start downloading, on the controller, the wheelhouse of each virtualenv
    this host will build, so that it downloads while the host's first steps
    run; the virtualenv's operation takes it (Wheelhouse.prefetch, tarball).

    + venvs: (path, app, lock_sha256, wheelhouse) of each virtualenv
    + view: the host's state (HostView)
    """
    if predicting():
        return
    due = [house for path, _, lock_sha256, house in venvs
           if not venv_is_current(view.state().venv(path), lock_sha256)]
    for house in due:
        house.prefetch()
    host.noop(f"wheelhouses for {len(due)} virtualenv(s) to build" if due else "no virtualenv to build")
    return
    yield  # an operation: a generator, with no command to run


@view_operation(lambda path, app, **_: {"venvs": [{"path": path, "app": app}]})
def virtualenv(path: str, lock_src: str, lock_sha256: str, app: str, view: HostView,
               index_url: str | None = None, ca_bundle: str | None = None,
               wheelhouse: Wheelhouse | None = None, modules: dict[str, str] | None = None,
               uv: str | None = None):
    """
    Build a virtualenv from a hash-locked requirements file, once per lock.

    + path: where the virtualenv lives (keyed by the lock's digest)
    + lock_src: the lock file on the controller
    + lock_sha256: its sha256, recorded in the venv when the build completed
    + app: the app whose user must not be able to change it
    + view: the host's state (HostView), which reports on `path`
    + index_url: a package index to use instead of PyPI
    + ca_bundle: a CA bundle on the host for pip (TLS proxy, private CA)
    + wheelhouse: the lock's wheels for this host's platform, from the
      controller (made only when a build is due): installed offline
    + modules: {module name: file on the controller} added to site-packages
    + uv: uv on the host, which installs from a wheelhouse (else the agent
      takes it from the wheelhouse's own uv wheel, else pip installs)

    **Example:**

    .. code:: python

        virtualenv(path="/srv/shop/venvs/0123abcd", lock_src="requirements.lock",
                   lock_sha256=sha256_of_lock, app="shop", view=view)
    """
    found = view.state().venv(path)
    writable = found.writable
    if venv_is_current(found, lock_sha256):
        host.noop(f"virtualenv {path} is complete and unchanged")
        return
    if writable:  # code the app's user could have changed is not trusted: rebuilt
        logger.warning(f"{host.name}: {writable} is writable by {app}: rebuilding {path}")
    lock = f"{path}.lock"
    yield FileUploadCommand(lock_src, lock)
    wheels = None
    if wheelhouse is not None:
        try:
            tarball = wheelhouse.tarball()
        except WheelhouseError as error:
            raise OperationError(str(error)) from None
        wheels = f"{path}.wheels.tar"
        yield FileUploadCommand(str(tarball), wheels)
    for name, src in (modules or {}).items():
        yield FileUploadCommand(src, f"{path}.{name}.py")
    yield agent_command("venv", {"venv": path, "lock": lock, "wheels": wheels, "uv": uv, "index_url": index_url,
                                 "ca_bundle": ca_bundle, "modules": sorted(modules or ())})


@view_operation(lambda path, group, **_: {"trees": [{"path": path, "group": group}]})
def release(path: str, release_id: str, tarball_src, venv: str, group: str, view: HostView):
    """
    Ship a release: unpack its tarball into `path`, linked to its virtualenv,
    owned by root and readable by the app's group only. A release already in
    place with other owners or modes gets them back.

    + path: the release directory (releases/RELEASE_ID)
    + release_id: written to REVISION, which the app can report
    + tarball_src: the release tarball (a file-like object or a path)
    + venv: the virtualenv the release runs with
    + group: the app's group
    + view: the host's state (HostView), which reports on `path`
    """
    tree = view.state().tree(path)
    if tree.exists:
        loose = tree.loose
        if loose:  # changed by hand, or shipped by an older asgi-fleet
            logger.warning(f"{host.name}: {loose} is not root:{group} u=rwX,g=rX,o=: repairing the release")
            yield commands.release_modes(path, group)
        else:
            host.noop(f"release {release_id} is in place")
        return
    tarball = f"{path}.tar.gz"
    yield FileUploadCommand(tarball_src, tarball)
    yield commands.unpack_release(path, tarball, release_id, venv, group)


@view_operation(lambda paths, **_: {"apps": [app_entry(paths)]})
def prune_releases(paths: commands.AppPaths, keep: int, view: HostView, record: dict):
    """
    Keep the `keep` most recently activated releases (never the running or
    the previous one) and the virtualenvs they use; delete the rest. An
    activation in this run did so already, once healthy.

    + paths: the app's paths
    + keep: how many releases to keep
    + view: the host's state (HostView)
    + record: the app's record in this run (its activation's "pruned")
    """
    if predicting():
        host.noop("decided once the release is activated")
        return
    if "pruned" in record:
        host.noop(f"pruned as it was activated: {', '.join(record['pruned']) or 'nothing'}")
        return
    state = view.state().app(paths).releases
    doomed, doomed_venvs = to_prune(state, keep)
    if not doomed and not doomed_venvs:
        host.noop(f"{len(state.releases)} releases, {len(state.venvs)} virtualenvs: nothing to prune")
        return
    yield agent_command("prune", {"root": paths.root, "releases": doomed, "venvs": doomed_venvs})


@operation()
def deploy_lock(owner: str, run_id: str, acquire: bool, max_age: int = 7200,
                break_lock: str | None = None, record: dict | None = None,
                view: HostView | None = None, packages: tuple[str, ...] = ()):
    """
    Take (or give back) the host's deploy lock, so two deploys never interleave.

    The lock is coordination, not configuration: taking and giving it back
    leaves the host as it was, so neither counts as a change. A lock held by
    a live run fails this host at once, before anything else runs. A lock
    whose run is gone (asgi_fleet.lock.stale_reason) is reported and taken
    over, once no activation of that run still runs on the host.

    + owner: "RUN_ID CONTROLLER PID EPOCH", written into the lock
    + run_id: this run's id
    + acquire: True to take the lock, False to give it back
    + max_age: seconds after which a lock from another controller counts as gone
    + break_lock: the run id of a lock to take over now (the operator knows it is gone)
    + record: this host's entry in the run's record, told about a takeover
    + view: the host's state (HostView), read under the lock as it is taken
    + packages: the Debian packages the host needs, installed with python3
      on a host that has no python3 yet (the agent needs it)
    """
    if predicting():
        return
    if not acquire:
        _agent(host, "lock", lock_request("give", run_id=run_id))
        host.noop("deploy lock given back")
        return
    then_state = view.request if view is not None else None
    found = _agent(host, "lock", lock_request("take", owner=owner, then_state=then_state), packages)
    answer = lock.parse_lock_answer(found)
    if answer.acquired:
        if "state" in found:
            view.read_with(found["state"])
        host.noop("deploy lock taken")
        return
    now = time.time()
    holder = answer.holder
    why = holder and lock.stale_reason(
        holder, now=now, controller=socket.gethostname(), pid_alive=_pid_alive, max_age=max_age,
        break_lock=break_lock, activating=answer.activating)
    if why:
        took = _agent(host, "lock", lock_request("take", owner=owner, stale=holder.text,
                                                 then_state=then_state))
        if lock.parse_lock_answer(took).acquired:
            if "state" in took:
                view.read_with(took["state"])
            report = (f"took over the deploy lock of {holder.describe(now)}: {why}"
                      + "".join(f"; its last activation of {words}" for words in answer.last_words))
            logger.warning(f"{host.name}: {report}")
            if record is not None:
                record["lock"] = report
            host.noop("deploy lock taken over")
            return
    held = holder.describe(now) if holder else repr(answer.holder_text)
    still = f"; still activating: {', '.join(answer.activating)}" if answer.activating else ""
    message = (f"another deploy holds this host's lock ({commands.DEPLOY_LOCK}): {held}{still}. "
               "Nothing was changed. " + (
                   "Wait until its activation ends, then deploy again." if answer.activating else
                   f"If that run is gone, deploy again with --data 'break_lock=\"{holder.run_id}\"', or "
                   f"wait until the lock is older than deploy_lock_max_age ({max_age} s)." if holder else
                   f"Remove {commands.DEPLOY_LOCK} on the host if no deploy runs."))
    yield f"echo {commands.q(message)} >&2; exit 1"


def python_for_the_agent(packages: tuple[str, ...]) -> str:
    """The agent runs on the host's python3: a bare host (the test fleet's
    images included) gets it before the agent's first call, the deploy lock,
    in one apt run with the other `packages` it needs (one run instead of
    two: a second costs a bare host about a second). Without package lists
    (a bare image has none), or with lists too old to install from, it
    refreshes them first."""
    install = apt_install(list(dict.fromkeys(["python3", *packages])))  # app hosts list python3 too
    return f"{install} >/dev/null 2>&1 || {{ {REFRESH_PACKAGE_LISTS} && {install} >/dev/null; }}"


def _agent(host, subcommand: str, request: dict, packages: tuple[str, ...] = ()) -> dict:
    """Ask the host's agent, at execution time, for its answer (on a host
    without python3, after installing it with `packages`)."""
    sudo = bool(host.data.get("_sudo"))
    for attempt in (1, 2):
        _, output = host.run_shell_command(agent_command(subcommand, request), _sudo=sudo)
        answer = parse_answer("\n".join(output.stdout_lines) or "null")
        if answer is not None:
            return answer
        if attempt == 1 and not host.run_shell_command(python_for_the_agent(packages), _sudo=sudo)[0]:
            break
    raise RuntimeError(f"{host.name}: python3 is missing and could not be installed "
                       "(apt-get install python3), so asgi-fleet's agent cannot run")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def planned_activation(plan, view: HostView, venv_changed: bool,
                       will_stage: set[str] = frozenset()) -> tuple[str, str | None, set[str], AppState]:
    """(the activation this host needs for `plan`, the release `current` points at
    now, what changed: staged files that differ from the live ones, those
    `will_stage` (staged by operations that have not run yet), and "venv";
    the app's state it was decided on)."""
    state = view.state().app(plan.paths)
    changed = state.staged_changes | set(will_stage) | ({"venv"} if venv_changed else set())
    kind = activation_kind(state.master, venv=plan.venv_dir, release_dir=plan.release_dir,
                           workers=plan.workers.count, changed=changed)
    return kind, state.releases.current, changed, state


def app_releases(paths: commands.AppPaths) -> ReleasesState:
    """The app's releases on this host (none on a host asgi-fleet never reached)."""
    request = json.dumps(state_request([paths]), sort_keys=True)
    found = host.get_fact(AgentState, request=request)
    return found.app(paths).releases if found else ReleasesState(None, [], {}, [])


def _app_with_health(plan, **_) -> dict:
    return {"apps": [app_entry(plan.paths, health=(plan.app.bind, plan.app.health_path))]}


@view_operation(_app_with_health)
def plan_activation(plan, view: HostView, venv_changed: Callable[[], bool],
                    will_stage: Callable[[], set[str]], record: dict):
    """
    Record what activating `plan` will take on this host (the load balancer
    drains only hosts that will change). Reads the host, changes nothing.
    Before the run executes (--dry), it predicts from the host as it is and
    what the staging operations will change.

    + plan: the app's plan (asgi_fleet.plan.AppPlan)
    + view: the host's state (HostView)
    + venv_changed: whether this run rebuilt (or will build) the app's virtualenv
    + will_stage: the staged files whose operations will change them and have not run yet
    + record: receives the activation kind and the release running now
    """
    kind, current, _, _ = planned_activation(plan, view, venv_changed(), will_stage())
    record.update(activation=kind, old_release=current)
    host.noop(f"{plan.paths.app}: {kind} (now on {current})")
    yield from ()  # an operation is a generator, even one that only reads


@view_operation(_app_with_health)
def activate(plan, view: HostView, venv_changed: Callable[[], bool],
             halted: Callable[[], str | None], record: dict, time_limit: int,
             who: dict[str, str | None] | None = None):
    """
    Make the service run the staged release, with the gentlest mechanism that
    applies it, and hold it to the health gate; roll back to what ran before
    if it fails (the agent's `activate`, asgi_fleet/onhost/agent.py).

    + plan: the app's plan (asgi_fleet.plan.AppPlan)
    + view: the host's state (HostView)
    + venv_changed: whether this run rebuilt the app's virtualenv
    + halted: why the rollout has stopped (None: go on), asked when this runs
    + record: receives the activation kind, the releases, the health and a failure's cause
    + time_limit: seconds this host gets for all of it; a host that stops
      answering fails when they are up, instead of hanging the rollout
    + who: by, run_id and commit, for the host's deploy history

    A healthy, enabled service that needs nothing is left alone (no change);
    a disabled unit is enabled again; an unhealthy service fails the run
    instead of passing it silently.
    """
    if predicting():
        host.noop(f"{plan.paths.app}: decided when its batch comes")
        return
    reason = halted()
    if reason:
        record.update(activation=NONE, health="not activated: rollout stopped")
        host.noop(f"rollout stopped ({reason}): {plan.paths.app} stays on its release")
        return
    paths, app = plan.paths, plan.app
    started = time.monotonic()
    # Read afresh: earlier batches took their time, and a master may have died since.
    if not view.recent() and view.read_now(time_limit) is None:
        record.update(health="unreachable", cause=[f"no answer from the host within {time_limit} s"])
        yield FunctionCommand(_fail, (), {})
        return
    kind, current, changed, state = planned_activation(plan, view, venv_changed())
    record.update(activation=kind, old_release=current)
    if kind == NONE:
        healthy = state.health
        disabled = state.units_not_enabled
    switched = current != plan.release_id  # by hand: the workers still run the release
    if kind == NONE and healthy == 200 and not disabled and not switched:
        record["health"] = "healthy"
        host.noop(f"{paths.service} already runs release {plan.release_id}, healthy")
        return
    request = activation_request(
        paths, release_id=plan.release_id, previous=current, kind=kind,
        reload_units=bool(changed & NEEDS_UNIT_RELOAD), bind=app.bind,
        health_path=app.health_path, deadline=app.health_deadline,
        consecutive=app.health_consecutive, workers=plan.workers.count,
        release_dir=plan.release_dir,
        # nothing to activate: put back what was undone by hand, or fail
        enable=tuple(disabled) if kind == NONE else (),
        check_health=kind != NONE or healthy != 200, who=who,
        # what the next operation would prune once this is healthy, pruned by the activation itself
        prune=to_prune(state.releases.activated(plan.release_id), app.keep_releases))
    left = max(1, int(time_limit - (time.monotonic() - started)))
    yield FunctionCommand(_run_bounded, (agent_command("activate", request), record, left), {})


def _fail(state, host) -> bool:
    return False  # a FunctionCommand fails its host only with False (None counts as done)


def _run_bounded(state, host, agent_call: str, record: dict, time_limit: int) -> bool:
    """Run the agent's activation within `time_limit`; record how it ended and why."""
    try:
        with gevent.Timeout(time_limit, TimeoutError):
            _, output = host.run_shell_command(agent_call, _sudo=bool(host.data.get("_sudo")),
                                               _timeout=time_limit)
    except TimeoutError:
        record.update(health="unreachable",
                      cause=[f"no answer from the host within {time_limit} s"])
        return False
    try:
        result = ActivationResult.parse("\n".join(output.stdout_lines))
    except ValueError as error:
        record.update(health="failed", cause=[str(error), *output.stderr_lines[-8:]])
        return False
    record["health"] = result.health
    if result.outcome == "activated":
        if result.pruned is not None:
            record["pruned"] = list(result.pruned)
        return True
    record["cause"] = result.cause
    for line in result.cause:
        host.log_styled(line, fg="red", log_func=logger.error)
    return False


@view_operation(lambda flag_dir, **_: {"flag_dir": flag_dir} if flag_dir else {})
def lb_rotation(flag_dir: str | None, drained: Callable[[], set[str]], view: HostView):
    """
    Take app servers out of the load balancer's rotation, or put them back,
    without reloading nginx: each drain is a flag file the nginx config tests
    per request (templates/nginx-lb.conf.j2). A reload would drop requests on
    idle keep-alive connections; a flag is seen by the next request, and
    requests in flight finish where they are.

    + flag_dir: where the flags live (/run: a reboot puts every server back); None
      on a host that is not a load balancer
    + drained: the flags that should exist, asked when this runs
    + view: the host's state (HostView)
    """
    if flag_dir is None:  # an app host: it takes part only to keep the batches in step
        host.noop("not a load balancer")
        return
    want = set() if predicting() else drained()
    have = set(view.state().flags or ())
    if want == have:
        host.noop(f"in rotation: all but {sorted(want)}" if want else "every server in rotation")
        return
    yield commands.set_flags(flag_dir, sorted(want), sorted(have - want))


def _kept_out_record(text: str | None) -> dict[str, list[str]]:
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return {str(app): [str(h) for h in hosts] for app, hosts in data.items()
            if isinstance(hosts, list)} if isinstance(data, dict) else {}


@view_operation(lambda path, kept_out_file, **_: {"digests": {path: [path]}, "texts": [kept_out_file]})
def lb_config(path: str, kept_out_file: str,
              kept_out: Callable[[dict[str, list[str]]], dict[str, list[str]]],
              render: Callable[[dict[str, list[str]]], str], view: HostView):
    """
    The load balancer's nginx config, without the hosts kept out of rotation,
    installed only if `nginx -t` passes, then nginx reloaded gracefully.

    Who is out is recorded on the load balancer ({app: [host names]}), so a
    later run keeps a broken host out too, until one finds it healthy.

    + path: the nginx config file
    + kept_out_file: the record of who is kept out (JSON)
    + kept_out: from the record to who is out now, asked when this runs
    + render: the config for a given {app: [hosts kept out]}
    + view: the host's state (HostView)
    """
    state = view.state()
    recorded = _kept_out_record(state.text(kept_out_file))
    out = recorded if predicting() else kept_out(recorded)
    config = render(out)
    live = state.digest(path)
    if out == recorded and live == hashlib.sha256(config.encode()).hexdigest():
        host.noop(f"fronts the fleet{f', without {out}' if out else ''}")
        return
    for app, hosts in out.items():
        if hosts != recorded.get(app):
            logger.warning(f"--> {app}: kept out of rotation at {host.name}: {', '.join(hosts)}"
                           " (failed, and not healthy on its old release)")
    yield command("mkdir", "-p", kept_out_file.rpartition("/")[0])
    yield FileUploadCommand(io.StringIO(config), f"{path}.new")
    yield FileUploadCommand(io.StringIO(json.dumps(out, sort_keys=True)), f"{kept_out_file}.new")
    yield commands.install_nginx_config(path, kept_out_file)


@view_operation(lambda paths, **_: {"files": [paths.staged["secrets"][0]]})
def secret_file(paths: commands.AppPaths, content: bytes, view: HostView):
    """
    Write a file of secrets (root:GROUP, 0640) without ever showing its content.

    The change check compares digests, so no diff of the content is possible;
    the content travels as an upload, never on a command line.

    + paths: the app's paths: the secrets land in its staged secrets file
    + content: the file's bytes (a secrets.Redacted)
    + view: the host's state (HostView), which reports on the file
    """
    path, group = paths.staged["secrets"][0], paths.app
    want = FileState(secrets.digest(content), "root", group, "640")
    if view.state().file(path) == want:
        host.noop(f"{path} is up to date")
        return
    upload = f"{path}.upload"
    # Over SSH with sudo, pyinfra uploads as the SSH user to a temporary file
    # first: put it in a directory of a random name that only that user can
    # enter (mkdir fails rather than reuse one that exists), never in /tmp itself.
    private = f"/tmp/asgi-fleet-upload-{uuid.uuid4().hex}"
    yield FunctionCommand(_private_dir, (private,), {})
    yield FileUploadCommand(io.BytesIO(content), upload, remote_temp_filename=f"{private}/secrets")
    yield (f"rm -rf {commands.q(private)} && install -m 640 -o root -g {commands.q(group)} "
           f"{commands.q(upload)} {commands.q(path)} && rm -f {commands.q(upload)}")


def _private_dir(state, host, path: str) -> bool:
    """A directory only the connecting user can enter (no sudo: it is that user's)."""
    made, _ = host.run_shell_command(f"umask 077 && mkdir -m 700 {commands.q(path)}", _sudo=False)
    return made


@view_operation(lambda plan, **_: {"digests": {plan.preflight_stamp: list(plan.preflight_inputs)},
                                   "texts": [plan.preflight_stamp]},
                seen_by_others=False)  # it writes its stamp, which only it reads
def preflight(plan, view: HostView):
    """
    Check a release before any switch (the agent's `preflight`); once per
    release and candidate config: a stamp in the release records the pass.

    + plan: the app's plan (asgi_fleet.plan.AppPlan): its release, candidate
      config (plan.preflight_inputs) and health check
    + view: the host's state (HostView), which reports the stamp and the digest
    """
    state = view.state()
    digest = state.digest(plan.preflight_stamp)
    if state.text(plan.preflight_stamp) == digest:
        host.noop(f"release {plan.release_dir} passed preflight with this config")
        return
    app = plan.app
    yield agent_command("preflight", preflight_request(
        plan.paths, plan.release_dir, app_module=app.app_module, worker_class=app.worker_class,
        health_path=app.health_path, deadline=app.health_deadline, script=PREFLIGHT_SCRIPT,
        stamp=plan.preflight_stamp, digest=digest))
