"""Verify at fleet scale: the suite on 4 and 8 hosts, serially and with `-n auto`.

    .venv/bin/python bench/verify_scale.py [--sizes 4,8] [--rounds 2]

Provisions max(sizes) fresh test hosts (containers asgi-bench-v1..vN, one
app each, one `pyinfra deploy.py` run), then times `pytest tests/verify`
against an inventory of the first N of them, serially and under
pytest-xdist (`-n auto`, one worker per host group), in interleaved rounds
(serial, parallel, serial, ...) so that both see the same machine. Each run
must pass. A plugin (bench/verify_roundtrips.py) counts the commands each
run sends to each host: the round trips per app.

Writes bench/results/verify_scale.json. About 6 minutes on a 2-core machine
(the 8-host provision is 3 of them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deploylib as lib  # noqa: E402

RESULT = lib.ROOT / "bench" / "results" / "verify_scale.json"
MODES = {"serial": [], "-n auto": ["-n", "auto"]}


def timed_verify(inventory: Path, mode: str, workdir: Path, tag: str) -> dict:
    counts_dir = workdir / f"counts-{tag}"
    counts_dir.mkdir()
    env = {**os.environ, "BENCH_VERIFY_COUNTS": str(counts_dir),
           "PYTHONPATH": os.pathsep.join([str(lib.ROOT / "bench"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "tests/verify", "--inventory", str(inventory), "-q",
           "-p", "no:cacheprovider", "-p", "verify_roundtrips", *MODES[mode]]
    started = time.monotonic()
    run = subprocess.run(cmd, cwd=lib.ROOT, env=env, text=True, capture_output=True, timeout=900)
    seconds = time.monotonic() - started
    if run.returncode != 0:
        raise RuntimeError(f"{tag}: verify exited {run.returncode}:\n{run.stdout[-3000:]}")
    per_host: dict[str, int] = {}
    for part in counts_dir.glob("*.json"):
        for host, count in json.loads(part.read_text()).items():
            per_host[host] = per_host.get(host, 0) + count
    return {"seconds": round(seconds, 2), "round_trips": per_host,
            "summary": run.stdout.strip().splitlines()[-1]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4,8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default=str(RESULT))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.monotonic()
    lib.exit_on_sigterm()
    workdir = lib.new_workdir("verify-scale")
    names = [f"{lib.PREFIX}v{i}" for i in range(1, max(sizes) + 1)]
    raw: dict[str, dict[str, list]] = {str(n): {m: [] for m in MODES} for n in sizes}
    errors, provision = [], None
    try:
        with lib.BenchLock():
            lib.fresh_hosts(names)
        with lib.BenchLock():
            provision = lib.pyinfra_deploy(lib.write_pyinfra_inventory(workdir / "all.py", names),
                                           workdir, "provision")
        lib.log(f"provisioned {len(names)} hosts in {provision['seconds']:.1f} s")
        for r in range(args.rounds):
            for n in sizes:
                inventory = lib.write_pyinfra_inventory(workdir / f"inventory-{n}.py", names[:n])
                for mode in (MODES if r % 2 == 0 else reversed(MODES)):
                    with lib.BenchLock():
                        result = timed_verify(inventory, mode, workdir, f"{n}-{mode.strip('-')}-{r}")
                    raw[str(n)][mode].append(result)
                    lib.log(f"N={n} {mode:8} round {r}: {result['seconds']:6.1f} s")
    except (Exception, SystemExit):
        errors.append(traceback.format_exc())
        lib.log(errors[-1])
    finally:
        lib.remove_hosts(names)
    out = report(raw, provision, argv, args, errors, started)
    lib.write_json(args.output, out)
    print(out["table_md"])
    return 1 if errors else 0


def report(raw, provision, argv, args, errors, started) -> dict:
    rows, medians = [], {}
    for n, modes in raw.items():
        serial = round(lib.median([r["seconds"] for r in modes["serial"]]), 1)
        parallel = round(lib.median([r["seconds"] for r in modes["-n auto"]]), 1)
        trips = [count for r in modes["serial"] for count in r["round_trips"].values()]
        medians[n] = {"serial": serial, "-n auto": parallel,
                      "round_trips_per_app": round(lib.median(trips)) if trips else None}
        spread = {m: [round(r["seconds"], 1) for r in modes[m]] for m in MODES}
        rows.append(f"| {n} | {len(modes['serial'])} | {serial} ({', '.join(map(str, spread['serial']))}) | "
                    f"{round(serial / int(n), 1) if serial else '-'} | "
                    f"{parallel} ({', '.join(map(str, spread['-n auto']))}) | "
                    f"**{round(parallel / serial, 2) if serial and parallel else '-'}** | "
                    f"{medians[n]['round_trips_per_app']} |")
    table = ("| hosts (1 app each) | rounds | serial s (each run) | serial s per host | `-n auto` s (each run) "
             "| `-n auto`/serial | commands per app |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    table += ("\nEvery run passed. `-n auto` is 2 workers on these 2 cores, which the hosts share: on "
              "real servers the hosts' side is not on the controller's CPUs. Each command is one "
              "`docker exec` (one SSH command on real servers); py-spy pauses each worker once.\n")
    return {
        "benchmark": "verify_scale",
        "command": lib.command_line("verify_scale.py", argv),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": lib.machine(),
        "tools": lib.tool_versions(),
        "provision_seconds": provision and provision["seconds"],
        "medians_seconds": medians,
        "errors": errors,
        **lib.runtime(started),
        "raw": raw,
        "table_md": table,
    }


if __name__ == "__main__":
    sys.exit(main())
