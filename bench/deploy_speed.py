"""Deploy speed: asgi-fleet (pyinfra deploy.py) against an equivalent Ansible playbook.

    .venv/bin/python bench/deploy_speed.py [--repeats 3] [--first-repeats 2]

Two fresh test hosts side by side (asgi-bench-1 for asgi-fleet, asgi-bench-2
for Ansible, both bookworm, made with the project's fleet code), timed for:

  first    a first provision of a bare host (both hosts re-created per repeat);
           asgi-fleet's controller cache starts empty, so its first one
           downloads the wheelhouse and the second finds it (Ansible's host
           installs from the package index each time)
  noop     a re-run with nothing to change
  code     a code-only release (one comment appended to the app's app.py)
  floor    one no-op operation (pyinfra: bench/noop_deploy.py; Ansible: ansible/noop.yml)

The order of the two tools alternates between repeats, and each pair runs
under flock(/tmp/asgi-fleet-bench.lock) so the other benchmarks stay out of
its way. The playbook (bench/ansible/site.yml) does the same work with the
same files and variables; its header lists what asgi-fleet does on top
(lock, preflight canary, ...). Every run is checked: every host ok, a no-op
run changes nothing, a code release activates the new release.

Writes bench/results/deploy_speed.json: raw timings (wall time, pyinfra's
phases, per-operation times, docker CLI calls), medians, ratios, the machine
and `table_md`. Defaults take about 7-8 minutes of their own on a 2-core
machine, plus any wait for the bench lock (recorded as lock_wait_seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deploylib as lib  # noqa: E402

RESULT = lib.ROOT / "bench" / "results" / "deploy_speed.json"
PY_HOST, AN_HOST = "asgi-bench-1", "asgi-bench-2"
TOOLS = ("asgi-fleet", "ansible")


def _pair(order, runners):
    out = {}
    with lib.BenchLock():
        for tool in order:
            out[tool] = runners[tool]()
    return out


def fmt(x):
    return "-" if x is None else f"{x:.1f}"


def summarize_ops(runs: list[dict], top: int = 8) -> list:
    """Median seconds per operation across runs, largest first."""
    per: dict[str, list] = {}
    for run in runs:
        for name, secs in run["ops"]:  # release ids differ between runs: one name per step
            per.setdefault(re.sub(r"\b[0-9a-f]{12}\b", "ID", name), []).append(secs)
    rows = sorted(((name.replace(" | ", ": "), lib.median(v)) for name, v in per.items()),
                  key=lambda r: -r[1])
    return [list(r) for r in rows[:top]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="no-op, code-release and floor runs per tool")
    parser.add_argument("--first-repeats", type=int, default=2, help="first provisions per tool")
    parser.add_argument("--output", default=str(RESULT))
    parser.add_argument("--keep-hosts", action="store_true", help="leave the containers running")
    parser.add_argument("--from-results", metavar="JSON",
                        help="measure nothing: rebuild the report from a results file's raw timings")
    args = parser.parse_args(argv)
    if args.from_results:
        return rebuild(args)

    started = time.monotonic()
    lib.exit_on_sigterm()
    workdir = lib.new_workdir("speed")
    cache = workdir / "controller-cache"  # asgi-fleet's wheelhouses: empty before the first provision
    os.environ["ASGI_FLEET_CACHE"] = str(cache)
    downloads = cache / "wheelhouse" / "downloads.log"

    def downloaded() -> int:
        return len(downloads.read_text().splitlines()) if downloads.exists() else 0
    lib.ensure_ansible()
    app_dir = lib.app_copy(workdir)
    py_inv = lib.write_pyinfra_inventory(workdir / "inventory.py", [PY_HOST])
    an_inv = lib.write_ansible_inventory(workdir / "inventory.yml", [AN_HOST])
    vars_file = workdir / "vars.json"
    source = f"app_source={app_dir}"
    raw: dict[str, dict[str, list]] = {s: {t: [] for t in TOOLS} for s in ("first", "noop", "code", "floor")}
    errors = []
    n = 0

    def runners(scenario, expect_release=None):
        nonlocal n
        n += 1
        tag = f"{scenario}-{n}"
        if scenario == "floor":
            return {"asgi-fleet": lambda: lib.pyinfra_deploy(py_inv, workdir, "py-" + tag,
                                                             deploy_file="bench/noop_deploy.py"),
                    "ansible": lambda: lib.ansible_play(an_inv, None, workdir, "an-" + tag, "noop.yml")}
        return {"asgi-fleet": lambda: lib.pyinfra_deploy(py_inv, workdir, "py-" + tag, [source]),
                "ansible": lambda: lib.ansible_play(an_inv, vars_file, workdir, "an-" + tag)}

    def record(scenario, pair, before=0):
        if scenario == "first":  # wheelhouses the controller downloaded during it (0: from the cache)
            pair["asgi-fleet"]["wheelhouse_downloads"] = downloaded() - before
        for tool, result in pair.items():
            raw[scenario][tool].append(result)
            lib.log(f"{scenario:6} {tool:10} {result['seconds']:7.2f} s  changed={result.get('changed_ops')}")
        lib.write_json(args.output, {**report(raw, argv, args, errors, started), "partial": True})

    try:
        lib.ansible_vars(app_dir, vars_file)
        for r in range(args.first_repeats):
            with lib.BenchLock():  # booting containers is heavy too: not during others' timed runs
                lib.fresh_hosts([PY_HOST, AN_HOST])
            before = downloaded()
            record("first", _pair(TOOLS if r % 2 == 0 else TOOLS[::-1], runners("first")), before)
        for r in range(args.repeats):
            order = TOOLS if r % 2 == 0 else TOOLS[::-1]
            record("noop", _pair(order, runners("noop")))
            record("floor", _pair(order, runners("floor")))
        for r in range(args.repeats):
            lib.bump_code(app_dir, r)
            release = lib.ansible_vars(app_dir, vars_file)["release_id"]
            record("code", _pair(TOOLS if r % 2 == 0 else TOOLS[::-1], runners("code")))
            for tool, host in (("asgi-fleet", PY_HOST), ("ansible", AN_HOST)):
                got = lib.subprocess.run(["docker", "exec", host, "curl", "-s", "localhost:8000/healthz"],
                                         capture_output=True, text=True).stdout
                if json.loads(got or "{}").get("release") != release:
                    raise RuntimeError(f"code release {release} not served by {tool}: {got}")
    except (Exception, SystemExit):
        errors.append(traceback.format_exc())
        lib.log(errors[-1])
    finally:
        if not args.keep_hosts:
            lib.remove_hosts([PY_HOST, AN_HOST])

    out = report(raw, argv, args, errors, started)
    lib.write_json(args.output, out)
    print(out["table_md"])
    lib.log(f"wrote {args.output} in {out['runtime_seconds']} s")
    return 1 if errors else 0


def rebuild(args) -> int:
    """The report of an earlier run from its raw timings (after a change to the report)."""
    old = json.loads(Path(args.from_results).read_text())
    first = max(len(v) for v in old["raw"]["first"].values())
    others = max(len(v) for v in old["raw"]["noop"].values())
    out = report(old["raw"], None, argparse.Namespace(first_repeats=first, repeats=others),
                 old["errors"], time.monotonic())
    keep = ("command", "measured_at", "machine", "tools", "runtime_seconds", "lock_wait_seconds")
    out.update({k: old[k] for k in keep if k in old})
    out["runtime_excluding_lock_wait_seconds"] = round(out["runtime_seconds"] - out.get("lock_wait_seconds", 0), 1)
    lib.write_json(args.output, out)
    print(out["table_md"])
    return 0


def report(raw, argv, args, errors, started) -> dict:
    # Checks that make the figures mean what they say.
    checks = {
        "noop_changes_nothing": all(sum(r["changed_ops"].values()) == 0
                                    for t in TOOLS for r in raw["noop"][t]),
        "code_release_activation_asgi_fleet": sorted({a for r in raw["code"]["asgi-fleet"]
                                                      for h in r["activation"].values() for a in h.values()}),
    }
    medians = {s: {t: lib.median([r["seconds"] for r in raw[s][t]]) for t in TOOLS} for s in raw}
    counts = {s: {t: len(raw[s][t]) for t in TOOLS} for s in raw}

    def calls(s, t, verb):
        m = lib.median([r["docker_calls"].get(verb, {}).get("count", 0) for r in raw[s][t]])
        return int(m) if m is not None and m == int(m) else m

    ratios = {s: (round(medians[s]["asgi-fleet"] / medians[s]["ansible"], 2)
                  if medians[s]["asgi-fleet"] and medians[s]["ansible"] else None) for s in raw}
    floor_ratio = (round(medians["noop"]["asgi-fleet"] / medians["floor"]["asgi-fleet"], 2)
                   if medians["noop"]["asgi-fleet"] and medians["floor"]["asgi-fleet"] else None)
    floor_ratio_an = (round(medians["noop"]["ansible"] / medians["floor"]["ansible"], 2)
                      if medians["noop"]["ansible"] and medians["floor"]["ansible"] else None)
    phases = {s: {k: lib.median([r["phases"].get(k, 0) for r in raw[s]["asgi-fleet"]])
                  for k in ("startup", "connect", "prepare", "execute", "finish")} for s in raw}

    labels = {"first": "first provision (bare host)", "noop": "no-op re-run",
              "code": "code-only release", "floor": "one no-op operation (floor)"}
    rows = ["| scenario | runs each | asgi-fleet s | Ansible s | asgi-fleet / Ansible | faster |"
            " docker exec + cp calls: asgi-fleet, Ansible |",
            "|---|---|---|---|---|---|---|"]
    for s in ("first", "noop", "code", "floor"):
        a, b, ratio = medians[s]["asgi-fleet"], medians[s]["ansible"], ratios[s]
        if ratio is None:
            faster = "-"
        elif abs(ratio - 1) < 0.05:
            faster = f"neither (within 5%: {'asgi-fleet' if ratio < 1 else 'Ansible'} by {abs(1 - ratio):.0%})"
        elif ratio < 1:
            faster = f"asgi-fleet ({1 / ratio:.1f}x)"
        else:
            faster = f"**Ansible** ({ratio:.1f}x)"
        rows.append(f"| {labels[s]} | {counts[s]['asgi-fleet']} | {fmt(a)} | {fmt(b)} | **{ratio}** | {faster} | "
                    f"{calls(s, 'asgi-fleet', 'exec')} + {calls(s, 'asgi-fleet', 'cp')}, "
                    f"{calls(s, 'ansible', 'exec')} + {calls(s, 'ansible', 'cp')} |")
    table = "\n".join(rows)
    firsts = [(r["seconds"], r.get("wheelhouse_downloads")) for r in raw["first"]["asgi-fleet"]]
    if firsts and firsts[0][1] is not None:
        table += ("\n\nasgi-fleet's first provisions in order, from an empty controller cache: "
                  + "; ".join(f"{fmt(sec)} s with {n} wheelhouse download{'s' if n != 1 else ''}"
                              for sec, n in firsts)
                  + " (hosts install offline: no host asks the index).")

    def exec_ms(t):
        per = [r["docker_calls"]["exec"]["seconds"] / r["docker_calls"]["exec"]["count"]
               for r in raw["noop"][t] if r["docker_calls"].get("exec")]
        return round(1000 * lib.median(per)) if per else None

    table += (f"\n\nIn the no-op re-run, one `docker exec` round trip (a command, a fact or a module) "
              f"takes {exec_ms('asgi-fleet')} ms for asgi-fleet (a shell command) and "
              f"{exec_ms('ansible')} ms for Ansible (a Python module: ansiballz + interpreter start), "
              "medians.")
    table += (f"\n\nNo-op re-run against the floor (one no-op operation, same host, same tool): "
              f"asgi-fleet **{floor_ratio}x** ({fmt(medians['noop']['asgi-fleet'])} s vs "
              f"{fmt(medians['floor']['asgi-fleet'])} s); Ansible {floor_ratio_an}x "
              f"({fmt(medians['noop']['ansible'])} s vs {fmt(medians['floor']['ansible'])} s).\n")
    table += ("\nasgi-fleet phases, medians in s (prepare: deploy.py runs per host; pyinfra 3.10 reads "
              "nearly all facts while executing, so execute holds facts, commands and uploads):\n\n| scenario | connect | prepare | execute |\n|---|---|---|---|\n")
    for s in ("first", "noop", "code", "floor"):
        p = phases[s]
        table += f"| {labels[s]} | {p['connect']} | {p['prepare']} | {p['execute']} |\n"
    slow = {s: {t: summarize_ops(raw[s][t], 5) for t in TOOLS} for s in ("first", "code", "noop")}
    table += "\nSlowest steps (median s):\n\n| scenario | asgi-fleet | Ansible |\n|---|---|---|\n"
    for s in ("first", "code", "noop"):
        table += (f"| {labels[s]} | " + "; ".join(f"{n} {v}" for n, v in slow[s]["asgi-fleet"][:4])
                  + " | " + "; ".join(f"{n} {v}" for n, v in slow[s]["ansible"][:4]) + " |\n")

    out = {
        "benchmark": "deploy_speed",
        "command": lib.command_line("deploy_speed.py", argv),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": lib.machine(),
        "tools": lib.tool_versions(),
        "runs_per_tool": counts,
        "repeats_note": (f"{args.first_repeats} first provisions per tool (the costly part), "
                         f"{args.repeats} no-op, code-release and floor runs per tool, to keep "
                         "`make bench` within 30 minutes; the two tools alternate order each repeat"),
        "hosts": {"asgi-fleet": PY_HOST, "ansible": AN_HOST, "image": "asgi-fleet-host:bookworm",
                  "connection": "docker exec (pyinfra @docker, ansible community.docker.docker)"},
        "medians_seconds": medians,
        "ratio_asgi_fleet_over_ansible": ratios,
        "noop_over_floor": {"asgi-fleet": floor_ratio, "ansible": floor_ratio_an},
        "asgi_fleet_phases_median": phases,
        "slowest_steps_median": slow,
        "checks": checks,
        "not_equal_work": ("asgi-fleet also takes a deploy lock, runs preflight (candidate config, import, "
                           "check-config, a one-worker canary) on each new release, waits for every "
                           "worker on the new release, checks the venv's installed dists, prunes old "
                           "releases; Ansible also installs python3-apt (needed by its apt module)"),
        "errors": errors,
        **lib.runtime(started),
        "raw": raw,
        "table_md": table,
    }
    return out


if __name__ == "__main__":
    sys.exit(main())
