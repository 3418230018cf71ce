"""The `asgi-fleet` command: set up a deploy in your repository, and the day-2
commands around it. Deploying stays `pyinfra INVENTORY deploy.py`.

Every command that takes an INVENTORY reads it as pyinfra does (relative to
the directory it runs from) and reaches each host the way the deploy does.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import click

from asgi_fleet import scaffold
from asgi_fleet.agent_state import agent_command, app_entry, lock_request, parse_answer
from asgi_fleet.commands import AppPaths
from asgi_fleet.inventory import InventoryError, InventoryHost, app_hosts_of, load_inventory
from asgi_fleet.release import lock_problems
from asgi_fleet.rollout import short_name
from asgi_fleet.settings import PACKAGE_DIR, RELEASE_ID_RE, InvalidSettings, app_settings
from asgi_fleet.verify import format_table


def hosts_of(inventory: str, load_balancers: bool = False) -> list[InventoryHost]:
    try:
        found = app_hosts_of(inventory)
        return found + (load_inventory(inventory, load_balancers=True) if load_balancers else [])
    except InventoryError as error:
        raise click.ClickException(str(error)) from error


def apps_of(host: InventoryHost) -> list[AppPaths]:
    try:
        return [AppPaths(app.app_name, app.srv_root) for app in app_settings(host.data, host.name)]
    except InvalidSettings as error:
        raise click.ClickException(str(error)) from error


def ask_agent(host: InventoryHost, subcommand: str, request: dict) -> dict | None:
    """The host agent's answer (None: no agent there yet, or no answer)."""
    ran = host.testinfra_host().run(agent_command(subcommand, request))
    return parse_answer(ran.stdout) if ran.stdout.strip() else None


def configured_worker_class() -> str:
    """worker_class as this repository's group_data/all.py sets it ("" if it does not)."""
    path = Path("group_data/all.py")
    if not path.is_file():
        return ""
    import runpy

    return str(runpy.run_path(str(path)).get("worker_class", ""))


def data_arg(key: str, value) -> str:
    """A `--data` argument that pyinfra reads back as `value` (it reads digits
    as a number: a release id like 382435980864 goes as a JSON string)."""
    return f"{key}={json.dumps(value)}"


