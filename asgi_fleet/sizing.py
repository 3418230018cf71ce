"""How many Gunicorn workers a host should run.

`nproc --all`, `getconf _NPROCESSORS_ONLN` and pyinfra's `Cpus` fact report the
machine's online CPUs. A service may be allowed far fewer: a CPU affinity mask
(taskset, cpuset, `docker --cpuset-cpus`) and a cgroup CPU quota (`cpu.max` on
cgroup v2, `cpu.cfs_quota_us` on v1, e.g. `docker --cpus`, systemd CPUQuota=)
both cap it. Memory is capped the same way by `memory.max` /
`memory.limit_in_bytes`. The probe below reports all of them; the functions
here turn the report into a worker count, with no host involved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asgi_fleet.settings import Settings

# Runs on the host (POSIX sh, coreutils only). One "key args..." line per
# finding. The cgroup walk goes from the probe's own cgroup up to the root,
# because a limit set on any ancestor applies (docker sets it on the
# container's cgroup, systemd on a slice).
RESOURCES_PROBE = r"""
echo "online $(getconf _NPROCESSORS_ONLN)"
echo "affinity $(nproc)"
awk '/^MemTotal:/ {print "mem_total_kb " $2}' /proc/meminfo
walk() {  # walk MOUNT CGROUP_PATH FILE...
    mount=$1; path=$2; shift 2
    while :; do
        for f in "$@"; do
            [ -r "$mount$path/$f" ] && echo "cg $f $(cat "$mount$path/$f")"
        done
        [ -z "$path" ] || [ "$path" = / ] && break
        path=${path%/*}
    done
}
while IFS=: read -r _ controllers path; do
    case ",$controllers," in
        ,,) walk /sys/fs/cgroup "$path" cpu.max memory.max ;;
        *,cpu,*) walk "/sys/fs/cgroup/$controllers" "$path" cpu.cfs_quota_us cpu.cfs_period_us ;;
        *,memory,*) walk /sys/fs/cgroup/memory "$path" memory.limit_in_bytes ;;
    esac
done < /proc/self/cgroup
true
"""

# Policies: how many workers per usable CPU. Each Uvicorn worker is one event
# loop on one core, so async workers saturate a core each; more workers than
# cores only add context switches and memory (see group_data/all.py).
WORKER_POLICIES = {
    "cores": lambda cpus: cpus,  # one event loop per usable core
    "cores+1": lambda cpus: cpus + 1,  # one spare for a loop blocked on sync code
    "2*cores+1": lambda cpus: 2 * cpus + 1,  # gunicorn's advice for *sync* workers
}


@dataclass(frozen=True)
class HostResources:
    """What the probe found on one host."""

    online_cpus: int
    affinity_cpus: int
    quota_cpus: float | None  # None: no CPU quota anywhere up the cgroup tree
    memory_mb: int  # the smaller of physical memory and any cgroup memory limit

    @property
    def usable_cpus(self) -> int:
        """Whole CPUs the service may really use (at least 1).

        A quota of 1.5 CPUs gives 1: a second event loop would be throttled
        for half of every period, which is worse than not having it.
        """
        cpus = min(self.online_cpus, self.affinity_cpus)
        if self.quota_cpus is not None:
            cpus = min(cpus, math.floor(self.quota_cpus))
        return max(1, cpus)


def parse_resources(output: str) -> HostResources:
    """Parse RESOURCES_PROBE's output into HostResources."""
    online = affinity = None
    mem_kb = None
    quotas: list[float] = []
    mem_limits: list[int] = []
    v1_quota: int | None = None
    for line in output.splitlines():
        key, _, rest = line.strip().partition(" ")
        if key == "online":
            online = int(rest)
        elif key == "affinity":
            affinity = int(rest)
        elif key == "mem_total_kb":
            mem_kb = int(rest)
        elif key == "cg":
            name, _, value = rest.partition(" ")
            value = value.strip()
            if name == "cpu.max":  # "max 100000" or "150000 100000"
                quota, _, period = value.partition(" ")
                if quota != "max":
                    quotas.append(int(quota) / int(period))
            elif name == "cpu.cfs_quota_us":
                v1_quota = int(value)  # its period follows on the next line
            elif name == "cpu.cfs_period_us":
                if v1_quota is not None and v1_quota > 0:
                    quotas.append(v1_quota / int(value))
                v1_quota = None
            elif name in ("memory.max", "memory.limit_in_bytes") and value != "max":
                mem_limits.append(int(value) // (1024 * 1024))
    if online is None or affinity is None or mem_kb is None:
        raise ValueError(f"incomplete resources probe output: {output!r}")
    return HostResources(
        online_cpus=online,
        affinity_cpus=affinity,
        quota_cpus=min(quotas) if quotas else None,
        memory_mb=min([mem_kb // 1024, *mem_limits]),
    )


def resources_from_agent(found: dict) -> HostResources:
    """HostResources from the agent's `state` document (its "resources")."""
    if found.get("mem_total_kb") is None:
        raise ValueError(f"incomplete resources from the agent: {found!r}")
    return HostResources(
        online_cpus=found["online_cpus"],
        affinity_cpus=found["affinity_cpus"],
        quota_cpus=min(found["cpu_quotas"]) if found["cpu_quotas"] else None,
        memory_mb=min([found["mem_total_kb"] // 1024, *found["memory_limits_mb"]]),
    )


@dataclass(frozen=True)
class WorkerPlan:
    count: int
    reason: str  # one line an operator can read in the summary


def worker_count(
    resources: HostResources,
    *,
    policy: str = "cores",
    worker_memory_mb: int = 256,
    memory_reserve_mb: int = 256,
    override: int | None = None,
) -> WorkerPlan:
    """The number of workers for a host, and why.

    An explicit override wins over everything. Otherwise the policy gives a
    count from the usable CPUs, and the memory budget caps it: each worker
    may take worker_memory_mb out of what is left after memory_reserve_mb.
    There is always at least one worker.
    """
    if override is not None:
        return WorkerPlan(override, f"workers={override} set explicitly")
    cpus = resources.usable_cpus
    by_cpu = WORKER_POLICIES[policy](cpus)
    by_memory = max(1, (resources.memory_mb - memory_reserve_mb) // worker_memory_mb)
    if by_memory < by_cpu:
        return WorkerPlan(
            by_memory,
            f"{policy} on {cpus} usable CPUs gives {by_cpu}, capped to {by_memory} by "
            f"memory ({resources.memory_mb} MB - {memory_reserve_mb} MB reserve, "
            f"{worker_memory_mb} MB per worker)",
        )
    return WorkerPlan(by_cpu, f"{policy} on {cpus} usable CPUs")


def app_worker_plan(resources: HostResources, app: Settings) -> WorkerPlan:
    """worker_count with an app's settings: what the deploy writes and verify expects."""
    return worker_count(resources, policy=app.worker_policy,
                        worker_memory_mb=app.worker_memory_mb,
                        memory_reserve_mb=app.memory_reserve_mb, override=app.workers)
