"""Picking hosts the way pyinfra's --limit does (asgi_fleet.inventory.limited)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from asgi_fleet.inventory import InventoryError, InventoryHost, limited

HOSTS = [InventoryHost("@docker/asgi-web1", {}, ("app", "docker")),
         InventoryHost("@docker/asgi-web2", {}, ("app", "docker")),
         InventoryHost("asgi-web3", {}, ("app",)),
         InventoryHost("@docker/asgi-lb", {}, ("docker", "lb"))]


def names(hosts):
    return [h.name.removeprefix("@docker/") for h in hosts]


@pytest.mark.parametrize("patterns, picked", [
    ((), ["asgi-web1", "asgi-web2", "asgi-web3", "asgi-lb"]),
    (("asgi-web1",), ["asgi-web1"]),
    (("@docker/asgi-web1", "asgi-lb"), ["asgi-web1", "asgi-lb"]),
    (("asgi-web[23]",), ["asgi-web2", "asgi-web3"]),
    (("lb", "asgi-web3"), ["asgi-web3", "asgi-lb"]),  # inventory order, not the patterns'
    (("docker",), ["asgi-web1", "asgi-web2", "asgi-lb"]),
    (("asgi-web1", "asgi-web*"), ["asgi-web1", "asgi-web2", "asgi-web3"]),  # each host once
])
def test_a_limit_picks_by_name_pattern_or_group(patterns, picked):
    assert names(limited(HOSTS, patterns)) == picked


@pytest.mark.parametrize("patterns", [("asgi-web9",), ("asgi-web1", "asgi-wbe2"), ("APP",), ("web1",)])
def test_a_limit_that_picks_no_host_is_an_error_naming_it_and_what_there_is(patterns):
    with pytest.raises(InventoryError) as error:
        limited(HOSTS, patterns)
    message = str(error.value)
    assert repr(patterns[-1]) in message and "asgi-web1, asgi-web2, asgi-web3, docker, lb" in message


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=3))
def test_any_limit_picks_a_subset_in_inventory_order_or_names_what_matched_nothing(patterns):
    try:
        picked = limited(HOSTS, patterns)
    except InventoryError as error:
        assert "--limit " in str(error)
        return
    assert picked and [h for h in HOSTS if h in picked] == picked
