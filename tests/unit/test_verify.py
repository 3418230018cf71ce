"""The verification suite's reading of live processes, on captured samples."""

import pytest

from asgi_fleet.verify import (
    REPEAT_COUNT, REPEAT_WINDOW, fast_stack, journal_events, judge_events,
    module_file_patterns, parse_activation, parse_since, recognised_worker, seconds, worker_in_stack,
)

SITE = "/srv/hello/venvs/39443187d4c5/lib/python3.11/site-packages"


def stack(defining, path, instance):
    """A worker's stack as `py-spy dump --locals --full-filenames` prints it."""
    return f"""\
Process 12364: gunicorn: worker [hello]
Python v3.11.2 (/usr/bin/python3.11)

Thread 12364 (idle): "MainThread"
    Runner.run (/usr/lib/python3.11/asyncio/runners.py:118)
        Arguments:
            self: <Runner at 0x7f4f35182390>
    {defining}.run ({SITE}/{path}:126)
        Arguments:
            self: <{instance} at 0x7f4f34eb6290>
    Worker.init_process ({SITE}/gunicorn/workers/base.py:146)
        Arguments:
            self: <cell at 0x7f4f34e8e260>
"""


UVICORN_WORKER_STACK = stack("UvicornWorker", "uvicorn_worker/_workers.py", "UvicornWorker")
DRAINING_STACK = stack("UvicornWorker", "uvicorn_worker/_workers.py", "DrainingUvicornWorker")
SYNC_STACK = stack("SyncWorker", "gunicorn/workers/sync.py", "SyncWorker")
DEPRECATED_STACK = stack("UvicornWorker", "uvicorn/workers.py", "UvicornWorker")

MAPS_FAST = """\
7f1c1e000000-7f1c1e0a0000 r--p 00000000 fd:01 1 /srv/hello/venvs/x/lib/python3.11/site-packages/uvloop/loop.cpython-311-x86_64-linux-gnu.so
7f1c1f000000-7f1c1f010000 r--p 00000000 fd:01 2 /srv/hello/venvs/x/lib/python3.11/site-packages/httptools/parser/parser.cpython-311-x86_64-linux-gnu.so
"""


def test_module_file_patterns():
    assert module_file_patterns("uvicorn_worker.UvicornWorker") == ("/uvicorn_worker.py", "/uvicorn_worker/")
    assert module_file_patterns("uvicorn.workers.UvicornWorker") == ("/uvicorn/workers.py", "/uvicorn/workers/")


@pytest.mark.parametrize("dump, configured, runs_it", [
    (UVICORN_WORKER_STACK, "uvicorn_worker.UvicornWorker", True),
    (DRAINING_STACK, "asgi_fleet_worker.DrainingUvicornWorker", True),
    (DRAINING_STACK, "uvicorn_worker.UvicornWorker", False),
    (UVICORN_WORKER_STACK, "asgi_fleet_worker.DrainingUvicornWorker", False),
    (SYNC_STACK, "asgi_fleet_worker.DrainingUvicornWorker", False),
    (DEPRECATED_STACK, "uvicorn_worker.UvicornWorker", False),  # same class name, other module
    (DEPRECATED_STACK, "uvicorn.workers.UvicornWorker", True),
    ("Error: no such process", "uvicorn_worker.UvicornWorker", False),
])
def test_the_configured_worker_is_found_in_the_live_stack(dump, configured, runs_it):
    assert worker_in_stack(dump, configured) is runs_it


@pytest.mark.parametrize("dump, name", [
    (UVICORN_WORKER_STACK, "UvicornWorker (run() from uvicorn_worker/_workers.py)"),
    (DRAINING_STACK, "DrainingUvicornWorker (run() from uvicorn_worker/_workers.py)"),
    (SYNC_STACK, "gunicorn's sync worker"),
    (DEPRECATED_STACK, "the deprecated uvicorn.workers.UvicornWorker"),
    ("nothing useful", "an unrecognised worker"),
])
def test_recognised_worker(dump, name):
    assert recognised_worker(dump) == name


def test_fast_stack_reads_the_extensions_in_memory_maps():
    assert fast_stack(MAPS_FAST) == {"uvloop": True, "httptools": True}
    only_loop = MAPS_FAST.splitlines()[0]
    assert fast_stack(only_loop) == {"uvloop": True, "httptools": False}
    assert fast_stack("") == {"uvloop": False, "httptools": False}


NOW = 1_764_626_400.0  # 2025-12-01 22:00:00 UTC


def journal(*lines: tuple[float, str]) -> str:
    return "".join(f"{at:.6f} web1 gunicorn[12]: {text}\n" for at, text in lines)


def test_journal_events_are_the_alarm_lines_with_their_time():
    events = journal_events(
        journal((NOW - 5, "[12] [CRITICAL] WORKER TIMEOUT (pid:13)"),
                (NOW - 4, "[INFO] Booting worker with pid: 14"),
                (NOW - 3, "RuntimeWarning: coroutine 'handler' was never awaited"))
        + "-- Boot 1f2e --\n")
    assert [(e.at, e.alarm) for e in events] == [(NOW - 5, "WORKER TIMEOUT"),
                                                  (NOW - 3, "was never awaited")]
    assert journal_events(journal((NOW, "[INFO] Listening at: unix:/run/x (12)"))) == []


KILLED = "[ERROR] Worker (pid:40) was sent SIGKILL! Perhaps out of memory?"


def test_a_worker_killed_once_after_the_activation_is_only_a_warning():
    events = journal_events(journal((NOW - 60, KILLED)))
    [finding] = judge_events(events, now=NOW, activation=(NOW - 300, NOW - 280))
    assert not finding.failing and finding.count == 1
    assert "a warning" in finding.describe() and "2025-12-01 21:59:00 UTC" in finding.describe()