def chosen(host: InventoryHost, only: tuple[str, ...]) -> bool:
    """Whether --host (by name or short name) picks `host` (none given: every host)."""
    return not only or host.name in only or short_name(host.name) in only


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Run ASGI apps on your own Debian servers: Gunicorn with Uvicorn workers,
    deployed by pyinfra (`pyinfra INVENTORY deploy.py`)."""


@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--app-module", help='The ASGI callable, "module:attribute" (found if there is one).')
@click.option("--app-source", help="The directory shipped as a release (with --app-module).")
@click.option("--app-name", help="Names the unit, user and paths (default: the directory's name).")
@click.option("--health-path", help="A GET route that answers 200 when the app is healthy.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
def init(directory: Path, app_module, app_source, app_name, health_path, port, force):
    """Scaffold a deploy into DIRECTORY (your repository): deploy.py,
    inventories/prod.py and docker.py, group_data/all.py, requirements.in."""
    root = directory.resolve()
    if app_module:
        found = scaffold.FoundApp(app_source or ".", app_module, None)
    else:
        try:
            found = scaffold.find_app(root)
        except scaffold.NotFound as error:
            raise click.ClickException(str(error)) from error
    try:
        name = app_name or scaffold.app_name_for(root)
    except InvalidSettings as error:
        raise click.ClickException(str(error)) from error
    health = health_path or found.health_path
    if not health:
        raise click.ClickException(f"no health route found on {found.module}; pass --health-path "
                                   "(a GET that answers 200 when the app can serve)")
    files = scaffold.init_files(root, app_name=name, app_source=found.source, app_module=found.module,
                                health_path=health, port=port)
    taken = [path for path in files if (root / path).exists()]
    if taken and not force:
        raise click.ClickException(f"{', '.join(taken)} already exist in {root}: nothing written "
                                   "(--force overwrites them)")
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
        click.echo(f"wrote {path}")
    ignore = root / ".gitignore"
    kept = ignore.read_text().splitlines() if ignore.exists() else []
    missing = [line for line in (".asgi-fleet/", ".fleet/") if line not in kept]
    if missing:
        with ignore.open("a") as f:
            f.write("".join(f"{line}\n" for line in missing))
    click.echo(f"\n{name}: {found.module} from {found.source}, health {health}, port {port}.\n"
               "Next: asgi-fleet pin, then pyinfra inventories/docker.py deploy.py "
               "(after asgi-fleet fleet up) or inventories/prod.py.")


@main.command()
@click.option("--requirements", "source", default="requirements.in", show_default=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--lock", "lock", default="requirements.lock", show_default=True, type=click.Path(path_type=Path))
@click.option("--python-version", default="3.11", show_default=True,
              help="The oldest Python of your hosts (Debian bookworm: 3.11).")
def pin(source: Path, lock: Path, python_version: str):
    """Hash-lock the requirements (yours and the server stack) for every host's
    Python. Refuses a lock that lacks what the deploy needs (uvloop, httptools, ...)."""
    candidate = lock.with_name(lock.name + ".new")
    compiled = subprocess.run(
        [sys.executable, "-m", "uv", "pip", "compile", "--quiet", "--universal", "--generate-hashes",
         "--python-version", python_version, str(source), "-o", str(candidate)])
    if compiled.returncode != 0:
        candidate.unlink(missing_ok=True)
        raise click.ClickException(f"uv pip compile failed on {source} (exit {compiled.returncode})")
    problems = lock_problems(candidate.read_text(), str(lock), configured_worker_class())
    if problems:
        candidate.unlink()
        raise click.ClickException("the lock would not deploy; nothing written:\n  " + "\n  ".join(problems))
    os.replace(candidate, lock)
    click.echo(f"wrote {lock}")


@main.command()
@click.argument("action", type=click.Choice(["build", "up", "down", "status"]))
@click.argument("names", nargs=-1)
@click.option("--fresh", is_flag=True, help="up: recreate the hosts from their image (bare servers again)")
def fleet(action: str, names: tuple[str, ...], fresh: bool):
    """The local test fleet: Docker containers running systemd (build, up [--fresh] [NAMES], down, status)."""
    from asgi_fleet.fleet.__main__ import main as fleet_main

    if fresh and action != "up":
        raise click.UsageError("--fresh goes with up")
    sys.exit(fleet_main([action, *(["--fresh"] if fresh else []), *names]))


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("inventory")
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def verify(inventory: str, pytest_args: tuple[str, ...]):
    """Prove every promise of the deploy on INVENTORY's hosts (the packaged
    verify suite; more pytest options after the inventory, e.g. -n auto)."""
    suite = PACKAGE_DIR / "verify_suite"
    sys.exit(subprocess.run([sys.executable, "-m", "pytest", str(suite), "--inventory", inventory,
                             "--rootdir", str(suite), "-c", os.devnull, "-p", "no:cacheprovider",
                             *pytest_args]).returncode)


@main.command()
@click.argument("inventory")
def status(inventory: str):
    """One line per host and app: what runs there, against what the deploy intends."""
    from asgi_fleet.status import main as status_main

    sys.exit(status_main([inventory]))


@main.command()
@click.argument("inventory")
@click.argument("app", required=False)
@click.option("--host", "only", multiple=True, help="Only this host (its name or short name; repeatable).")
@click.option("--since", help='journalctl --since, e.g. "10 min ago".')
@click.option("-n", "--lines", default=50, show_default=True, type=click.IntRange(0, 100000))
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C stops).")
def logs(inventory: str, app: str | None, only: tuple[str, ...], since: str | None, lines: int,
         follow: bool):
    """The journal of each app's service, gathered from every host and labelled."""
    streams = []
    for host in hosts_of(inventory):
        if not chosen(host, only):
            continue
        for paths in apps_of(host):
            if app and paths.app != app:
                continue
            argv = ["journalctl", "--no-pager", "-o", "short-iso", "-u", paths.service,
                    "-n", str(lines), *(["--since", since] if since else []), *(["-f"] if follow else [])]
            streams.append((f"{short_name(host.name)}/{paths.app}", host.argv(argv)))
    if not streams:
        raise click.ClickException(f"no app{f' {app!r}' if app else ''} on the hosts chosen in {inventory}")
    width = max(len(label) for label, _ in streams)
    printing = threading.Lock()
    procs = [(label, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
             for label, argv in streams]

    def relay(label, proc):
        for line in proc.stdout:
            with printing:
                click.echo(f"{label:<{width}} | {line.rstrip()}")

    threads = [threading.Thread(target=relay, args=pair, daemon=True) for pair in procs]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.terminate()
    failed = [label for label, proc in procs if proc.wait() not in (0, -15)]
    if failed and not follow:
        raise click.ClickException(f"journalctl failed on {', '.join(failed)}")


@main.command()
@click.argument("inventory")
@click.option("--last", default=10, show_default=True, type=click.IntRange(0, 10000),
              help="Deploys of the history shown per host and app.")
def releases(inventory: str, last: int):
    """Per host and app: the releases kept (* is live) and the last deploys
    from the host's history (when, by whom, from which commit, the outcome)."""
    kept = [["host", "app", "releases (* live)"]]
    history = [["when (UTC)", "host", "app", "release", "activation", "outcome", "by", "commit"]]
    for host in hosts_of(inventory):
        paths = apps_of(host)
        found = ask_agent(host, "state", {"apps": [app_entry(p, deploys=last) for p in paths]})
        for p in paths:
            app = (found or {}).get("apps", {}).get(p.app) or {}
            names = sorted(app.get("releases", {}), key=lambda r: r != app.get("current"))
            kept.append([short_name(host.name), p.app,
                         " ".join(f"*{r}" if r == app.get("current") else r for r in names) or "-"])
            for deploy in app.get("deploys", []):
                when = datetime.datetime.fromtimestamp(deploy["ended"], datetime.timezone.utc)
                history.append([when.strftime("%Y-%m-%d %H:%M:%S"), short_name(host.name), p.app,
                                deploy["release"], deploy["activation"], deploy["outcome"],
                                deploy.get("by") or "-", deploy.get("commit") or "-"])
    click.echo("\n".join(format_table(kept)))
    if last:
        history[1:] = sorted(history[1:])
        click.echo("\n" + "\n".join(format_table(history)))


@main.command()
@click.argument("inventory")
@click.argument("release", required=False)
@click.argument("pyinfra_args", nargs=-1, type=click.UNPROCESSED)
def rollback(inventory: str, release: str | None, pyinfra_args: tuple[str, ...]):
    """Activate the previous release again, or RELEASE if it is kept on every
    host, with the same rolling, health-gated activation as a deploy (runs
    deploy.py from this directory)."""
    if release and not RELEASE_ID_RE.fullmatch(release):
        raise click.ClickException(f"release {release!r}: must be a release id ({RELEASE_ID_RE.pattern}), "
                                   "as `asgi-fleet releases` lists them")
    if not Path("deploy.py").is_file():
        raise click.ClickException(f"no deploy.py in {Path.cwd()}: run asgi-fleet init first")
    data = ["--data", "rollback=True", *(["--data", data_arg("rollback_to", release)] if release else [])]
    sys.exit(subprocess.run([sys.executable, "-m", "pyinfra", "-y", inventory, "deploy.py", *data,
                             *pyinfra_args]).returncode)


@main.group()
def lock():
    """The deploy lock of each host (a run holds it while it deploys)."""


@lock.command("status")
@click.argument("inventory")
def lock_status(inventory: str):
    """Who holds each host's deploy lock, and what still activates."""
    rows = [["host", "lock", "holder", "activating"]]
    for host in hosts_of(inventory, load_balancers=True):
        answer = ask_agent(host, "lock", lock_request("status")) or {"outcome": "no agent yet"}
        rows.append([short_name(host.name), answer["outcome"], answer.get("holder") or "-",
                     ", ".join(answer.get("activating", [])) or "-"])
    click.echo("\n".join(format_table(rows)))


@lock.command("release")
@click.argument("inventory")
@click.option("--host", "only", multiple=True, help="Only this host (repeatable).")
def lock_release(inventory: str, only: tuple[str, ...]):
    """Give back locks left by a run that is gone. A host where an activation
    still runs keeps its lock (it finishes or rolls back by itself)."""
    refused = []
    for host in hosts_of(inventory, load_balancers=True):
        if not chosen(host, only):
            continue
        answer = ask_agent(host, "lock", lock_request("status")) or {}
        holder = answer.get("holder")
        if not holder:
            continue
        if answer.get("activating"):
            refused.append(f"{short_name(host.name)} (still activating {', '.join(answer['activating'])})")
            continue
        given = ask_agent(host, "lock", lock_request("give", run_id=holder.split(" ", 1)[0]))
        click.echo(f"{short_name(host.name)}: {given.get('outcome') if given else 'no answer'} ({holder})")
    if refused:
        raise click.ClickException("lock kept on " + "; ".join(refused))


if __name__ == "__main__":
    main()
