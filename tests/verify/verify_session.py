"""The verification session's state: the inventory's hosts and apps, one
connection per host, one probe per app (so each fact is read once)."""

from __future__ import annotations

import functools

from asgi_fleet.inventory import InventoryHost, load_inventory
from asgi_fleet.settings import app_settings
from asgi_fleet.verify import AppProbe


@functools.cache
def inventory_hosts(path: str) -> list[InventoryHost]:
    return load_inventory(path)


@functools.cache
def load_balancers(path: str) -> list[InventoryHost]:
    return load_inventory(path, load_balancers=True)


def short(name: str) -> str:
    return name.removeprefix("@docker/")


def targets(path: str) -> list[tuple[InventoryHost, dict]]:
    return [(host, app) for host in inventory_hosts(path)
            for app in app_settings(host.data, host.name)]


_connections: dict[str, object] = {}
_probes: dict[tuple[str, str], AppProbe] = {}


def connect(host: InventoryHost):
    """A testinfra host, or the exception that says why it cannot be reached."""
    if host.name not in _connections:
        try:
            connection = host.testinfra_host()
            connection.check_output("true")
            _connections[host.name] = connection
        except Exception as error:  # any transport failure means unreachable
            _connections[host.name] = error
    return _connections[host.name]
