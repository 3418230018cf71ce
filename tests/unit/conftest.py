import runpy

import pytest

from asgi_fleet.settings import PROJECT_ROOT


@pytest.fixture
def defaults():
    """group_data/all.py, as pyinfra loads it (public names only)."""
    loaded = runpy.run_path(str(PROJECT_ROOT / "group_data" / "all.py"))
    return {k: v for k, v in loaded.items() if not k.startswith("_")}