def test_alarms_during_the_last_activation_or_after_since_fail():
    events = journal_events(journal((NOW - 3000, KILLED), (NOW - 290, KILLED), (NOW - 100, KILLED)))
    during, older = judge_events(events, now=NOW, activation=(NOW - 300, NOW - 280))
    assert (during.failing, during.count, during.first) == (True, 1, NOW - 290)
    assert "during the last activation" in during.why
    assert (older.failing, older.count) == (False, 2)
    [since, before] = judge_events(events, now=NOW, since=NOW - 200)
    assert (since.failing, since.count, before.count) == (True, 1, 2)
    assert "--since" in since.why


def test_an_alarm_that_keeps_happening_fails_whatever_the_window():
    events = journal_events(journal(*[(NOW - 500 + 100 * i, KILLED) for i in range(REPEAT_COUNT)]))
    [finding] = judge_events(events, now=NOW, activation=(NOW - 9000, NOW - 8990))
    assert finding.failing and finding.count == REPEAT_COUNT and "keeps happening" in finding.why
    # the same kills spread out over more than the window are warnings
    spread = journal_events(journal(*[(NOW - REPEAT_WINDOW * (i + 1), KILLED)
                                      for i in range(REPEAT_COUNT)]))
    assert [f.failing for f in judge_events(spread, now=NOW)] == [False]
    # what keeps happening now, and what happened during the activation, both fail
    during = journal_events(journal((NOW - 9000, KILLED))) + events
    [finding] = judge_events(during, now=NOW, activation=(NOW - 9001, NOW - 8990))
    assert finding.failing and finding.count == REPEAT_COUNT + 1
    assert "keeps happening" in finding.why and "during the last activation" in finding.why
    # a restarted master starts afresh: the kills before it are history
    assert [f.failing for f in judge_events(events, now=NOW, master_started=NOW - 350)] == [False]


@pytest.mark.parametrize("text, expected", [
    ("30m", NOW - 1800), ("90s", NOW - 90), ("2h", NOW - 7200), ("1d", NOW - 86400),
    ("1764626400", NOW), ("2025-12-01T22:00:00Z", NOW), ("2025-12-01T22:00:00", NOW),
    ("2025-12-01T23:00:00+01:00", NOW),
])
def test_since_takes_a_time_or_a_duration_ago(text, expected):
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "30 m", "-5m", "", "1;rm -rf /"])
def test_since_refuses_anything_else_naming_the_option_and_what_is_allowed(text):
    with pytest.raises(ValueError, match=r"--since .*ISO 8601.*epoch seconds.*duration ago"):
        parse_since(text, NOW)


def test_the_last_activation_record():
    assert parse_activation("1764626000 1764626012 0\n") == (1764626000.0, 1764626012.0)
    assert parse_activation("") is None
    assert parse_activation("garbage") is None


@pytest.mark.parametrize("text, value", [("40s", 40), ("1min 30s", 90), ("500ms", 0.5), ("infinity", float("inf"))])
def test_systemd_durations(text, value):
    assert seconds(text) == value


def test_the_masters_view_agrees_only_when_it_lists_the_children_all_beating():
    from asgi_fleet.verify import masters_view, masters_view_disagrees

    # as gunicorn 27's control socket answers: `booted` is the worker's own flag, false in the master
    view = {"workers": [{"pid": 11, "age": 1, "booted": False, "aborted": False, "last_heartbeat": 12.7},
                        {"pid": 12, "age": 2, "booted": False, "aborted": False, "last_heartbeat": 3.1}],
            "count": 2}
    assert masters_view_disagrees(view, [12, 11], timeout=30) is None
    assert masters_view(view) == "2 workers, beat 13 s ago"
    assert masters_view_disagrees(view, [11, 13], timeout=30) == (
        "it lists workers [11, 12] but its children are [11, 13]")
    view["workers"][1]["last_heartbeat"] = 31.0
    assert masters_view_disagrees(view, [11, 12], timeout=30) == (
        "workers [12] sent no heartbeat for over timeout (30 s): hung")
    assert "does not answer" in masters_view_disagrees({}, [11], timeout=30)
    assert masters_view({}) == "no answer"


def test_gunicorns_asgi_worker_is_found_by_its_short_name_and_runs_its_own_parser():
    from asgi_fleet.verify import fast_stack_needed, http_parser

    dump = ("Thread 1 (idle): \"MainThread\"\n"
            "    run (gunicorn/workers/gasgi.py:120)\n"
            "    ASGIWorker.run (/srv/x/venv/lib/python3.11/site-packages/gunicorn/workers/gasgi.py:120)\n"
            "        Arguments:\n            self: <ASGIWorker at 0x7f>\n"
            "    Worker.init_process (/srv/x/venv/lib/python3.11/site-packages/gunicorn/workers/base.py:150)\n")
    assert worker_in_stack(dump, "asgi") and not worker_in_stack(dump, "uvicorn_worker.UvicornWorker")
    assert recognised_worker(dump) == "gunicorn's ASGI worker"
    assert fast_stack_needed("asgi") == ("uvloop",)
    assert http_parser("asgi", []) == "gunicorn" and http_parser("x.Y", [{"httptools": True}]) == "httptools"
    from asgi_fleet.verify import serves_as

    assert serves_as("asgi", "gunicorn/asgi") and not serves_as("asgi", "uvicorn")
    assert serves_as("uvicorn_worker.UvicornWorker", "uvicorn") and not serves_as("x.Y", "nginx")
