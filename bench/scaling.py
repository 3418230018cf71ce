"""Scaling with fleet size: asgi-fleet on 1, 2, 4 and 8 fresh hosts.

    .venv/bin/python bench/scaling.py [--sizes 1,2,4,8] [--repeats 2] [--repeats-large 1]

For each fleet size N: N bare test hosts (containers asgi-bench-s1..sN,
bookworm, re-created), one timed first provision (`pyinfra -y INVENTORY
deploy.py`, all N hosts in one run, as an operator would), then REPEATS
(REPEATS_LARGE from 4 hosts on) timed no-op re-runs. Each timed run holds flock(/tmp/asgi-fleet-bench.lock).
Reports time(N)/time(1) and where the time goes: pyinfra's phases (connect;
prepare, where deploy.py runs per host and reads its facts; execute), the
execute time per kind of operation (from a timestamp on each output line),
and the docker CLI calls (`docker exec` = one command or fact on one host,
`docker cp` = one upload).

Writes bench/results/scaling.json. Defaults take about 8 minutes of their
own on a 2-core machine (the 8-host first provision is 3 of them), plus any
wait for the bench lock (recorded as lock_wait_seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deploylib as lib  # noqa: E402

RESULT = lib.ROOT / "bench" / "results" / "scaling.json"
KINDS = ("apt packages + users", "virtualenvs (pip)", "preflight canary",
         "activation, health gate, load balancer", "files, uploads, release", "lock + prune")


def kind(op: str) -> str:
    if op.startswith("System packages"):
        return KINDS[0]
    if "Virtualenv " in op:
        return KINDS[1]
    if op.startswith("Preflight |"):
        return KINDS[2]
    if op.startswith(("Plan the activation |", "Rollout |")):
        return KINDS[3]
    if op.startswith(("Deploy lock", "Prune releases")):
        return KINDS[5]
    return KINDS[4]


def by_kind(run: dict) -> dict:
    out = {k: 0.0 for k in KINDS}
    for name, secs in run["ops"]:
        out[kind(name)] = round(out[kind(name)] + secs, 3)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=2, help="no-op runs per fleet size below 4")
    parser.add_argument("--repeats-large", type=int, default=1,
                        help="no-op runs per fleet size of 4 and more (each costs 2.5-3x one host's)")
    parser.add_argument("--output", default=str(RESULT))
    parser.add_argument("--keep-hosts", action="store_true")
    parser.add_argument("--from-results", metavar="JSON",
                        help="measure nothing: rebuild the report from a results file's raw timings")
    args = parser.parse_args(argv)
    if args.from_results:
        old = json.loads(Path(args.from_results).read_text())
        out = report(old["raw"], None, args, old["errors"], time.monotonic())
        keep = ("command", "measured_at", "machine", "tools", "runtime_seconds", "lock_wait_seconds",
                "repeats_note")
        out.update({k: old[k] for k in keep if k in old})
        out["runtime_excluding_lock_wait_seconds"] = round(
            out["runtime_seconds"] - out.get("lock_wait_seconds", 0), 1)
        lib.write_json(args.output, out)
        print(out["table_md"])
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]

    started = time.monotonic()
    lib.exit_on_sigterm()
    workdir = lib.new_workdir("scaling")
    all_names = [f"{lib.PREFIX}s{i}" for i in range(1, max(sizes) + 1)]
    raw: dict[str, dict] = {}
    errors = []

    def save():
        lib.write_json(args.output, {**report(raw, argv, args, errors, started), "partial": True})

    try:
        for n in sizes:
            names = all_names[:n]
            with lib.BenchLock():  # booting containers is heavy too: not during others' timed runs
                lib.fresh_hosts(names)
            inv = lib.write_pyinfra_inventory(workdir / f"inventory-{n}.py", names)
            entry = raw[str(n)] = {"hosts": names, "first": [], "noop": []}
            with lib.BenchLock():
                entry["first"].append(lib.pyinfra_deploy(inv, workdir, f"first-{n}"))
            lib.log(f"N={n} first   {entry['first'][-1]['seconds']:7.2f} s")
            save()
            for r in range(args.repeats if n < 4 else args.repeats_large):
                with lib.BenchLock():
                    entry["noop"].append(lib.pyinfra_deploy(inv, workdir, f"noop-{n}-{r}"))
                lib.log(f"N={n} noop    {entry['noop'][-1]['seconds']:7.2f} s "
                        f"changed={sum(entry['noop'][-1]['changed_ops'].values())}")
                save()
            if not args.keep_hosts:
                lib.remove_hosts(names)  # free the machine for the next size
    except (Exception, SystemExit):
        errors.append(traceback.format_exc())
        lib.log(errors[-1])
    finally:
        if not args.keep_hosts:
            lib.remove_hosts(all_names)
    out = report(raw, argv, args, errors, started)
    lib.write_json(args.output, out)
    print(out["table_md"])
    lib.log(f"wrote {args.output} in {out['runtime_seconds']} s")
    return 1 if errors else 0


def _int(x):
    return int(x) if x is not None and x == int(x) else x


def r1(x):
    return "-" if x is None else f"{x:.1f}"


def report(raw, argv, args, errors, started) -> dict:
    medians, ratios, phases, kinds, calls = {}, {}, {}, {}, {}
    for n, entry in raw.items():
        medians[n] = {s: lib.median([r["seconds"] for r in entry[s]]) for s in ("first", "noop")}
        phases[n] = {s: {p: lib.median([r["phases"].get(p, 0) for r in entry[s]])
                         for p in ("connect", "prepare", "execute")} for s in ("first", "noop")}
        kinds[n] = {s: {k: lib.median([by_kind(r)[k] for r in entry[s]]) for k in KINDS}
                    for s in ("first", "noop")}
        calls[n] = {s: {v: _int(lib.median([r["docker_calls"].get(v, {}).get("count", 0) for r in entry[s]]))
                        for v in ("exec", "cp")} for s in ("first", "noop")}
        calls[n]["noop_exec_ms_each"] = lib.median(
            [1000 * r["docker_calls"]["exec"]["seconds"] / r["docker_calls"]["exec"]["count"]
             for r in entry["noop"] if r["docker_calls"].get("exec")])
    base = medians.get("1")
    for n in medians:
        ratios[n] = {s: (round(medians[n][s] / base[s], 2) if base and base[s] and medians[n][s] else None)
                     for s in ("first", "noop")}

    table = ("| hosts | runs (first, no-op) | first provision s | time(N)/time(1) | no-op s | time(N)/time(1) | "
             "docker exec calls (first, no-op) |\n|---|---|---|---|---|---|---|\n")
    for n in medians:
        table += (f"| {n} | {len(raw[n]['first'])}, {len(raw[n]['noop'])} | {r1(medians[n]['first'])} | "
                  f"**{ratios[n]['first']}** | {r1(medians[n]['noop'])} | "
                  f"**{ratios[n]['noop']}** | {calls[n]['first']['exec']}, {calls[n]['noop']['exec']} |\n")
    table += "\nSeconds are medians of the runs; a first provision needs fresh hosts, so it runs once per size.\n"
    table += ("\nWhere the time goes, first provision (s): prepare = deploy.py runs per host (pyinfra 3.10 "
              "reads nearly all facts while executing); execute split by kind of operation, facts included.\n\n"
              "| hosts | connect | prepare | " + " | ".join(KINDS) + " |\n|---|---|---|" + "---|" * len(KINDS) + "\n")
    for n in medians:
        table += (f"| {n} | {r1(phases[n]['first']['connect'])} | {r1(phases[n]['first']['prepare'])} | "
                  + " | ".join(r1(kinds[n]["first"][k]) for k in KINDS) + " |\n")
    table += ("\nThe 2 cores are shared by every host, so the parallel parts (packages, virtualenvs) grow "
              "with the fleet here; on real servers they would not. The activation column grows by design: "
              "with the default `rollout_batch` of 1, hosts are activated and health-gated one at a time.\n")
    table += ("\nNo-op re-run (s), and what one `docker exec` round trip (a fact or a command) costs "
              "as the fleet grows:\n\n| hosts | connect | prepare | execute | docker exec calls per host | "
              "ms per docker exec |\n|---|---|---|---|---|---|\n")
    for n in medians:
        p = phases[n]["noop"]
        per_host = round(calls[n]["noop"]["exec"] / int(n)) if calls[n]["noop"]["exec"] else None
        ms = calls[n]["noop_exec_ms_each"]
        table += (f"| {n} | {r1(p['connect'])} | {r1(p['prepare'])} | {r1(p['execute'])} | {per_host} | "
                  f"{round(ms) if ms else None} |\n")

    out = {
        "benchmark": "scaling",
        "command": lib.command_line("scaling.py", argv),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": lib.machine(),
        "tools": lib.tool_versions(),
        "repeats_note": (f"1 first provision per fleet size (8 fresh hosts take minutes), "
                         f"{getattr(args, 'repeats', '?')} no-op runs per size below 4 hosts, {args.repeats_large} from 4 "
                         "hosts on (where one no-op costs 2.5-3x one host's), to keep `make bench` "
                         "within 30 minutes; medians of those"),
        "runs": {n: {s: len(e[s]) for s in ("first", "noop")} for n, e in raw.items()},
        "medians_seconds": medians,
        "ratio_to_one_host": ratios,
        "phases_median": phases,
        "execute_by_kind_median": kinds,
        "docker_calls_median": calls,
        "checks": {"noop_changes_nothing": all(sum(r["changed_ops"].values()) == 0
                                               for e in raw.values() for r in e["noop"])},
        "errors": errors,
        **lib.runtime(started),
        "raw": raw,
        "table_md": table,
    }
    return out

if __name__ == "__main__":
    sys.exit(main())
