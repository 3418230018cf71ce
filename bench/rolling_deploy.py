"""One rolling deploy through the load balancer, charted: requests/s and errors over time.

    .venv/bin/python bench/rolling_deploy.py            # needs `make fleet` (asgi-web1..4, asgi-lb)

Deploys a baseline, then runs bench/loadgen.py on the controller against the
load balancer (asgi-lb, port 8000: keep-alive and one-connection-per-request
clients, GET and POST, no retries) while `pyinfra deploy.py` rolls a change
of the app's environment (`app_env`, the unit's EnvironmentFile: a restart
behind the socket on every host, each host drained first) across the fleet,
one host per batch. A dependency change takes the same restart, after
minutes of virtualenv builds that would only stretch the chart (and a fresh
machine's `make bench`); tests/e2e/test_rolling_deploys.py rolls one. Writes
bench/results/rolling_deploy.json (per-second buckets, each batch's start and
end from the deploy's own record) and bench/results/rolling_deploy.svg.
Finally deploys the default release again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _serve
from _serve import RESULTS, ROOT
from deploylib import command_line, write_json

CHANGE = 'app_env={"BENCH_ROLLING_DEPLOY": "1"}'  # a new EnvironmentFile: a restart on every host
LB = "asgi-lb"


def deploy(record: Path, *data: str) -> dict:
    """deploy.py on the test fleet; returns the run's own record (each batch's times)."""
    _serve.deploy(ROOT / "inventories" / "docker.py", *data, record=record)
    return json.loads(record.read_text())


def batch_windows(record: dict) -> list[dict]:
    """Each batch's hosts and its first start and last end, from the deploy's record."""
    windows: dict[int, dict] = {}
    for name, entry in record["hosts"].items():
        for info in entry["apps"].values():
            if "started" in info and info.get("activation") not in (None, "none"):
                window = windows.setdefault(info["batch"], {"batch": info["batch"], "hosts": set(),
                                                            "start": info["started"], "end": info["ended"]})
                window["hosts"].add(name.rsplit("/", 1)[-1])
                window["start"] = min(window["start"], info["started"])
                window["end"] = max(window["end"], info["ended"])
    return [dict(w, hosts=sorted(w["hosts"])) for _, w in sorted(windows.items())]


def svg_chart(buckets: list[dict], windows: list[dict], deploy: tuple[float, float], title: str) -> str:
    """requests/s as a line, failed requests/s as red bars, batches as shaded bands,
    the deploy command's start and end as dashed lines."""
    width, height, left, right, top, bottom = 900, 360, 60, 20, 40, 50
    t0 = buckets[0]["t"]
    span = max(1, buckets[-1]["t"] - t0 + 1)
    peak = max(b["requests"] for b in buckets) or 1

    def x(t: float) -> float:
        return left + (t - t0) / span * (width - left - right)

    def y(value: float) -> float:
        return top + (1 - value / peak) * (height - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{left}" y="20" font-size="14">{title}</text>']
    for window in windows:
        x0, x1 = x(window["start"]), x(window["end"])
        parts.append(f'<rect x="{x0:.1f}" y="{top}" width="{max(1.0, x1 - x0):.1f}" '
                     f'height="{height - top - bottom}" fill="#dde8f7"/>')
        parts.append(f'<text x="{x0 + 2:.1f}" y="{top + 14 + 14 * (window["batch"] % 2)}" fill="#335">'
                     f'{" ".join(h.removeprefix("asgi-") for h in window["hosts"])}</text>')
    for when, label, anchor, dx in zip(deploy, ("pyinfra starts (staging)", "pyinfra ends"),
                                       ("start", "end"), (3, -3)):
        parts.append(f'<line x1="{x(when):.1f}" y1="{top}" x2="{x(when):.1f}" y2="{height - bottom}" '
                     f'stroke="#555" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{x(when) + dx:.1f}" y="{height - bottom - 6}" fill="#555" '
                     f'text-anchor="{anchor}">{label}</text>')
    points = " ".join(f"{x(b['t'] + 0.5):.1f},{y(b['requests']):.1f}" for b in buckets)
    parts.append(f'<polyline points="{points}" fill="none" stroke="#1f5fa8" stroke-width="2"/>')
    for b in buckets:
        if b["failed"]:
            parts.append(f'<rect x="{x(b["t"]):.1f}" y="{y(b["failed"]):.1f}" width="4" '
                         f'height="{height - bottom - y(b["failed"]):.1f}" fill="#c0392b"/>')
    axis_y = height - bottom
    parts += [f'<line x1="{left}" y1="{axis_y}" x2="{width - right}" y2="{axis_y}" stroke="black"/>',
              f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}" stroke="black"/>',
              f'<text x="{left - 8}" y="{top + 4}" text-anchor="end">{peak}/s</text>',
              f'<text x="{left - 8}" y="{axis_y}" text-anchor="end">0</text>',
              f'<text x="{left}" y="{axis_y + 18}">0 s</text>',
              f'<text x="{width - right}" y="{axis_y + 18}" text-anchor="end">{span} s</text>',
              f'<text x="{left}" y="{height - 10}">blue: requests/s through the load balancer; '
              f'red: failed requests/s ({sum(b["failed"] for b in buckets)} in all); '
              f'shaded: a batch activating (drained, restarted, gated)</text>',
              "</svg>"]
    return "\n".join(parts)


