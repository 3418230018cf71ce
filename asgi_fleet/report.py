"""A verify run's results as data: the JSON report, a Nagios-style line and
a Prometheus textfile, for CI jobs and monitoring.

`pytest tests/verify` exits with pytest's codes:
0 every promise kept (warnings allowed), 1 a promise broken or a host
unreachable, 2 interrupted, 3 internal error, 4 usage error (an inventory that
cannot be loaded or has no app host, a bad option), 5 nothing was checked.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from asgi_fleet.sinks import prometheus_label

EXIT_CODES = {0: "every promise kept", 1: "a promise broken or a host unreachable",
              2: "interrupted", 3: "internal error", 4: "usage error", 5: "nothing was checked"}


@dataclass
class PromiseResult:
    """One promise (a test of tests/verify) for one host, or one app on it."""
    host: str
    app: str | None  # None for the host's own promises (reachable, load balancer)
    promise: str  # the test's name without `test_`
    outcome: str = "pass"  # pass, warn, fail or skip
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    converged_after: float | None = None  # seconds: failed first, then passed (--retry-timeout)

    @property
    def label(self) -> str:
        return f"{self.host}/{self.app}" if self.app else self.host


def counts(results: list[PromiseResult]) -> dict[str, int]:
    return {outcome: sum(r.outcome == outcome for r in results)
            for outcome in ("pass", "warn", "fail", "skip")}


def verdict(results: list[PromiseResult]) -> str:
    """ok, warning, critical, or unknown when nothing was checked."""
    found = counts(results)
    if found["fail"]:
        return "critical"
    if found["warn"]:
        return "warning"
    return "ok" if found["pass"] else "unknown"


def document(inventory: str, results: list[PromiseResult], table: list[dict],
             exit_code: int, finished: float) -> dict:
    """The JSON report: the verdict, each promise per host and app, and the summary table."""
    return {
        "inventory": inventory,
        "finished": finished,
        "verdict": verdict(results),
        "exit_code": exit_code,
        "exit_meaning": EXIT_CODES.get(exit_code, "unknown"),
        "counts": counts(results),
        "promises": [asdict(r) for r in results],
        "table": table,
    }


def nagios_line(results: list[PromiseResult]) -> str:
    """One line in the Nagios plugin style: STATUS - text | perfdata."""
    found = counts(results)
    status = {"critical": "CRITICAL", "warning": "WARNING", "ok": "OK", "unknown": "UNKNOWN"}[
        verdict(results)]
    broken = [f"{r.label} {r.promise}" for r in results if r.outcome == "fail"]
    warned = [f"{r.label} {r.promise}" for r in results if r.outcome == "warn"]
    checked = found["pass"] + found["warn"] + found["fail"]
    text = f"{found['fail']} of {checked} promises broken"
    if broken:
        text += f" ({', '.join(broken[:5])}{', ...' if len(broken) > 5 else ''})"
    if warned:
        text += f", {len(warned)} with warnings ({', '.join(warned[:5])})"
    perfdata = " ".join(f"{name}={found[key]}" for name, key in
                        (("kept", "pass"), ("warned", "warn"), ("broken", "fail"), ("skipped", "skip")))
    return f"ASGI-FLEET {status} - {text} | {perfdata}"


def prometheus_text(results: list[PromiseResult], exit_code: int, finished: float) -> str:
    """A node_exporter textfile: one series per promise, and the run itself."""
    checked = [(r, ",".join(f"{key}={prometheus_label(value)}" for key, value in
                            (("host", r.host), ("app", r.app or ""), ("promise", r.promise))))
               for r in results if r.outcome != "skip"]
    lines = [  # each metric's samples in one group, as the text format wants
        "# HELP asgi_fleet_promise_ok Whether an asgi-fleet verify promise holds (1) or not (0).",
        "# TYPE asgi_fleet_promise_ok gauge",
        *(f"asgi_fleet_promise_ok{{{labels}}} {0 if r.outcome == 'fail' else 1}"
          for r, labels in checked),
        "# HELP asgi_fleet_promise_warnings Warnings about a kept promise (older journal events).",
        "# TYPE asgi_fleet_promise_warnings gauge",
        *(f"asgi_fleet_promise_warnings{{{labels}}} {len(r.warnings)}" for r, labels in checked),
    ]
    lines += [
        "# HELP asgi_fleet_verify_exit_code The exit code of the last verify run.",
        "# TYPE asgi_fleet_verify_exit_code gauge",
        f"asgi_fleet_verify_exit_code {exit_code}",
        "# HELP asgi_fleet_verify_finished_seconds When the last verify run finished.",
        "# TYPE asgi_fleet_verify_finished_seconds gauge",
        f"asgi_fleet_verify_finished_seconds {finished:.3f}",
    ]
    return "\n".join(lines) + "\n"


def write_atomically(path: str | Path, text: str) -> None:
    """Replace a file in one rename: a collector or a CI step never reads half of it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, target)


def json_text(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"
