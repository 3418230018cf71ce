"""The async doctor's reading of py-spy samples (speedscope documents built here)."""

from asgi_fleet.doctor import (
    BLOCKED_SHARE, analyse, called_on, describe_site, is_poll, Frame, short_path,
)

SITE = "/srv/hello/venvs/0123/lib/python3.11/site-packages"
APP = "/srv/hello/releases/abc/doctor_demo.py"
FRAMES = [
    {"name": "<module>", "file": "/srv/hello/current/.venv/bin/gunicorn", "line": 8},  # 0 root: not the app's
    {"name": "Runner.run", "file": "/usr/lib/python3.11/asyncio/runners.py", "line": 118},  # 1 poll
    {"name": "RequestResponseCycle.run_asgi", "file": f"{SITE}/uvicorn/protocols/http/httptools_impl.py",
     "line": 409},  # 2
    {"name": "blocking", "file": APP, "line": 12},  # 3 app, a C call on its line
    {"name": "query", "file": APP, "line": 20},  # 4 app, calls into a library
    {"name": "SocketIO.readinto", "file": "/usr/lib/python3.11/socket.py", "line": 706},  # 5
    {"name": "serialize_response", "file": f"{SITE}/fastapi/routing.py", "line": 155},  # 6
    {"name": "_bootstrap", "file": "/usr/lib/python3.11/threading.py", "line": 995},  # 7
]
DIRS = ("/srv/hello/releases/", "/srv/hello/current/")
POLL, BLOCKED, QUERY, FRAMEWORK = [0, 1], [0, 2, 3], [0, 2, 4, 5], [0, 2, 6]


def speedscope(main: list[list[int]], other: list[list[int]] = ()) -> dict:
    def profile(name, samples):
        return {"type": "sampled", "name": name, "unit": "seconds", "samples": samples,
                "weights": [0.01] * len(samples)}
    return {"shared": {"frames": FRAMES},
            "profiles": [profile('Thread 41 "MainThread"', main),
                         profile('Thread 52 "AnyIO worker thread"', [[7, 4, 5]] * len(other))]}


def test_a_sync_call_in_async_def_is_named_by_file_line_and_callee():
    doc = speedscope([POLL] * 20 + [BLOCKED] * 70 + [FRAMEWORK] * 10)
    report = analyse(41, doc, DIRS, {f"{APP}:12": "    time.sleep(0.05)  # blocks"})
    assert (report.samples, report.poll, report.app, report.loop) == (100, 20, 70, 10)
    [site] = report.blocked
    assert (site.frame.line, site.callee, site.share) == (12, "time.sleep", 0.7)
    assert report.longest_stall == 0.7  # 70 samples in a row, 10 ms apart
    assert describe_site(site) == (
        "doctor_demo.py:12 in blocking() calls time.sleep synchronously: "
        "70% of the loop's samples")


def test_a_library_callee_is_named_by_its_function_and_module():
    report = analyse(41, speedscope([POLL] * 50 + [QUERY] * 50), DIRS)
    [site] = report.blocked
    assert (site.frame.name, site.callee) == ("query", "SocketIO.readinto (socket.py)")


def test_busy_well_behaved_async_code_and_worker_threads_are_not_blocking():
    # the framework busy half the time, app code a little: judged, and nothing blocked
    few = int(100 * BLOCKED_SHARE) - 1
    doc = speedscope([POLL] * 40 + [FRAMEWORK] * (60 - few) + [BLOCKED] * few, other=[[0]] * 80)
    report = analyse(41, doc, DIRS)
    assert report.judged and report.blocked == [] and report.sites[0].samples == few
    # blocking calls in a worker thread (run_in_executor, to_thread) are not the loop's
    assert report.samples == 100


def test_an_idle_worker_has_nothing_to_judge():
    report = analyse(41, speedscope([POLL] * 200 + [FRAMEWORK]), DIRS)
    assert not report.judged and report.busy_share < 0.01
    assert not analyse(41, {"profiles": []}, DIRS).judged


def test_poll_frames_of_uvloop_and_of_asyncio_s_own_loop():
    assert is_poll(Frame("Runner.run", "/usr/lib/python3.13/asyncio/runners.py", 118))
    assert is_poll(Frame("EpollSelector.select", "/usr/lib/python3.11/selectors.py", 468))
    assert not is_poll(Frame("serialize_response", f"{SITE}/fastapi/routing.py", 155))


def test_called_on_reads_the_call_from_a_source_line():
    assert called_on("    time.sleep(0.05)  # not(this)") == "time.sleep"
    assert called_on("    rows = cursor.execute('select 1')") == "cursor.execute"
    assert called_on("    x = 1") is None
    assert short_path(f"{SITE}/psycopg2/extras.py") == "psycopg2/extras.py"
    assert short_path("/usr/lib/python3.11/socket.py") == "socket.py"