def table(summary: dict, deploy_started: float) -> str:
    """The run's counts, and requests/s while batches activate as a ratio to before the deploy."""
    windows, buckets = summary["batches"], summary["per_second"]
    if not windows:
        return "No host activated: see the JSON's errors."
    rollout = [b["requests"] for b in buckets if windows[0]["start"] <= b["t"] < windows[-1]["end"]]
    before = [b["requests"] for b in buckets if b["t"] < deploy_started]
    staging = [b["requests"] for b in buckets if deploy_started <= b["t"] < windows[0]["start"]]
    steady = statistics.median(before) if before else 0
    ratio = (lambda v: f"{v / steady:.2f}") if steady else (lambda v: "-")
    return "\n".join([
        "| requests through nginx | failed | deploy s (staging + rollout) | rollout s | "
        "seconds per batch | req/s before the deploy | during staging: median (ratio) | "
        "during the rollout: median, lowest (ratio to before) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {summary['requests']:,} | **{summary['failed']}** | {summary['deploy_seconds']} | "
        f"{windows[-1]['end'] - windows[0]['start']:.1f} | "
        f"{', '.join(str(round(w['end'] - w['start'], 1)) for w in windows)} | {steady:,.0f} | "
        f"{statistics.median(staging):,.0f} ({ratio(statistics.median(staging))}) | "
        f"{statistics.median(rollout):,.0f} ({ratio(statistics.median(rollout))}), "
        f"{min(rollout):,} ({ratio(min(rollout))}) |",
        "",
        "One rolling restart (a new `app_env` on every host: a restart behind the socket, "
        "drained first), 4 hosts, 1 per batch; load from the controller through nginx "
        f"({summary['clients']} keep-alive and {summary['clients']} one-connection-per-request clients, "
        "GET and POST, no retries). The load generator, nginx and the four hosts share this "
        "machine's 2 cores, so staging on every host at once costs the load some throughput; "
        "each batch's host is drained, and the others serve everything.",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="load clients per mode")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "app"
        shutil.copytree(ROOT / "example", source)
        deploy(tmp / "base.json", f"app_source={source}")
        stop, out = tmp / "load.stop", tmp / "load.json"
        load = subprocess.Popen([sys.executable, str(ROOT / "bench" / "loadgen.py"),
                                 "--host", _serve.container_ip(LB), "--port", "8000",
                                 "--clients", str(args.clients), "--max-seconds", "600",
                                 "--stop-file", str(stop), "--output", str(out), "--buckets"],
                                stdout=subprocess.DEVNULL)
        try:
            time.sleep(8)  # a steady state before the deploy
            deploy_started = time.time()
            record = deploy(tmp / "rolling.json", f"app_source={source}", CHANGE)
            deploy_ended = time.time()
            time.sleep(5)  # and after it
        finally:
            stop.touch()
            load.wait(timeout=60)
        result = json.loads(out.read_text())
        deploy(tmp / "restore.json")
    windows = batch_windows(record)
    buckets = result.pop("per_second")[1:-1]  # the first and last seconds are partial
    summary = {
        "benchmark": "rolling_deploy",
        "command": command_line("rolling_deploy.py", argv),
        "change": f"{CHANGE} (a new EnvironmentFile: restart behind the socket, drained first)",
        "requests": result["requests"], "failed": result["failed"], "errors": result["errors"],
        "clients": args.clients, "deploy_seconds": round(deploy_ended - deploy_started, 1),
        "batches": windows, "per_second": buckets, "seconds": round(time.monotonic() - started, 1),
    }
    summary["table_md"] = table(summary, deploy_started)
    write_json(RESULTS / "rolling_deploy.json", summary)
    (RESULTS / "rolling_deploy.svg").write_text(svg_chart(
        buckets, windows, (deploy_started, deploy_ended), f"Rolling restart (app_env) across 4 hosts behind nginx: "
                          f"{result['failed']} failed of {result['requests']:,} requests"))
    print(summary["table_md"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
