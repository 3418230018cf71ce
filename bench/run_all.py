"""Run every benchmark, then rewrite the results section of bench/README.md.

    make bench        # or: .venv/bin/python bench/run_all.py [--only NAME ...] [--tables-only]

Each benchmark is a script in bench/ that writes bench/results/NAME.json with
a `table_md`; this runs them one after the other (never side by side: they
would measure each other), and puts every table, with the machine and the
time each took, between the markers in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import deploylib

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
README = BENCH / "README.md"
RUN_RECORD = RESULTS / "run_all.json"  # this run: when, where, minutes per benchmark, failures
START, END = "<!-- results:start -->", "<!-- results:end -->"

# (script, heading, arguments), in the order they run. The arguments fit
# `make bench` on a fresh machine (images, virtualenvs, Ansible and all) into
# 30 minutes on this shared 2-core machine: it took 26.4 and 23.6 minutes as
# here, and 30.7 and 32.0 with 3 deploy_speed repeats, 3 throughput rounds,
# pip's Ansible install and the images built one after the other. Every table
# says how many runs its medians are of; the scripts' own defaults are for
# runs on their own.
BENCHMARKS = [
    ("deploy_speed", "Deploy speed: asgi-fleet against an equivalent Ansible playbook", ["--repeats", "2"]),
    ("scaling", "Scaling with fleet size", []),
    ("noop_scale", "The no-op re-run at scale: 1, 8 and 32 cloned hosts", []),
    # Two workers on the host's one CPU: with one, both ways of reloading
    # start one new worker beside one old, and cannot differ.
    ("activation_latency", "Activation under load: the stock recipe against asgi-fleet (one worker at a time, and all at once)",
     ["--workers", "2"]),
    ("calm_boot", "A roll's new worker importing the app at nice 19, against at its own priority", []),
    ("rolling_deploy", "One rolling deploy through the load balancer", []),
    ("throughput", "Served throughput on one host", ["--rounds", "2"]),
    ("verify_scale", "Verify at fleet scale: serial against pytest-xdist", []),
    ("doctor_cost", "What the async doctor's sampling costs in throughput", []),
    ("peers", "The peers: five ways of running the app, side by side", []),
]


def machine() -> str:
    m = deploylib.machine()
    return (f"{m['nproc']} CPUs ({m['cpu']}), {m['memory_mb'] // 1024} GiB, kernel {m['kernel']}, "
            f"Docker {m['docker_server']}, Python {m['python']}")


def section(run: dict) -> str:
    """The README's results section: the run, then each benchmark's table."""
    ran = run["minutes"]
    verdict = (f"all {len(ran)} ran" if not run["failed"]
               else f"FAILED: {', '.join(run['failed'])}")
    lines = [START, "",
             f"Last `make bench`: {run['started']}, on {run['machine']}. "
             f"{sum(ran.values()):.1f} min for the benchmarks ({verdict}); "
             f"raw: [results/run_all.json](results/run_all.json).", ""]
    for name, heading, arguments in BENCHMARKS:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        if name in ran:
            command = f"`.venv/bin/python bench/{' '.join([name + '.py', *arguments])}`, {ran[name]:.1f} min"
        else:
            command = f"`{result.get('command', f'bench/{name}.py')}` (an earlier run)"
        lines += [f"### {heading}", "",
                  f"{command}; raw: [results/{name}.json](results/{name}.json)",
                  "", result.get("table_md", "(no table)").strip(), ""]
        if name == "rolling_deploy" and (RESULTS / "rolling_deploy.svg").exists():
            lines += ["![requests/s and errors during a rolling deploy](results/rolling_deploy.svg)", ""]
    return "\n".join(lines + [END])


def write_readme(run: dict) -> None:
    text = README.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    README.write_text(head + section(run) + tail)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=[n for n, _, _ in BENCHMARKS])
    parser.add_argument("--tables-only", action="store_true",
                        help="run nothing: rewrite the README from results/ and results/run_all.json")
    args = parser.parse_args(argv)
    if args.tables_only:
        write_readme(json.loads(RUN_RECORD.read_text()))
        return 0
    run = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
           "minutes": {}, "failed": []}
    for name, _, arguments in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        print(f"--> bench/{name}.py {' '.join(arguments)}", flush=True)
        begin = time.monotonic()
        command = [sys.executable, str(BENCH / f"{name}.py"), *arguments]
        if subprocess.run(command, cwd=BENCH.parent).returncode:
            run["failed"].append(name)
        run["minutes"][name] = round((time.monotonic() - begin) / 60, 1)
        print(f"--> bench/{name}.py: {run['minutes'][name]} min", flush=True)
    RUN_RECORD.write_text(json.dumps(run, indent=1) + "\n")
    write_readme(run)
    print(f"--> {sum(run['minutes'].values()):.1f} min in all; tables in {README}")
    if run["failed"]:
        print(f"--> FAILED: {', '.join(run['failed'])}", file=sys.stderr)
    return 1 if run["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
