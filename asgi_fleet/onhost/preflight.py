"""asgi-fleet preflight: can this release serve? Run on the host before any switch.

    RELEASE/.venv/bin/python preflight.py APP_MODULE WORKER_CLASS [GUNICORN_CONF]

Run as the app user, in the release directory, with the app's environment.
GUNICORN_CONF, the candidate config, is read first by gunicorn's own loader,
as its master reads it (the file run, every value checked by gunicorn's
settings: what `gunicorn --check-config` does, without a second interpreter
and a second import of the app). So the app is imported with the candidate
secrets it loads (an app that reads a secret at import time, as
pydantic-settings does, needs them).
Exits non-zero with one line that says what is wrong and how to fix it.
Standard library only, plus what the release's own virtualenv provides.
"""

import importlib
import inspect
import os
import sys
import traceback


def fail(message: str) -> None:
    print(f"preflight failed: {message}", file=sys.stderr)
    sys.exit(1)


def import_attribute(spec: str, what: str):
    # module:attr (an app) or package.module.Class (a worker)
    module_name, _, attrs = spec.partition(":") if ":" in spec else spec.rpartition(".")
    try:
        target = importlib.import_module(module_name)
    except Exception as error:  # any import-time error of the app is the finding
        last = traceback.extract_tb(error.__traceback__)[-1]
        fail(f"{what} {spec!r}: importing {module_name} raised {type(error).__name__}: {error} "
             f"({last.filename}:{last.lineno})")
    for attr in attrs.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            fail(f"{what} {spec!r}: {module_name} has no attribute {attrs!r}")
    return target


def asgi_interface(app) -> str | None:
    """'asgi3', 'asgi2' or None, detected the way uvicorn does."""
    if inspect.isclass(app):
        return "asgi2" if hasattr(app, "__await__") or hasattr(app, "__call__") else None
    if inspect.isfunction(app) or inspect.ismethod(app):
        return "asgi3" if inspect.iscoroutinefunction(app) else None
    call = getattr(app, "__call__", None)
    if call is not None and inspect.iscoroutinefunction(call):
        return "asgi3"
    return "asgi2" if callable(app) else None


def check_app(spec: str) -> str:
    factory_call = spec.endswith("()")
    app = import_attribute(spec.removesuffix("()"), "app_module")
    if factory_call:
        try:
            app = app()
        except Exception as error:
            fail(f"app_module {spec!r}: calling the factory raised {type(error).__name__}: {error}")
    interface = asgi_interface(app)
    if interface is None:
        required = [p for p in inspect.signature(app).parameters.values()
                    if p.default is p.empty] if callable(app) else None
        if required == []:
            fail(f"app_module {spec!r} looks like an app factory (a function with no "
                 f"arguments); set app_module to {spec + '()'!r}")
        fail(f"app_module {spec!r} is a {type(app).__name__}, not an ASGI application")
    return interface


def check_worker(dotted: str) -> None:
    from gunicorn.workers import SUPPORTED_WORKERS
    from gunicorn.workers.base import Worker

    worker = import_attribute(SUPPORTED_WORKERS.get(dotted, dotted), "worker_class")
    if not (inspect.isclass(worker) and issubclass(worker, Worker)):
        fail(f"worker_class {dotted!r} is not a gunicorn worker class")


def load_config(conf: str, app_spec: str) -> None:
    """Read `conf` with gunicorn's loader (its secrets land in os.environ, and
    its chdir on sys.path, as in gunicorn's master)."""
    from gunicorn.app.wsgiapp import WSGIApplication

    argv, sys.argv = sys.argv, ["gunicorn", "-c", conf, "--chdir", os.getcwd(), app_spec]
    try:
        WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]")
    except (Exception, SystemExit) as error:  # its loader prints what it refused, then exits
        detail = f": {type(error).__name__}: {error}" if isinstance(error, Exception) else ""
        fail(f"gunicorn refused the candidate config {conf}{detail}")
    finally:
        sys.argv = argv


def main() -> None:
    app_spec, worker_class = sys.argv[1:3]
    if len(sys.argv) > 3:
        load_config(sys.argv[3], app_spec)
    else:
        sys.path.insert(0, os.getcwd())  # as gunicorn's chdir does
    interface = check_app(app_spec)
    check_worker(worker_class)
    print(f"preflight: {app_spec} is an {interface.upper()} app; {worker_class} imports")


if __name__ == "__main__":
    main()
