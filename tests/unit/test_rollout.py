"""The rollout's pure decisions: batches, the failure budget, what the load balancer drains."""

import pytest

from asgi_fleet import rollout

from asgi_fleet.rollout import LbApp
from test_templates import render

HOSTS = [f"web{n}" for n in range(1, 9)]


@pytest.mark.parametrize("batch, expected", [
    (1, [[h] for h in HOSTS]),
    (2, [HOSTS[0:2], HOSTS[2:4], HOSTS[4:6], HOSTS[6:8]]),
    (3, [HOSTS[0:3], HOSTS[3:6], HOSTS[6:8]]),
    ("25%", [HOSTS[0:2], HOSTS[2:4], HOSTS[4:6], HOSTS[6:8]]),
    ("10%", [[h] for h in HOSTS]),  # never an empty batch
    ("100%", [HOSTS]),
    (50, [HOSTS]),
])
def test_batches_follow_inventory_order(batch, expected):
    assert rollout.batches(HOSTS, batch) == expected


def test_batches_are_deterministic_and_keep_every_host_once():
    shuffled = ["web3", "web1", "web2"]
    assert rollout.batches(shuffled, 2) == [["web3", "web1"], ["web2"]]
    assert rollout.batches([], 2) == []


@pytest.mark.parametrize("budget, total, expected", [(0, 8, 0), (2, 8, 2), ("25%", 8, 2),
                                                     ("10%", 8, 0), ("0%", 3, 0)])
def test_failure_budget(budget, total, expected):
    assert rollout.failure_budget(budget, total) == expected


def test_the_rollout_stops_once_failures_exceed_the_budget():
    assert rollout.halt_reason([], 0) is None
    assert rollout.halt_reason(["web2"], 1) is None
    reason = rollout.halt_reason(["web2", "web1"], 1)
    assert reason == "2 hosts failed (web1, web2); the failure budget (rollout_max_failures) allows 1"
    assert "1 host failed (web1)" in rollout.halt_reason(["web1"], 0)


def test_draining_a_batch_leaves_the_others_and_never_the_last_server():
    servers = {"hello": ["web1", "web2", "web3"], "shop": ["web1"]}
    assert rollout.drained_upstreams(["web1"], servers) == {"hello": ["web2", "web3"]}
    assert rollout.drained_upstreams(["web1", "web2", "web3"], servers) == {}
    assert rollout.drained_upstreams(["web4"], servers) == {}


def test_lb_apps_take_each_apps_port_and_skip_unix_sockets():
    apps = rollout.lb_apps([
        ("@docker/web1", "web1", {"hello": "0.0.0.0:8000", "shop": "0.0.0.0:8001"}),
        ("web2", "10.0.0.2", {"hello": "0.0.0.0:8000", "admin": "unix:/run/admin.sock"}),
    ])
    assert apps == [LbApp("hello", 8000, {"@docker/web1": "web1:8000", "web2": "10.0.0.2:8000"}),
                    LbApp("shop", 8001, {"@docker/web1": "web1:8001"})]


def test_the_nginx_config_has_an_upstream_without_each_batch_switched_by_its_flag():
    apps = rollout.lb_apps([(h, h, {"hello": "0.0.0.0:8000"}) for h in ("web1", "web2", "web3")])
    config = rollout.lb_config(apps, rollout.batches(["web1", "web2", "web3"], 2))
    assert config == [{"name": "hello", "port": 8000,
                       "servers": ["web1:8000", "web2:8000", "web3:8000"], "kept_out": [],
                       "drains": [{"batch": 1, "flag": "/run/asgi-fleet-lb/hello.drain-batch-1",
                                   "servers": ["web3:8000"]},
                                  {"batch": 2, "flag": "/run/asgi-fleet-lb/hello.drain-batch-2",
                                   "servers": ["web1:8000", "web2:8000"]}]}]
    text = render("nginx-lb.conf.j2", apps=config, keepalive=16, idle_ms=4000)
    assert "upstream hello-without-batch-1 {\n    server web3:8000" in text
    assert f"if (-f /run/asgi-fleet-lb/{rollout.drain_flag('hello', 2)})" in text
    assert "set $asgi_fleet_upstream hello-without-batch-2;" in text
    assert "listen 8000;" in text and "proxy_pass http://$asgi_fleet_upstream;" in text
    assert text.count("keepalive 16;") == 3  # the app's upstream and each drain's
    assert text.count("keepalive_timeout 4000ms;") == 3
    # WebSockets pass: HTTP/1.1, with the client's Upgrade, and Connection from it
    assert "proxy_http_version 1.1;" in text and "proxy_set_header Upgrade $http_upgrade;" in text
    assert "proxy_set_header Connection $asgi_fleet_connection;" in text
    assert text.count("{") == text.count("}")


def test_a_host_kept_out_is_in_no_upstream_and_no_drain_brings_it_back():
    hosts = ["web1", "web2", "web3", "web4"]
    apps = rollout.lb_apps([(h, h, {"hello": "0.0.0.0:8000"}) for h in hosts])
    config = rollout.lb_config(apps, rollout.batches(hosts, 1), {"hello": ["web1"]})[0]
    assert config["servers"] == ["web2:8000", "web3:8000", "web4:8000"]
    assert config["kept_out"] == ["web1"]
    # batch 1 holds only the kept-out host: nothing to drain; every other drain leaves web1 out
    assert [d["batch"] for d in config["drains"]] == [2, 3, 4]
    assert all("web1:8000" not in d["servers"] for d in config["drains"])
    text = render("nginx-lb.conf.j2", apps=[config], keepalive=0, idle_ms=4000)
    assert "server web1:8000" not in text and "# kept out of rotation after a failed deploy: web1" in text


