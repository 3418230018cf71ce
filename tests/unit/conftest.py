import importlib
import runpy
import sys

import pytest
from hypothesis import settings

from asgi_fleet.release import WORKER_MODULES
from asgi_fleet.settings import PROJECT_ROOT

# The modules asgi-fleet installs into each app virtualenv, importable under
# the names they have there (a rendered gunicorn.conf.py imports them).
for _name, _source in WORKER_MODULES.items():
    sys.modules.setdefault(_name, importlib.import_module(f"asgi_fleet.{_source.stem}"))

# These machines are shared and noisy, and a first example may pay for an import
# (pyinfra's CLI takes ~0.3 s): a property is about values, never about time.
settings.register_profile("asgi-fleet", deadline=None)
settings.load_profile("asgi-fleet")


@pytest.fixture
def defaults():
    """group_data/all.py, as pyinfra loads it (public names only)."""
    loaded = runpy.run_path(str(PROJECT_ROOT / "group_data" / "all.py"))
    return {k: v for k, v in loaded.items() if not k.startswith("_")}
