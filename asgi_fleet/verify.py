"""What is really running on a host, read off the live processes, and what it means.

The verification suite (tests/verify) and `python -m asgi_fleet.status` both
use `AppProbe`: it reads the master and its workers through testinfra (the
workers' Python stacks with py-spy, their memory maps, their cwd), asks the
master for its effective configuration over gunicorn's control socket, and
GETs the health endpoint through the real bind. The interpretation of what it
reads is in pure functions below, unit-tested on captured samples.
"""

from __future__ import annotations

import datetime
import json
import re
import shlex
import time
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from asgi_fleet import commands
from asgi_fleet.activation import parse_running_master
from asgi_fleet.doctor import SAMPLE_RATE, LoopReport, analyse
from asgi_fleet.settings import runs_gunicorns_asgi, worker_class_path
from asgi_fleet.sizing import RESOURCES_PROBE, app_worker_plan, parse_resources

if TYPE_CHECKING:
    from asgi_fleet.settings import Settings

PY_SPY = "/opt/asgi-fleet/verify-tools/bin/py-spy"

# Lines in a unit's journal that are events something went wrong, and why.
JOURNAL_ALARMS = {
    "WORKER TIMEOUT": "a worker's event loop blocked past `timeout` and was killed",
    "Worker failed to boot": "a worker could not import the app or the worker class",
    "was never awaited": "a coroutine was called without await: a bug in the app",
    "Task was destroyed but it is pending": ("a task was garbage-collected while pending: nothing "
                                             "kept a reference to it (keep one, or use a TaskGroup)"),
    "Perhaps out of memory?": "a worker was killed by SIGKILL, often the OOM killer",
    "killed by the OOM killer": "the kernel's OOM killer killed a process of the unit",
    "Event loop is closed": "code used the event loop after it was closed (often at shutdown)",
    "Executing <": "asyncio debug: a callback held the event loop past slow_callback_duration",
}
# The alarms that are signs of async misuse (the doctor lists them)
ASYNC_ALARMS = ("was never awaited", "Task was destroyed but it is pending",
                "Event loop is closed", "Executing <")

# Events are not state: one worker killed once, and respawned by the master,
# is a warning. An event fails verify when it happened during the host's last
# activation (the deploy caused it), at or after --since, or while it keeps
# happening: REPEAT_COUNT of one alarm within the last REPEAT_WINDOW seconds.
REPEAT_COUNT = 3
REPEAT_WINDOW = 600

# Worker implementations an operator should recognise, by where their run() lives.
KNOWN_WORKERS = {
    "/gunicorn/workers/sync.py": "gunicorn's sync worker",
    "/gunicorn/workers/gthread.py": "gunicorn's gthread worker",
    "/uvicorn/workers.py": "the deprecated uvicorn.workers.UvicornWorker",
    "/gunicorn/workers/gasgi.py": "gunicorn's ASGI worker",
}

# In `py-spy dump --locals`: the worker's run() frame and the class of its self.
_RUN_FRAME = re.compile(r"^\s*(\w+)\.run \(([^)]*)\)\n\s*Arguments:\n\s*self: <(\w+) at 0x", re.M)


def running_worker(dump: str) -> tuple[str, str, str] | None:
    """(class defining run(), its file, the worker's own class) from a py-spy dump.

    The stack is printed innermost first, so the worker's run() is the last
    run() frame above gunicorn's Worker.init_process, which called it.
    """
    above_init = dump.split("Worker.init_process (", 1)[0]
    matches = _RUN_FRAME.findall(above_init)
    return matches[-1] if matches else None


def module_file_patterns(dotted_class: str) -> tuple[str, str]:
    """Where a class's module shows in a stack: a.b.C -> ('/a/b.py', '/a/b/')."""
    module = dotted_class.rsplit(".", 1)[0].replace(".", "/")
    return f"/{module}.py", f"/{module}/"


def worker_in_stack(dump: str, worker_class: str) -> bool:
    """Whether a live worker's stack shows an instance of the configured class.

    The worker's class name comes from its run() frame's `self`. When that
    class defines run() itself, the frame's file must also be the configured
    module (uvicorn_worker.UvicornWorker and the deprecated
    uvicorn.workers.UvicornWorker share a name); a subclass that inherits
    run() (asgi_fleet_worker.DrainingUvicornWorker) is known by its name.
    """
    found = running_worker(dump)
    if not found:
        return False
    defining, path, instance = found
    worker_class = worker_class_path(worker_class)
    wanted = worker_class.rsplit(".", 1)[1]
    if instance != wanted:
        return False
    return defining != wanted or any(p in path for p in module_file_patterns(worker_class))


