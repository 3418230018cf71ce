"""The async doctor: what blocks a live event loop, read off py-spy samples.

A uvicorn worker runs its event loop in its main thread. Sampled with
`py-spy record --idle` (speedscope format: one profile per thread, each
sample a stack from the root to the leaf, in time order), every sample of
that thread is one of:

- **poll**: the loop waits for I/O. With uvloop the leaf Python frame is
  asyncio's runner (the loop itself is C); with asyncio's own loop it is the
  selector's select();
- **loop**: loop, server or framework code runs (uvicorn, starlette, ...);
- **app**: a frame of the app's own code is on the stack. Nothing on the
  loop thread's stack is awaiting (a suspended coroutine has no frame), so
  app code there runs synchronously on the loop: every other connection of
  the worker waits for it. Its call site is the app frame nearest the leaf;
  what it calls is the frame above it, or, when the app frame is the leaf, a
  C function on that line (`time.sleep`, a C driver), read from the source.

A worker whose samples spend BLOCKED_SHARE or more in one app call site is
blocked there. A worker with less than TRAFFIC_SHARE of its samples outside
the poll had nothing to judge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BLOCKED_SHARE = 0.2  # of a worker's loop-thread samples, in one call site
TRAFFIC_SHARE = 0.02  # of the samples outside the poll: less is an idle worker
SAMPLE_RATE = 20  # py-spy samples per second: 2% of a saturated worker's throughput (bench/doctor_cost.py)

FIX = ("await an async client instead, or move the call off the loop: "
       "`await asyncio.to_thread(f, ...)`, `await anyio.to_thread.run_sync(f, ...)` or "
       "`await loop.run_in_executor(None, f, ...)`")

# Leaf frames of a loop waiting for I/O: (file suffix, function names or None for any)
_POLL_FRAMES = (
    ("/asyncio/runners.py", None),  # uvloop: its run_until_complete is C, below the runner
    ("/selectors.py", {"select", "EpollSelector.select", "BaseSelector.select"}),
    ("/asyncio/base_events.py", {"run_forever", "BaseEventLoop.run_forever", "_run_once",
                                 "BaseEventLoop._run_once", "run_until_complete",
                                 "BaseEventLoop.run_until_complete"}),
)


@dataclass(frozen=True)
class Frame:
    name: str
    file: str
    line: int

    @property
    def site(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class CallSite:
    """Where app code ran on the loop, and how often the samples found it there."""
    frame: Frame  # the app frame nearest the leaf
    callee: str  # what it was calling: "time.sleep(0.05)", "socket.recv (socket.py)"
    samples: int = 0
    share: float = 0.0


@dataclass
class LoopReport:
    """One worker's loop thread over one sampling run."""
    pid: int
    samples: int
    poll: int
    loop: int
    app: int
    seconds: float
    sites: list[CallSite] = field(default_factory=list)  # most samples first
    longest_stall: float = 0.0  # seconds: the longest run of samples in app code

    @property
    def busy_share(self) -> float:
        return (self.samples - self.poll) / self.samples if self.samples else 0.0

    @property
    def judged(self) -> bool:
        return self.samples > 0 and self.busy_share >= TRAFFIC_SHARE

    @property
    def blocked(self) -> list[CallSite]:
        return [s for s in self.sites if s.share >= BLOCKED_SHARE]


def is_poll(leaf: Frame) -> bool:
    return any(leaf.file.endswith(suffix) and (names is None or leaf.name in names)
               for suffix, names in _POLL_FRAMES)


def is_app_file(path: str, app_dirs: tuple[str, ...]) -> bool:
    """The app's own code: in its release, not in the virtualenv the release
    links to (`current/.venv/bin/gunicorn` is the server's)."""
    return path.startswith(app_dirs) and "/.venv/" not in path and "/site-packages/" not in path


def loop_thread_profile(speedscope: dict) -> dict | None:
    """The main thread's profile in a py-spy speedscope document."""
    for profile in speedscope.get("profiles", []):
        if '"MainThread"' in profile.get("name", ""):
            return profile
    return None


def analyse(pid: int, speedscope: dict, app_dirs: tuple[str, ...],
            source_lines: dict[str, str] | None = None) -> LoopReport:
    """Classify a worker's loop-thread samples. `app_dirs`: where the app's
    own files are (its releases, `current`); `source_lines` maps "file:line"
    to its text, to name a C callee."""
    frames = [Frame(f.get("name", "?"), f.get("file", "") or "", int(f.get("line") or 0))
              for f in speedscope.get("shared", {}).get("frames", [])]
    profile = loop_thread_profile(speedscope)
    if profile is None:
        return LoopReport(pid, 0, 0, 0, 0, 0.0)
    samples, weights = profile.get("samples", []), profile.get("weights", [])
    interval = (sum(weights) / len(weights)) if weights else 1 / SAMPLE_RATE
    poll = loop = app = 0
    sites: dict[tuple[str, str], CallSite] = {}
    run, longest = 0, 0
    for sample in samples:
        stack = [frames[i] for i in sample if 0 <= i < len(frames)]
        if not stack or is_poll(stack[-1]):
            poll += 1
            run = 0
            continue
        own = [i for i, f in enumerate(stack) if is_app_file(f.file, app_dirs)]
        if not own:
            loop += 1
            run = 0
            continue
        app += 1
        run += 1
        longest = max(longest, run)
        at = own[-1]
        frame = stack[at]
        if at + 1 < len(stack):
            above = stack[at + 1]
            callee = f"{above.name} ({short_path(above.file)})"
        else:
            callee = called_on(source_lines.get(frame.site, "") if source_lines else "") or "a C function"
        site = sites.setdefault((frame.site, callee), CallSite(frame, callee))
        site.samples += 1
    total = len(samples)
    for site in sites.values():
        site.share = site.samples / total if total else 0.0
    ranked = sorted(sites.values(), key=lambda s: -s.samples)
    return LoopReport(pid, total, poll, loop, app, round(total * interval, 2), ranked,
                      round(longest * interval, 3))


