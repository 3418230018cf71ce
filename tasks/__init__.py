"""One module per concern of a deploy; deploy.py calls them in order."""

import functools

from pyinfra.api.operation import OperationMeta

from asgi_fleet.settings import PACKAGE_DIR
from asgi_fleet.sinks import TEMPLATE_FILTERS

TEMPLATES = PACKAGE_DIR / "templates"


def changed(op: OperationMeta) -> bool:
    """Whether an op changed the host: its result once executed, its prediction before."""
    return op.did_change() if op.is_complete() else bool(op.will_change)


def render_template(name: str, **variables) -> str:
    """A template rendered on the controller (with the filters of sinks.py), for
    operations.files to compare with what the host has."""
    return _templates().get_template(name).render(**variables)


@functools.cache
def _templates():
    """One environment per run: each template is compiled once, not once per host."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    env.filters.update(TEMPLATE_FILTERS)
    return env