def recognised_worker(dump: str) -> str:
    """The worker implementation a stack shows, for an operator to read."""
    found = running_worker(dump)
    if not found:
        return "an unrecognised worker"
    defining, path, instance = found
    for fragment, name in KNOWN_WORKERS.items():
        if fragment in path and defining == instance:
            return name
    module = path.rsplit("/site-packages/", 1)[-1].rsplit(":", 1)[0]
    return f"{instance} (run() from {module})"


def fast_stack(maps: str) -> dict[str, bool]:
    """Whether uvloop and httptools' compiled extensions are mapped in a process."""
    return {
        "uvloop": bool(re.search(r"/uvloop/loop\.cpython-[^/\s]*\.so", maps)),
        "httptools": bool(re.search(r"/httptools/parser/parser\.cpython-[^/\s]*\.so", maps)),
    }


def masters_view(control: dict) -> str:
    """What the master's control socket says about its workers, for the table."""
    workers = control.get("workers")
    if workers is None:
        return "no answer"
    beats = [w["last_heartbeat"] for w in workers if w.get("last_heartbeat") is not None]
    return f"{len(workers)} workers" + (f", beat {max(beats):.0f} s ago" if beats else "")


def masters_view_disagrees(control: dict, pids: list[int], timeout: float) -> str | None:
    """Why the master's own list of workers (gunicornc `show workers`) and
    the worker processes found on the host disagree, or None when they agree.
    A worker whose last heartbeat is older than `timeout` is one the master
    is about to kill as hung. (`booted` and `aborted` are the workers' own
    flags: the master's copies never change, so they say nothing here.)"""
    workers = control.get("workers")
    if workers is None:
        return "the master does not answer `show workers` on its control socket"
    listed = {w["pid"] for w in workers}
    problems = []
    if listed != set(pids):
        problems.append(f"it lists workers {sorted(listed)} but its children are {sorted(pids)}")
    silent = sorted(w["pid"] for w in workers
                    if w.get("last_heartbeat") is not None and w["last_heartbeat"] > timeout)
    if silent:
        problems.append(f"workers {silent} sent no heartbeat for over timeout ({timeout:g} s): hung")
    return "; ".join(problems) or None


def fast_stack_needed(worker_class: str) -> tuple[str, ...]:
    """The compiled extensions a worker class should run with: gunicorn's ASGI
    worker parses HTTP itself (pure Python), so only its loop is uvloop."""
    return ("uvloop",) if runs_gunicorns_asgi(worker_class) else ("uvloop", "httptools")


def serves_as(worker_class: str, server_header: str) -> bool:
    """Whether an answer's Server header is that of the configured worker's
    server: uvicorn's, or gunicorn's own ASGI worker ("gunicorn/asgi")."""
    if runs_gunicorns_asgi(worker_class):
        return server_header.startswith("gunicorn")
    return server_header == "uvicorn"


def http_parser(worker_class: str, fast: list[dict[str, bool]]) -> str:
    """Which HTTP parser the workers run, for the table."""
    if runs_gunicorns_asgi(worker_class):
        return "gunicorn"
    return "httptools" if fast and all(f["httptools"] for f in fast) else "h11"


@dataclass(frozen=True)
class JournalEvent:
    at: float  # seconds since the epoch, the host's clock
    alarm: str  # a key of JOURNAL_ALARMS
    line: str


def journal_events(journal: str) -> list[JournalEvent]:
    """The alarms in `journalctl -o short-unix` output ("1764626400.123456 host unit[pid]: ...")."""
    events = []
    for line in journal.splitlines():
        stamp, _, message = line.strip().partition(" ")
        try:
            at = float(stamp)
        except ValueError:
            continue
        alarm = next((a for a in JOURNAL_ALARMS if a in message), None)
        if alarm:
            events.append(JournalEvent(at, alarm, message))
    return events


