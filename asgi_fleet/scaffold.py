"""`asgi-fleet init`: a deploy scaffolded into an operator's own repository.

The pure part: find the ASGI callable and the health route in the
repository's Python files, and write the files of a deploy (a thin deploy.py,
two inventories, group_data/all.py with every setting, requirements.in).
"""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from asgi_fleet.settings import APP_NAME_RE, DEFAULTS_FILE, InvalidSettings

# Classes whose instance is an ASGI app, as a module names them.
ASGI_CLASSES = {"FastAPI", "Starlette", "Quart", "Litestar", "Sanic"}
SKIPPED_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "tests", "test", "build",
                "dist", ".asgi-fleet", ".fleet"}
# The server stack every lock holds (release.REQUIRED_IN_LOCK checks it):
# the pins asgi-fleet is tested with.
SERVER_STACK = ("gunicorn==27.0.1", "uvicorn[standard]==0.54.0", "uvicorn-worker==0.4.0",
                "setproctitle==1.3.8")


@dataclass(frozen=True)
class FoundApp:
    source: str  # app_source: the directory shipped, relative to the repository
    module: str  # app_module: "package.module:attribute"
    health_path: str | None  # a GET route whose path names health, if one was found


class NotFound(Exception):
    """No single ASGI callable to deploy: the message says what was found."""


def python_files(root: Path):
    for path in sorted(root.rglob("*.py")):
        if not SKIPPED_DIRS & set(path.relative_to(root).parts[:-1]):
            yield path


def asgi_apps(tree: ast.Module) -> list[str]:
    """Module-level names bound to an instance of an ASGI class: `app = FastAPI(...)`."""
    names = []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call):
            func = node.value.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if called in ASGI_CLASSES:
                names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def health_route(tree: ast.Module, app: str) -> str | None:
    """The path of the first GET route on `app` whose path names health (or ready, ping, live)."""
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for decorator in node.decorator_list:
            if (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
                    and decorator.func.attr == "get" and isinstance(decorator.func.value, ast.Name)
                    and decorator.func.value.id == app and decorator.args
                    and isinstance(decorator.args[0], ast.Constant)
                    and isinstance(decorator.args[0].value, str)
                    and re.search(r"health|ready|live|ping", decorator.args[0].value)):
                return decorator.args[0].value
    return None


def find_app(root: Path) -> FoundApp:
    """The repository's one ASGI callable. A file under src/ is a src layout
    (app_source "src", the module from there); otherwise the repository is
    shipped from its root."""
    found = []
    for path in python_files(root):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for name in asgi_apps(tree):
            found.append((path.relative_to(root), name, health_route(tree, name)))
    if len(found) != 1:
        listed = ", ".join(f"{path}:{name}" for path, name, _ in found) or "none"
        raise NotFound(f"found {len(found)} ASGI apps ({listed}) in {root}; say which with "
                       "--app-module MODULE:ATTRIBUTE (and --app-source DIR)")
    path, name, health = found[0]
    parts = path.with_suffix("").parts
    source = "."
    if parts[0] == "src" and len(parts) > 1:
        source, parts = "src", parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return FoundApp(source, ".".join(parts) + ":" + name, health)


def own_requirements(root: Path) -> list[str]:
    """The app's own dependencies: pyproject's [project] dependencies, else
    requirements.txt (as -r), else none."""
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        if project.get("dependencies"):
            return list(project["dependencies"])
    if (root / "requirements.txt").is_file():
        return ["-r requirements.txt"]
    return []


def app_name_for(root: Path) -> str:
    """An app_name from the project's name (pyproject.toml) or else the
    repository's directory name, or the error that asks for one."""
    pyproject = root / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text()).get("project", {}) if pyproject.is_file() else {}
    given = str(project.get("name") or root.resolve().name)
    name = re.sub(r"[^a-z0-9-]+", "-", given.lower()).strip("-")[:31]
    if not APP_NAME_RE.fullmatch(name):
        raise InvalidSettings([f"app_name: {given!r} does not make one ({APP_NAME_RE.pattern}); "
                               "pass --app-name"])
    return name


def commented_defaults() -> str:
    """group_data/all.py of asgi-fleet, every assignment commented out: the
    settings a user may override, each with its comment."""
    lines = []
    for line in DEFAULTS_FILE.read_text().splitlines():
        is_setting = re.match(r"^[a-z_]+ = ", line)
        lines.append(f"# {line}" if is_setting else line)
    return "\n".join(lines) + "\n"


def group_data(app: dict[str, object]) -> str:
    """The user's group_data/all.py: their settings, then asgi-fleet's, commented."""
    own = "".join(f"{key} = {value!r}\n" for key, value in app.items())
    return (f'"""This deploy\'s settings (asgi-fleet init). Anything left out has\n'
            f'asgi-fleet\'s default, listed below; every setting is validated before a\n'
            f'host is changed."""\n\n{own}\n'
            f"# ---- asgi-fleet's defaults, for reference: uncomment to override ----\n"
            + commented_defaults())


DEPLOY_PY = '''"""Deploy this repository's app with asgi-fleet:

    pyinfra inventories/prod.py deploy.py      # your servers
    pyinfra inventories/docker.py deploy.py    # the local test fleet (asgi-fleet fleet up)

The deploy itself is asgi-fleet's (asgi_fleet/deploy.py, in the package);
the settings are this repository's group_data/all.py and inventories.
"""

from asgi_fleet import run_deploy

run_deploy()
'''

PROD_INVENTORY = '''"""Your servers. App hosts in `app`, reached over SSH as a user with sudo;
the load balancer (nginx, fronting every app host) in `lb`.

    pyinfra inventories/prod.py deploy.py
    asgi-fleet verify inventories/prod.py
"""

app = [
    # ("web1.example.com", {"ssh_user": "deploy", "_sudo": True}),
    # ("web2.example.com", {"ssh_user": "deploy", "_sudo": True}),
]

# lb = [
#     ("lb1.example.com", {"ssh_user": "deploy", "_sudo": True}),
# ]
'''

DOCKER_INVENTORY = '''"""The local test fleet (`asgi-fleet fleet up`): Docker containers with
systemd, reached with `docker exec`. Add "@docker/asgi-web1" (it already
serves asgi-fleet's example app on 8000 and 8001: keep to another port) or
the load balancer (`lb = ["@docker/asgi-lb"]`) to try more.
"""

app = ["@docker/asgi-web2"]
'''


def init_files(root: Path, *, app_name: str, app_source: str, app_module: str, health_path: str,
               port: int) -> dict[str, str]:
    """The files `asgi-fleet init` writes, relative to the repository."""
    settings = {"app_name": app_name, "app_source": app_source, "app_module": app_module,
                "app_lock": "requirements.lock", "health_path": health_path,
                "bind": f"0.0.0.0:{port}"}
    requirements = ("# The server stack asgi-fleet runs (exact pins), then the app's own.\n"
                    "# `asgi-fleet pin` turns this into requirements.lock, with hashes.\n"
                    + "".join(f"{line}\n" for line in SERVER_STACK)
                    + "".join(f"{line}\n" for line in own_requirements(root)))
    return {"deploy.py": DEPLOY_PY, "inventories/prod.py": PROD_INVENTORY,
            "inventories/docker.py": DOCKER_INVENTORY, "group_data/all.py": group_data(settings),
            "requirements.in": requirements}