def short_path(path: str) -> str:
    """A library file as an operator knows it: site-packages/x/y.py -> x/y.py."""
    if "/site-packages/" in path:
        return path.rsplit("/site-packages/", 1)[1]
    return re.split(r"/lib/python3[.\d]*/", path)[-1]


_CALL = re.compile(r"((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*)\s*\(")


def called_on(line: str) -> str | None:
    """The (last) call on a line of source: 'time.sleep' in `time.sleep(0.05)  # ...`."""
    code = line.split("#", 1)[0]
    calls = [c for c in _CALL.findall(code) if c not in {"await", "return", "print"}]
    return calls[-1] if calls else None


def describe_site(site: CallSite) -> str:
    where = re.sub(r"^.*/(releases/[^/]+|current)/", "", site.frame.file)
    return (f"{where}:{site.frame.line} in {site.frame.name}() calls {site.callee} "
            f"synchronously: {site.share:.0%} of the loop's samples")


# --- `python -m asgi_fleet.doctor INVENTORY [--seconds N] [--app A]` ----------------

USAGE = "python -m asgi_fleet.doctor INVENTORY [--seconds N] [--app APP]"


def main(argv: list[str] | None = None) -> int:
    """Sample every app's workers on every host side by side, then report the
    top blocking call sites across the fleet, each worker's loop, and the
    journal's signs of async misuse since the last activation. Exits 1 when
    a loop is blocked, 2 on a usage error or an unreachable host, else 0."""
    import argparse
    import sys

    from asgi_fleet.inventory import InventoryError, app_hosts_of
    from asgi_fleet.plan import plan_host
    from asgi_fleet.verify import ASYNC_ALARMS, AppProbe, format_table

    parser = argparse.ArgumentParser(prog="python -m asgi_fleet.doctor", description=main.__doc__)
    parser.add_argument("inventory")
    parser.add_argument("--seconds", type=int, default=10, help="how long to sample each app (default 10)")
    parser.add_argument("--app", help="only this app")
    args = parser.parse_args(argv)
    if args.seconds < 1:
        parser.error(f"--seconds {args.seconds}: want 1 or more")
    try:
        hosts = app_hosts_of(args.inventory)
    except InventoryError as error:
        print(f"asgi-fleet doctor: {error}", file=sys.stderr)
        return 2
    rows = [["host", "app", "worker", "samples", "poll", "loop", "app code", "longest stall", "verdict"]]
    blocked, signs, unreachable, apps = [], [], [], 0
    for host in hosts:
        name = host.name.removeprefix("@docker/")
        try:
            connection = host.testinfra_host()
            connection.check_output("true")
        except Exception as error:  # any transport failure: report the host, go on
            unreachable.append(f"{name}: unreachable ({str(error).splitlines()[0][:120]})")
            continue
        for plan in plan_host(host.data, host.name):
            if args.app and plan.paths.app != args.app:
                continue
            apps += 1
            probe = AppProbe(f"{name}/{plan.paths.app}", connection, plan.app, plan.paths)
            for report in probe.loop_reports(args.seconds):
                verdict = ("BLOCKED" if report.blocked else "ok") if report.judged else "no traffic to judge"
                rows.append([name, plan.paths.app, report.pid, report.samples,
                             f"{report.poll / max(report.samples, 1):.0%}",
                             f"{report.loop / max(report.samples, 1):.0%}",
                             f"{report.app / max(report.samples, 1):.0%}",
                             f"{report.longest_stall:.2f} s", verdict])
                blocked += [(site, probe.label, report) for site in report.blocked]
            activation = probe.clock[2]
            since = activation[0] if activation else None
            for finding in probe.journal_findings(since=since):
                if finding.alarm in ASYNC_ALARMS and (since is None or finding.last >= since):
                    signs.append(f"{probe.label}: {finding.describe()}")
    if args.app and not apps:
        print(f"asgi-fleet doctor: no host of {args.inventory} runs app {args.app!r}", file=sys.stderr)
        return 2
    print(f"asgi-fleet doctor: {args.inventory}, {args.seconds} s of samples per app "
          f"({SAMPLE_RATE}/s, py-spy --nonblocking)\n")
    print("\n".join(format_table(rows)) if len(rows) > 1 else "no workers to sample")
    print("\nTop blocking call sites across the fleet:")
    for site, label, report in sorted(blocked, key=lambda b: -b[0].share)[:10]:
        print(f"  {label} worker {report.pid}: {describe_site(site)}")
    print(f"  fix: {FIX}" if blocked else "  none")
    print("\nJournal signs of async misuse since the last activation:")
    print("\n".join(f"  {sign}" for sign in signs) if signs else "  none")
    for line in unreachable:
        print(line, file=sys.stderr)
    return 2 if unreachable else 1 if blocked else 0


if __name__ == "__main__":
    raise SystemExit(main())
