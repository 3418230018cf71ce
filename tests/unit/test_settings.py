import re
from dataclasses import fields

import pytest

from asgi_fleet.settings import PROJECT_ROOT, RULES, InvalidSettings, Settings, app_settings


def problems(data):
    with pytest.raises(InvalidSettings) as raised:
        app_settings(data, "web1")
    return raised.value.problems


def test_defaults_are_valid(defaults):
    [app] = app_settings(defaults, "web1")
    assert app.app_name == "hello"


def test_every_tunable_has_a_rule_a_typed_field_and_a_commented_default(defaults):
    assert set(defaults) == set(RULES)
    assert [f.name for f in fields(Settings)] == list(RULES)  # in the same order, too
    text = (PROJECT_ROOT / "group_data" / "all.py").read_text()
    for key in RULES:
        line = re.search(rf"^{key} = .*$", text, re.M)
        assert line, f"{key} has no default line"
        above = text[: line.start()].rstrip().splitlines()[-1]
        assert "#" in line.group(0) or above.startswith("#"), f"{key} has no comment"


@pytest.mark.parametrize("key, value, allowed", [
    ("timeout", 0, "must be an integer from 1 to 3600"),
    ("timeout", "30", "must be an integer from 1 to 3600"),
    ("workers", True, "must be None or an integer from 1 to 256"),
    ("worker_policy", "lots", "must be one of 'cores', 'cores+1', '2*cores+1'"),
    ("worker_class", "sync", "one of gunicorn's WSGI workers"),
    ("worker_class", "uvicorn_worker", "or the dotted path of a worker class"),
    ("bind", "localhost:8000", "must be HOST:PORT"),
    ("bind", "0.0.0.0:70000", "must be HOST:PORT"),
    ("app_name", "Shop App", "must be a string made of"),
    ("app_module", "app", "must be a string made of"),
    ("app_name", "hello-preflight", "must not end in '-preflight'"),
    ("app_name", "hello\n", "must be a string made of"),
    ("app_source", "no/such/dir", "must be a directory on the controller"),
    ("app_env", {"BAD-NAME": "x"}, "must be a dict of NAME: string"),
    ("forwarded_allow_ips", "proxy.local", "must be '*' or a comma-separated list"),
    ("health_path", "healthz", "must be a string made of"),
    ("rollout_batch", 0, "must be an integer from 1 to 10000 or a percentage"),
    ("rollout_batch", "0%", "(above 0%)"),
    ("rollout_batch", "half", "like \"25%\""),
    ("rollout_max_failures", "120%", "or a percentage of the fleet"),
    ("health_consecutive", 0, "must be an integer from 1 to 100"),
])
def test_a_bad_value_names_the_key_the_value_and_what_is_allowed(defaults, key, value, allowed):
    [problem] = problems(defaults | {key: value})
    assert problem.startswith(f"web1: {key}={value!r}: ")
    assert allowed in problem


def test_graceful_timeout_may_not_exceed_timeout(defaults):
    [problem] = problems(defaults | {"timeout": 10, "graceful_timeout": 20})
    assert problem.startswith("web1: graceful_timeout=20: must be <= timeout (10)")


def test_all_problems_are_reported_at_once(defaults):
    assert len(problems(defaults | {"timeout": -1, "keepalive": 0, "bind": "x"})) == 3


def test_two_apps_inherit_host_settings_and_override_their_own(defaults):
    data = defaults | {"timeout": 60, "apps": [
        {"app_name": "hello"}, {"app_name": "shop", "bind": "0.0.0.0:8001"}]}
    hello, shop = app_settings(data, "web1")
    assert (hello.bind, shop.bind) == ("0.0.0.0:8000", "0.0.0.0:8001")
    assert hello.timeout == shop.timeout == 60


def test_two_apps_may_not_share_a_name_or_a_bind(defaults):
    found = problems(defaults | {"apps": [{"app_name": "hello"}, {"app_name": "shop"}]})
    assert found == ["web1: apps: bind='0.0.0.0:8000' and bind='0.0.0.0:8000' listen on the same "
                     "address; each app needs its own"]


def test_a_bad_per_app_value_names_the_app(defaults):
    found = problems(defaults | {"apps": [{"app_name": "shop", "timeout": 0}]})
    assert found == ["web1/shop: timeout=0: must be an integer from 1 to 3600"]


def test_host_wide_and_unknown_keys_are_not_per_app(defaults):
    found = problems(defaults | {"apps": [{"app_name": "shop", "apt_cache_time": 1, "colour": 1}]})
    assert "web1/shop: apps: 'apt_cache_time' is not a per-app setting" in found
    assert "web1/shop: apps: 'colour' is not a per-app setting" in found


def test_apps_must_be_a_list_of_named_dicts(defaults):
    [problem] = problems(defaults | {"apps": [{"bind": "0.0.0.0:1"}]})
    assert problem.startswith("web1: apps=")


def test_gunicorns_asgi_worker_is_a_worker_class_its_wsgi_ones_are_not(defaults):
    from asgi_fleet.settings import worker_class_path

    [app] = app_settings(defaults | {"worker_class": "asgi"}, "web1")
    assert worker_class_path(app.worker_class) == "gunicorn.workers.gasgi.ASGIWorker"
    with pytest.raises(InvalidSettings, match="'gthread' is one of gunicorn's WSGI workers"):
        app_settings(defaults | {"worker_class": "gthread"}, "web1")
