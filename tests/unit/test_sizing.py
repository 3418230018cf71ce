from dataclasses import replace

import pytest

from asgi_fleet.sizing import HostResources, parse_resources, worker_count

V2_DOCKER_CPUS_1_5 = """\
online 8
affinity 8
mem_total_kb 16384000
cg cpu.max max 100000
cg memory.max max
cg cpu.max 150000 100000
cg memory.max 1073741824
cg cpu.max max 100000
cg memory.max max
"""

V1_CPUSET_0 = """\
online 2
affinity 1
mem_total_kb 24576000
cg cpu.cfs_quota_us -1
cg cpu.cfs_period_us 100000
cg cpu.cfs_quota_us 100000
cg cpu.cfs_period_us 100000
cg cpu.cfs_quota_us -1
cg cpu.cfs_period_us 100000
cg memory.limit_in_bytes 9223372036854771712
"""


def resources(cpus=2, affinity=None, quota=None, memory_mb=8192):
    return HostResources(online_cpus=cpus, affinity_cpus=affinity or cpus, quota_cpus=quota,
                         memory_mb=memory_mb)


def test_parse_cgroup_v2_takes_the_tightest_quota_and_memory_limit_up_the_tree():
    found = parse_resources(V2_DOCKER_CPUS_1_5)
    assert found == HostResources(online_cpus=8, affinity_cpus=8, quota_cpus=1.5, memory_mb=1024)
    assert found.usable_cpus == 1


def test_parse_cgroup_v1_pairs_each_quota_with_its_period():
    found = parse_resources(V1_CPUSET_0)
    assert found.quota_cpus == 1.0
    assert found.affinity_cpus == 1
    assert found.memory_mb == 24000  # the v1 "no limit" value is larger than the host


def test_parse_without_cgroup_lines():
    found = parse_resources("online 4\naffinity 4\nmem_total_kb 2048000\n")
    assert found == HostResources(4, 4, None, 2000)


def test_parse_rejects_incomplete_output():
    with pytest.raises(ValueError, match="incomplete"):
        parse_resources("online 4\n")


@pytest.mark.parametrize("res, usable", [
    (resources(cpus=2), 2),
    (resources(cpus=2, affinity=1), 1),  # docker --cpuset-cpus=0, taskset
    (resources(cpus=16, quota=4.0), 4),  # docker --cpus=4, CPUQuota=400%
    (resources(cpus=16, quota=2.5), 2),  # a partial CPU is not a worker's worth
    (resources(cpus=16, quota=0.5), 1),  # never zero
])
def test_usable_cpus_respects_affinity_and_quota(res, usable):
    assert res.usable_cpus == usable


def test_default_policy_is_one_worker_per_usable_cpu():
    assert worker_count(resources(cpus=2)).count == 2
    assert worker_count(resources(cpus=2, affinity=1)).count == 1


@pytest.mark.parametrize("policy, expected", [("cores", 4), ("cores+1", 5), ("2*cores+1", 9)])
def test_policies(policy, expected):
    assert worker_count(resources(cpus=4), policy=policy).count == expected


def test_memory_budget_caps_the_count_and_says_why():
    plan = worker_count(resources(cpus=8, memory_mb=1024), worker_memory_mb=256,
                        memory_reserve_mb=256)
    assert plan.count == 3
    assert "capped to 3 by memory" in plan.reason


def test_memory_cap_never_goes_below_one_worker():
    assert worker_count(resources(cpus=8, memory_mb=100), memory_reserve_mb=256).count == 1


def test_override_wins():
    plan = worker_count(resources(cpus=1, memory_mb=100), override=6)
    assert plan.count == 6 and "explicitly" in plan.reason


def test_app_worker_plan_reads_every_sizing_setting(defaults):
    from asgi_fleet.settings import app_settings
    from asgi_fleet.sizing import app_worker_plan

    [app] = app_settings(defaults | {"worker_policy": "2*cores+1", "worker_memory_mb": 100,
                                     "memory_reserve_mb": 0, "workers": None})
    assert app_worker_plan(resources(cpus=2, memory_mb=8192), app).count == 5
    assert app_worker_plan(resources(cpus=2, memory_mb=300), app).count == 3
    assert app_worker_plan(resources(cpus=2), replace(app, workers=7)).count == 7
