"""The verify run's results as data: JSON, a Nagios line, a Prometheus textfile."""

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from asgi_fleet.report import (
    PromiseResult, document, json_text, nagios_line, prometheus_text, verdict, write_atomically,
)
from asgi_fleet.sinks import prometheus_label

KEPT = PromiseResult("asgi-web1", "hello", "worker_count_matches_the_hosts_sizing")
BROKEN = PromiseResult("asgi-web2", "hello", "health_endpoint_answers_through_the_bind", "fail",
                       "asgi-web2/hello: GET /healthz answered 503")
WARNED = PromiseResult("asgi-web1", "hello", "journal_has_no_alarm", "warn",
                       warnings=["asgi-web1/hello: 'Perhaps out of memory?' at ..."])
HOST = PromiseResult("asgi-lb", None, "nginx_is_running")


def test_the_verdict_is_the_worst_outcome_and_unknown_when_nothing_was_checked():
    assert verdict([KEPT, HOST]) == "ok"
    assert verdict([KEPT, WARNED]) == "warning"
    assert verdict([KEPT, WARNED, BROKEN]) == "critical"
    assert verdict([PromiseResult("h", None, "p", "skip")]) == "unknown"
    assert verdict([]) == "unknown"


def test_the_nagios_line_names_what_is_broken_with_perfdata():
    assert nagios_line([KEPT, HOST]) == ("ASGI-FLEET OK - 0 of 2 promises broken "
                                         "| kept=2 warned=0 broken=0 skipped=0")
    line = nagios_line([KEPT, WARNED, BROKEN])
    assert line.startswith("ASGI-FLEET CRITICAL - 1 of 3 promises broken "
                           "(asgi-web2/hello health_endpoint_answers_through_the_bind), "
                           "1 with warnings (asgi-web1/hello journal_has_no_alarm)")
    assert line.endswith("| kept=1 warned=1 broken=1 skipped=0") and "\n" not in line


def test_the_json_report_lists_every_promise_and_the_exit_code(tmp_path):
    doc = document("inventories/docker.py", [KEPT, BROKEN, HOST], [{"host": "asgi-web1"}], 1, 1.5)
    path = tmp_path / "out" / "verify.json"
    write_atomically(path, json_text(doc))
    read = json.loads(path.read_text())
    assert read["verdict"] == "critical" and read["exit_code"] == 1
    assert read["counts"] == {"pass": 2, "warn": 0, "fail": 1, "skip": 0}
    assert [(p["host"], p["app"], p["promise"], p["outcome"]) for p in read["promises"]] == [
        ("asgi-web1", "hello", "worker_count_matches_the_hosts_sizing", "pass"),
        ("asgi-web2", "hello", "health_endpoint_answers_through_the_bind", "fail"),
        ("asgi-lb", None, "nginx_is_running", "pass")]
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temporary file left


def test_the_prometheus_textfile_has_a_series_per_promise():
    text = prometheus_text([KEPT, BROKEN, WARNED], 1, 1764626400.0)
    assert ('asgi_fleet_promise_ok{host="asgi-web2",app="hello",'
            'promise="health_endpoint_answers_through_the_bind"} 0') in text
    assert ('asgi_fleet_promise_warnings{host="asgi-web1",app="hello",'
            'promise="journal_has_no_alarm"} 1') in text
    assert "asgi_fleet_verify_exit_code 1\n" in text
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert all(re.fullmatch(r'[a-z_]+(\{[^\n]*\})? [0-9.]+', line) for line in samples), samples
    names = [line.split("{")[0].split(" ")[0] for line in samples]
    assert names == sorted(names, key=names.index) and len(set(names)) == 4  # one group each
    assert [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n] == list(dict.fromkeys(names))


def _read_label(quoted: str) -> str:
    """Prometheus' own reading of a label value (text format: \\\\, \\" and \\n)."""
    assert quoted[0] == quoted[-1] == '"'
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), quoted[1:-1])


@given(st.text())
def test_any_label_value_reads_back_as_itself(value):
    quoted = prometheus_label(value)
    assert "\n" not in quoted
    assert re.fullmatch(r'"(?:[^"\\]|\\.)*"', quoted, re.S)
    assert _read_label(quoted) == value