@pytest.mark.parametrize("keepalives, idle_ms", [
    ([5], 4000), ([5, 2, 30], 1000), ([1], 500), ([3, 1], 500), ([300], 299000), ([], 500)])
def test_nginx_closes_an_idle_connection_before_any_app_behind_it_would(keepalives, idle_ms):
    assert rollout.lb_idle_ms(keepalives) == idle_ms
    if keepalives:
        assert 0 < rollout.lb_idle_ms(keepalives) < min(keepalives) * 1000


def test_an_app_whose_every_host_is_kept_out_keeps_them_all():
    apps = rollout.lb_apps([("web1", "web1", {"shop": "0.0.0.0:8001"})])
    assert rollout.lb_config(apps, [["web1"]], {"shop": ["web1"]})[0]["servers"] == ["web1:8001"]


def test_broken_goes_out_whatever_its_batch_and_comes_back_only_when_healthy():
    hosts = ["web1", "web2", "web3"]
    apps = rollout.lb_apps([(h, h, {"hello": "0.0.0.0:8000", "shop": "0.0.0.0:8001"}) for h in hosts])
    out = rollout.kept_out_after({}, apps, healthy={("web2", "hello")}, broken={("web1", "hello")})
    assert out == {"hello": ["web1"]}
    # the next run: web1 not activated (rollout stopped, or outside a --limit) stays out
    assert rollout.kept_out_after(out, apps, healthy={("web2", "hello")}, broken=set()) == out
    # found healthy: back in; a host that left the inventory leaves the record
    assert rollout.kept_out_after({"hello": ["web1", "gone"]}, apps, healthy={("web1", "hello")},
                                  broken=set()) == {}
    assert rollout.kept_out_after({"hello": ["gone"]}, apps, set(), set()) == {}


def test_the_summary_has_a_row_per_host_and_app():
    rows = rollout.summary_rows({
        "web1": {"status": "failed", "apps": {"hello": {
            "batch": 1, "old_release": "aaa", "release": "bbb", "activation": "reload",
            "health": "rolled back", "seconds": 12.34}}},
        "lb": {"status": "ok", "role": "lb", "apps": {}},
        "web9": {"status": "unreachable", "apps": {}},
    })
    assert rows == [("web1", "hello", "1", "aaa", "bbb", "reload", "rolled back", "12.3"),
                    ("web9", "-", "-", "-", "-", "-", "unreachable", "-")]


def a_rollout(tmp_path, budget=1, load_balancers=("lb1",)):
    from asgi_fleet.record import RunRecord

    apps = rollout.lb_apps([(h, h, {"hello": "0.0.0.0:8000"}) for h in ("web1", "web2", "web3")])
    return rollout.Rollout(app_hosts=["web1", "web2", "web3"], batches=[["web1"], ["web2"], ["web3"]],
                           budget=budget, lb_apps=apps, targeted=["web1", "web2", "web3"],
                           load_balancers=list(load_balancers),
                           record=RunRecord(tmp_path / "last-run.json"))


def test_a_failed_load_balancer_halts_the_rollout_and_the_record_says_why(tmp_path):
    run = a_rollout(tmp_path)
    assert run.halted({"web1"}) is None  # within the failure budget
    assert run.halted({"lb1"}) == "the load balancer failed (lb1)"
    assert "2 hosts failed" in run.halted({"web1", "web2"})
    assert run.record.rollout["halted"] == "the load balancer failed (lb1)"  # the first reason stays


def test_a_batch_is_drained_only_where_it_changes_and_never_once_halted(tmp_path):
    run = a_rollout(tmp_path)
    entry = run.record.host("web2")["apps"]
    entry["hello"] = {"activation": "none"}
    assert run.drains(2, failed=set()) == set()  # nothing to activate: stays in rotation
    entry["hello"] = {"activation": "reload"}
    assert run.drains(2, failed=set()) == {rollout.drain_flag("hello", 2)}
    assert run.drains(2, failed={"web1", "web3"}) == set()  # over budget: nothing more is drained


def test_the_gate_verdicts_keep_the_broken_out_and_bring_the_healed_back(tmp_path):
    run = a_rollout(tmp_path)
    run.record.host("web1")["apps"]["hello"] = {"health": "rollback failed"}
    run.record.host("web2")["apps"]["hello"] = {"health": "healthy"}
    run.record.host("web3")["apps"]["hello"] = {"health": "rolled back"}  # healthy on its old release
    assert run.kept_out({"hello": ["web2", "web3"]}) == {"hello": ["web1", "web3"]}


def test_the_percent_grammar_is_one_for_batches_budgets_and_settings():
    from asgi_fleet.settings import RULES

    assert rollout.percent("25%") == 25 and rollout.percent("25") is None and rollout.percent(25) is None
    assert rollout.percent("25 %") is None and rollout.percent("٢٥%") is None  # ASCII digits only
    assert rollout.amount("50%", 5, at_least=1) == 2
    assert RULES["rollout_batch"].check("٢٥%") is not None
