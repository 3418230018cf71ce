"""Rolling activation across a fleet: the pure decisions, and the Rollout
that holds them for one run.

A deploy stages the new release on every host at once (no change to
traffic), then activates it batch by batch, in inventory order. These
functions decide the batches, when the rollout must stop, which hosts the
load balancer keeps out of rotation, and how the run is summed up.

The rollout's vocabularies are spelled here once: the load balancers' group,
the "N%" grammar, host short names, the drain flags and their directory, the
verdicts that keep a host out of rotation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

LB_GROUP = "lb"  # the inventory group of load balancers
FLAG_DIR = "/run/asgi-fleet-lb"  # on a load balancer: the drain flags nginx looks for
# Who is kept out of rotation after a failed deploy ({app: [host names]}): on
# disk, not in /run, so that neither a reboot nor the next run puts a broken
# host back; only a deploy that finds it healthy does.
KEPT_OUT_FILE = "/var/lib/asgi-fleet-lb/kept-out.json"
NGINX_CONF = "/etc/nginx/conf.d/asgi-fleet.conf"
# An activation's outcomes that leave the app not serving healthily on any
# release: the load balancer keeps such a host out of rotation.
BROKEN = ("failed", "rollback failed", "unreachable")
NOT_ACTIVATED = ("none", None)  # a host that changes nothing (or is not known to) is not drained

PERCENT_RE = re.compile(r"(\d+)%", re.ASCII)  # "N%" of the fleet: rollout_batch, rollout_max_failures


def percent(value) -> int | None:
    """The N of an "N%" amount (None: not one)."""
    match = PERCENT_RE.fullmatch(value) if isinstance(value, str) else None
    return int(match.group(1)) if match else None


def amount(value: int | str, total: int, *, at_least: int) -> int:
    """A count, or "N%" of `total` (rounded down), never below `at_least`."""
    share = percent(value)
    count = math.floor(total * share / 100) if share is not None else int(value)
    return max(at_least, count)


def short_name(name: str) -> str:
    """A host's name without its connector ("@docker/asgi-web1" -> "asgi-web1")."""
    return name.rsplit("/", 1)[-1]


def batches(hosts: list[str], batch: int | str) -> list[list[str]]:
    """The hosts in activation order: consecutive groups of `batch` (a count or
    "N%" of the fleet, at least one host), in the order given (inventory order)."""
    size = amount(batch, len(hosts), at_least=1)
    return [hosts[i:i + size] for i in range(0, len(hosts), size)]


def failure_budget(max_failures: int | str, total: int) -> int:
    """How many app hosts may fail before the rollout stops (a count or "N%")."""
    return amount(max_failures, total, at_least=0)


def halt_reason(failed: Iterable[str], budget: int) -> str | None:
    """Why the rollout must stop now, or None while failures are within budget."""
    failed = sorted(failed)
    if len(failed) <= budget:
        return None
    return (f"{len(failed)} host{'s' if len(failed) > 1 else ''} failed ({', '.join(failed)}); "
            f"the failure budget (rollout_max_failures) allows {budget}")


def drained_upstreams(batch: list[str], servers: dict[str, list[str]]) -> dict[str, list[str]]:
    """For each app the load balancer fronts, the servers left in rotation while
    `batch` is drained. An app whose every server is in the batch is not drained
    (nothing else would serve it; its socket queues requests during a restart)."""
    left = {}
    for app, hosts in servers.items():
        remaining = [h for h in hosts if h not in batch]
        if remaining and len(remaining) < len(hosts):
            left[app] = remaining
    return left


@dataclass(frozen=True)
class LbApp:
    """An app the load balancer fronts: its port and, in inventory order, the
    app hosts that run it ({host name: "address:port"})."""

    name: str
    port: int
    servers: dict[str, str]


def lb_apps(hosts: list[tuple[str, str, dict[str, str]]]) -> list[LbApp]:
    """The apps to front, from (host name, address, {app name: bind}) per app host.

    Each app listens on the port of its bind; apps bound to a unix socket
    cannot be reached from another host and are left out.
    """
    ports: dict[str, int] = {}
    servers: dict[str, dict[str, str]] = {}
    for name, address, binds in hosts:
        for app, bind in binds.items():
            if bind.startswith("unix:"):
                continue
            port = int(bind.rpartition(":")[2])
            ports.setdefault(app, port)
            servers.setdefault(app, {})[name] = f"{address}:{port}"
    return [LbApp(app, ports[app], servers[app]) for app in ports]


