"""The filters of asgi-fleet's templates (asgi_fleet/sinks.py TEMPLATE_FILTERS),
so that the Ansible playbook renders the very same templates/*.j2.

Ansible runs from its own virtualenv (bench/.venv-ansible), without asgi-fleet
installed: sinks.py (standard library only) is loaded from the checkout.
"""

import importlib.util
from pathlib import Path

_SINKS = Path(__file__).resolve().parents[3] / "asgi_fleet" / "sinks.py"
_spec = importlib.util.spec_from_file_location("asgi_fleet_sinks", _SINKS)
_sinks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sinks)


class FilterModule:
    def filters(self):
        return dict(_sinks.TEMPLATE_FILTERS)