@dataclass(frozen=True)
class EventFinding:
    """One alarm's events of one verdict: failing ones, or older ones (warnings)."""
    alarm: str
    count: int
    first: float
    last: float
    failing: bool
    why: str
    example: str

    def describe(self) -> str:
        when = (f"at {utc(self.first)}" if self.count == 1
                else f"{self.count} times, {utc(self.first)} to {utc(self.last)}")
        return (f"{self.alarm!r} ({JOURNAL_ALARMS[self.alarm]}) {when}, {self.why}; "
                f"e.g. {self.example[:160]}")


def utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def judge_events(events: list[JournalEvent], *, now: float,
                 activation: tuple[float, float] | None = None, since: float | None = None,
                 master_started: float | None = None) -> list[EventFinding]:
    """Which events fail the run and which are only reported (see REPEAT_COUNT).
    What keeps happening is counted under the running master only: a restart
    (or a master that dies itself, which the state checks see) starts afresh."""

    def window(event: JournalEvent) -> str | None:
        if activation and activation[0] <= event.at <= activation[1]:
            return f"during the last activation ({utc(activation[0])} to {utc(activation[1])})"
        if since is not None and event.at >= since:
            return f"at or after --since ({utc(since)})"
        return None

    findings = []
    for alarm in dict.fromkeys(e.alarm for e in events):
        of_alarm = [e for e in events if e.alarm == alarm]
        recent_since = max(now - REPEAT_WINDOW, master_started or 0)
        recent = [e for e in of_alarm if e.at >= recent_since]
        keeps = (f"and it keeps happening ({len(recent)} in the last {REPEAT_WINDOW // 60} min)"
                 if len(recent) >= REPEAT_COUNT else None)
        reasons = [keeps if keeps and e.at >= recent_since else window(e) for e in of_alarm]
        failing = [e for e, reason in zip(of_alarm, reasons) if reason]
        older = [e for e, reason in zip(of_alarm, reasons) if not reason]
        if failing:
            findings.append(EventFinding(alarm, len(failing), failing[0].at, failing[-1].at, True,
                                         "; ".join(dict.fromkeys(filter(None, reasons))),
                                         failing[-1].line))
        if older:
            findings.append(EventFinding(
                alarm, len(older), older[0].at, older[-1].at, False,
                "outside the last activation and not recurring: a warning", older[-1].line))
    return findings


_DURATION = re.compile(r"(\d+)(s|m|h|d)")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, now: float) -> float:
    """--since as epoch seconds: an ISO 8601 time (UTC unless it has an
    offset), epoch seconds, or a duration ago (90s, 30m, 2h, 1d)."""
    text = value.strip()
    if match := _DURATION.fullmatch(text):
        return now - int(match.group(1)) * _DURATION_SECONDS[match.group(2)]
    if re.fullmatch(r"\d{9,11}(\.\d+)?", text):
        return float(text)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {value!r}: want an ISO 8601 time (2026-12-01T21:00:00Z), epoch seconds, "
            "or a duration ago (90s, 30m, 2h, 1d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def parse_activation(text: str) -> tuple[float, float] | None:
    """(start, end) of an app's last activation, from its record ("START END RC")."""
    words = text.split()
    try:
        return float(words[0]), float(words[1])
    except (IndexError, ValueError):
        return None


def seconds(systemd_usec: str) -> float:
    """systemd's TimeoutStopUSec ('40s', '1min 30s', '500ms', 'infinity') in seconds."""
    if systemd_usec.strip() == "infinity":
        return float("inf")
    units = {"min": 60, "ms": 0.001, "us": 1e-6, "s": 1, "h": 3600}
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(min|ms|us|h|s)", systemd_usec):
        total += float(amount) * units[unit]
    return total


@dataclass(frozen=True)
class Worker:
    pid: int
    cwd: str


