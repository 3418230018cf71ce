import pytest

from asgi_fleet.activation import (
    RELOAD, REBIND, RESTART, START, NONE, RunningMaster, activation_kind, parse_running_master,
)

VENV = "/srv/shop/venvs/aaa"
RELEASE = "/srv/shop/releases/r2"


def master(venv=VENV, workers=(RELEASE, RELEASE)):
    return RunningMaster(pid=10, venv=venv, worker_releases=tuple(workers))


@pytest.mark.parametrize("running, changed, expected", [
    (None, set(), START),
    (None, {"config", "code"}, START),
    (master(), set(), NONE),
    (master(), {"config"}, RELOAD),
    (master(workers=("/srv/shop/releases/r1",) * 2), set(), RELOAD),  # new code
    (master(workers=(RELEASE, "/srv/shop/releases/r1")), set(), RELOAD),  # half old
    (master(workers=()), set(), RELOAD),  # master without workers: respawn them
    (master(workers=(RELEASE,)), set(), RELOAD),  # one removed by TTOU: HUP restores the count
    (master(venv="/srv/shop/venvs/old"), set(), RESTART),  # HUP can't swap packages
    (master(), {"env"}, RESTART),
    (master(), {"service_unit", "config"}, RESTART),
    (master(), {"socket_unit"}, REBIND),
    (None, {"socket_unit"}, START),  # START restarts the socket too
    # workers that fell back to asyncio/h11: new workers load the fast stack again
    (RunningMaster(10, VENV, (RELEASE, RELEASE), slow_workers=(11,)), set(), RELOAD),
])
def test_activation_kind(running, changed, expected):
    assert activation_kind(running, venv=VENV, release_dir=RELEASE, workers=2, changed=changed) == expected


def test_parse_running_master():
    out = ("pid 42\nsite /srv/shop/venvs/aaa/lib/python3.11/site-packages/\n"
           "worker 43 /srv/shop/releases/r2\nworker 44 /srv/shop/releases/r2\nslow 44\n")
    assert parse_running_master(out) == RunningMaster(42, VENV, (RELEASE, RELEASE), (44,))


def test_parse_no_master():
    assert parse_running_master("") is None