def lb_idle_ms(app_keepalives: Iterable[int]) -> int:
    """How long (ms) nginx keeps an idle connection to an app host: shorter
    than the shortest keep-alive timeout of the apps behind it.

    Whoever closes an idle keep-alive connection races the other side's next
    request on it. If the app's timer fires first, a request nginx is just
    sending gets a reset; nginx retries a GET on the next server but, rightly,
    not a POST, which fails with 502. So nginx closes first: a second before
    the app would (its timer starts a little later than the app's, once it has
    read the response), or at half the app's timeout when that is under 2 s.
    """
    shortest = min(app_keepalives, default=1) * 1000
    return max(shortest - 1000, shortest // 2)


def drain_flag(app: str, batch_number: int) -> str:
    """The flag file (in FLAG_DIR) that takes batch `batch_number` (from 1) of
    `app` out of rotation."""
    return f"{app}.drain-batch-{batch_number}"


def in_rotation(app: LbApp, kept_out: dict[str, list[str]]) -> list[str]:
    """The hosts of `app` the load balancer sends requests to: every one but
    those kept out after a failed deploy. If that would leave none, all of them
    (an app with no server at all answers nothing; a sick one may answer some)."""
    left = [h for h in app.servers if h not in kept_out.get(app.name, ())]
    return left or list(app.servers)


def lb_config(apps: list[LbApp], batches: list[list[str]],
              kept_out: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """What templates/nginx-lb.conf.j2 renders: each app with its servers in
    rotation, those kept out, and, per batch that can be drained, the servers
    that stay in rotation while it is."""
    config = []
    for app in apps:
        serving = in_rotation(app, kept_out or {})
        drains = []
        for number, batch in enumerate(batches, start=1):
            left = drained_upstreams(batch, {app.name: serving})
            if app.name in left:
                drains.append({"batch": number, "flag": f"{FLAG_DIR}/{drain_flag(app.name, number)}",
                               "servers": [app.servers[h] for h in left[app.name]]})
        config.append({"name": app.name, "port": app.port,
                       "servers": [app.servers[h] for h in serving],
                       "kept_out": [h for h in app.servers if h not in serving],
                       "drains": drains})
    return config


def kept_out_after(recorded: dict[str, list[str]], apps: list[LbApp],
                   healthy: set[tuple[str, str]], broken: set[tuple[str, str]]) -> dict[str, list[str]]:
    """Who stays out of rotation, from the load balancer's record and this run.

    A (host, app) that failed and is not healthy on its old release (`broken`)
    goes out, whatever batch it was in; one recorded out comes back only once
    a deploy finds it healthy. Hosts and apps no longer in the fleet drop out
    of the record.
    """
    out = {}
    for app in apps:
        hosts = [h for h in app.servers
                 if (h, app.name) in broken
                 or (h in recorded.get(app.name, ()) and (h, app.name) not in healthy)]
        if hosts:
            out[app.name] = hosts
    return out


@dataclass(frozen=True)
class Rollout:
    """One run's rolling activation, as Kamal's Boot#run holds one host's:
    the batches and the failure budget, the load balancer's drain and return,
    the gate verdicts, and the run's record they are read from and told to.

    The batches and what the load balancer fronts come from the whole
    inventory (`app_hosts`), so that a --limit changes what is activated
    (`targeted`), never what the load balancer fronts.
    """

    app_hosts: list[str]
    batches: list[list[str]]
    budget: int  # app hosts that may fail before the rollout stops
    lb_apps: list[LbApp]
    targeted: list[str]
    load_balancers: list[str]  # those of this run
    record: Any  # record.RunRecord: each host's plan and verdict, as the run goes
    lb_keepalive: int = 0  # idle connections nginx keeps to each upstream (the lb_keepalive setting)
    lb_idle_ms: int = 1000  # how long nginx keeps one idle (lb_idle_ms() of the apps' keepalive)

    def title(self, number: int) -> str:
        batch = self.batches[number - 1]
        return f"Batch {number}/{len(self.batches)} ({', '.join(short_name(h) for h in batch)})"

    def activates(self, host: str, number: int) -> bool:
        """Whether this run activates `host` in batch `number`."""
        return host in self.batches[number - 1] and host in self.targeted

    def halted(self, failed: set[str]) -> str | None:
        """Why the rollout stops now that `failed` hosts failed (None: go on); told to the record."""
        lbs = [h for h in self.load_balancers if h in failed]
        if lbs:  # a load balancer that failed can no longer drain nor keep a broken host out
            reason = f"the load balancer failed ({', '.join(lbs)})"
        else:
            reason = halt_reason([h for h in self.targeted if h in failed], self.budget)
        self.record.halted(reason)
        return reason

    def drains(self, number: int, failed: set[str]) -> set[str]:
        """The drain flags to raise for batch `number`: for each app, if any of
        the batch's hosts this run activates will change (none once halted)."""
        if self.halted(failed):
            return set()
        return {drain_flag(app.name, number) for app in self.lb_apps
                if any(self.record.activation(h, app.name) not in NOT_ACTIVATED
                       for h in app.servers if self.activates(h, number))}

    def kept_out(self, recorded: dict[str, list[str]]) -> dict[str, list[str]]:
        """Who the load balancer keeps out of rotation from now, from its
        record and this run's verdicts so far (kept_out_after)."""
        verdicts = {(h, app.name): self.record.health(h, app.name)
                    for app in self.lb_apps for h in app.servers if h in self.targeted}
        return kept_out_after(
            recorded, self.lb_apps,
            healthy={key for key, health in verdicts.items() if health == "healthy"},
            broken={key for key, health in verdicts.items() if health in BROKEN})

    def lb_config(self, kept_out: dict[str, list[str]]) -> list[dict[str, Any]]:
        """What the load balancer's nginx config renders, with `kept_out` out of rotation."""
        return lb_config(self.lb_apps, self.batches, kept_out)


SUMMARY_COLUMNS = ("host", "app", "batch", "old release", "new release", "activation", "health",
                   "seconds")


def summary_rows(hosts: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    """One row per host and app from the run's record (record.RunRecord.hosts)."""
    rows = []
    for name, entry in hosts.items():
        apps = entry.get("apps") or {}
        if not apps:
            if entry.get("role") == "lb":
                continue
            rows.append((name, "-", "-", "-", "-", "-", entry.get("status", "?"), "-"))
            continue
        for app, info in apps.items():
            seconds = info.get("seconds")
            rows.append((
                name, app, str(info.get("batch", "-")), info.get("old_release") or "-",
                info.get("release") or "-", info.get("activation", "-"),
                info.get("health") or entry.get("status", "?"),
                f"{seconds:.1f}" if isinstance(seconds, (int, float)) else "-",
            ))
    return rows