class AppProbe:
    """Lazily read one app's live state on one host (each fact read once)."""

    def __init__(self, label: str, testinfra_host, app: Settings, paths: commands.AppPaths):
        self.label = label  # "host/app", how failure messages name it
        self.host = testinfra_host
        self.app = app
        self.paths = paths

    def run(self, command: str) -> str:
        return self.host.run(command).stdout

    def unit_properties(self, unit: str, *names: str) -> dict[str, str]:
        out = self.run(f"systemctl show {shlex.quote(unit)} " + " ".join(f"-p {n}" for n in names))
        return dict(line.partition("=")[::2] for line in out.splitlines())

    @cached_property
    def _master_report(self) -> str:
        return self.run(commands.running_master(self.paths.service))

    @cached_property
    def master(self):
        return parse_running_master(self._master_report)

    @cached_property
    def workers(self) -> list[Worker]:
        if not self.master:
            return []
        return [Worker(int(pid), cwd) for pid, _, cwd in
                (line.split(" ", 1)[1].partition(" ") for line in self._master_report.splitlines()
                 if line.startswith("worker "))]

    @cached_property
    def master_user(self) -> str | None:
        return self.run(f"ps -o user= -p {self.master.pid}").strip() if self.master else None

    @cached_property
    def worker_users(self) -> list[str]:
        return [self.run(f"ps -o user= -p {w.pid}").strip() for w in self.workers]

    @cached_property
    def expected_workers(self) -> int:
        resources = parse_resources(self.host.check_output(RESOURCES_PROBE))
        return app_worker_plan(resources, self.app).count

    @cached_property
    def stacks(self) -> dict[int, str]:
        """Each worker's Python stack (py-spy; it pauses the worker for a moment)."""
        return {w.pid: self.run(f"{PY_SPY} dump --locals --full-filenames --pid {w.pid} 2>&1")
                for w in self.workers}

    @cached_property
    def maps(self) -> dict[int, str]:
        return {w.pid: self.run(f"cat /proc/{w.pid}/maps") for w in self.workers}

    @cached_property
    def current_release(self) -> str:
        return self.run(f"readlink -f {shlex.quote(self.paths.current)}").strip()

    @cached_property
    def health(self) -> dict:
        """GET health_path through the real bind: status, server header, body."""
        args = " ".join(shlex.quote(a) for a in
                        commands.curl_args(self.app.bind, self.app.health_path))
        out = self.run(f"curl -s -i --max-time 5 {args}")
        head, _, body = out.replace("\r\n", "\n").partition("\n\n")
        lines = head.splitlines()
        status = lines[0].split()[1] if lines and len(lines[0].split()) > 1 else "000"
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:])}
        try:
            data = json.loads(body)
        except ValueError:
            data = {}
        return {"status": status, "server": headers.get("server", ""), "body": data}

    def ask_master(self, command: str) -> dict:
        """The running master's JSON answer to a gunicornc command on its
        control socket ({} if it does not answer)."""
        venv = self.master.venv if self.master else f"{self.paths.current}/.venv"
        out = self.run(f"{venv}/bin/gunicornc -s {self.paths.control_socket} -j -c {shlex.quote(command)}")
        try:
            return json.loads(out)
        except ValueError:
            return {}

    @cached_property
    def effective_config(self) -> dict:
        """The running master's configuration, from gunicorn's control socket."""
        return self.ask_master("show config")

    @cached_property
    def control_workers(self) -> dict:
        """The master's own view of its workers (`show workers`: pid, age,
        booted, aborted, last heartbeat), {} if it does not answer."""
        return self.ask_master("show workers")

    def masters_view_again(self) -> tuple[dict, list[int]]:
        """The master's view and its children, read afresh (a worker that a
        reload retired may exit between the two reads)."""
        for name in ("_master_report", "master", "workers", "control_workers"):
            self.__dict__.pop(name, None)
        return self.control_workers, [w.pid for w in self.workers]

    @cached_property
    def timeout_stop_seconds(self) -> float:
        return seconds(self.unit_properties(self.paths.service, "TimeoutStopUSec")["TimeoutStopUSec"])

    @cached_property
    def clock(self) -> tuple[float, float | None, tuple[float, float] | None]:
        """The host's time now, when the master started, and the last activation's window."""
        service = shlex.quote(self.paths.service)
        now, master, activation = (self.run(
            f"date +%s; systemctl show --timestamp=unix -p ExecMainStartTimestamp --value {service}; "
            f"cat {shlex.quote(self.paths.activation_record)} 2>/dev/null; true").splitlines()
            + ["", ""])[:3]
        started = master.strip().lstrip("@")
        return float(now), float(started) if started.isdigit() else None, parse_activation(activation)

    def journal_findings(self, since: float | None = None) -> list[EventFinding]:
        """The unit's alarms since the master started (or the last activation, or
        `since`, whichever is earliest), judged by judge_events."""
        now, master_started, activation = self.clock
        starts = [t for t in (master_started, activation and activation[0], since) if t is not None]
        start = min(starts, default=now - REPEAT_WINDOW)
        alarms = " ".join(f"-e {shlex.quote(alarm)}" for alarm in JOURNAL_ALARMS)
        out = self.run(f"journalctl -u {shlex.quote(self.paths.service)} --since @{int(start)} "
                       f"--no-pager -o short-unix | grep -F {alarms}; true")
        return judge_events(journal_events(out), now=now, activation=activation, since=since,
                            master_started=master_started)

    def loop_reports(self, seconds: int) -> list[LoopReport]:
        """Each worker's event-loop thread, sampled side by side for `seconds`
        with py-spy (--nonblocking: the workers are not paused), and judged
        by asgi_fleet.doctor."""
        if not self.workers:
            return []
        record = (f"timeout {int(seconds) + 30} {PY_SPY} record --pid $pid --duration {int(seconds)}"
                  f" --rate {SAMPLE_RATE} --idle --nonblocking --format speedscope -o $dir/$pid.json")
        out = self.run(
            f"dir=$(mktemp -d) && for pid in {' '.join(str(w.pid) for w in self.workers)}; do "
            f"{record} >/dev/null 2>&1 & done; wait; "
            "for f in $dir/*.json; do [ -s \"$f\" ] && printf '\\n==sample %s\\n' \"$(basename $f .json)\" "
            "&& cat \"$f\"; done; rm -rf \"$dir\"")
        profiles = {}
        for part in out.split("\n==sample ")[1:]:
            pid, _, text = part.partition("\n")
            try:
                profiles[int(pid)] = json.loads(text)
            except ValueError:
                continue
        dirs = (self.paths.releases + "/", self.paths.current + "/")
        reports = [analyse(pid, doc, dirs) for pid, doc in profiles.items()]
        # name the C function an app line calls (time.sleep, a C driver) from its source
        leaves = sorted({s.frame.site for r in reports for s in r.sites if s.callee == "a C function"})
        if not leaves:
            return reports
        lines = self.run("; ".join(
            f"printf '%s\\t' {shlex.quote(site)}; sed -n {int(site.rsplit(':', 1)[1])}p "
            f"{shlex.quote(site.rsplit(':', 1)[0])} | head -c 300; echo" for site in leaves))
        source = dict(line.split("\t", 1) for line in lines.splitlines() if "\t" in line)
        return [analyse(pid, doc, dirs, source) for pid, doc in profiles.items()]

    def refresh(self) -> None:
        """Forget everything read, so that the next look reads the host again."""
        for name in [n for n in vars(self) if isinstance(getattr(type(self), n, None), cached_property)]:
            del self.__dict__[name]

    @cached_property
    def exposure(self) -> float | None:
        """The unit's overall exposure level in `systemd-analyze security`."""
        out = self.run(f"systemd-analyze security --no-pager {shlex.quote(self.paths.service)}")
        match = re.search(r"Overall exposure level for \S+: ([\d.]+)", out)
        return float(match.group(1)) if match else None

    def serves(self, release_dir: str) -> bool:
        """Healthy, with the expected number of workers, all on release_dir, as the app user."""
        return (self.health["status"] == "200" and len(self.workers) == self.expected_workers
                and {w.cwd for w in self.workers} == {release_dir}
                and set(self.worker_users) == {self.paths.app})

    # --- summaries for the table ---
    def summary(self) -> dict:
        stacks = self.stacks.values()
        classes = sorted({(running_worker(s) or ("", "", "?"))[2] for s in stacks}) or ["-"]
        fast = [fast_stack(m) for m in self.maps.values()]
        return {
            "release": self.current_release.rsplit("/", 1)[-1] or "-",
            "workers": f"{self.expected_workers}/{len(self.workers)}",
            "worker class": ", ".join(classes),
            "loop": "uvloop" if fast and all(f["uvloop"] for f in fast) else "asyncio",
            "http parser": http_parser(self.app.worker_class, fast),
            "master says": masters_view(self.control_workers),
            "health": self.health["status"],
            "exposure": self.exposure if self.exposure is not None else "-",
        }


def format_table(rows: list[list]) -> list[str]:
    """Rows of cells as aligned lines (the first row is the header)."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
            for row in rows]
