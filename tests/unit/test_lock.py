from asgi_fleet.lock import Holder, parse_holder, parse_lock_answer, stale_reason

HOLDER = parse_holder("3f2a9c0d1e4b ci-runner-7 4242 1000")


def reason(holder=HOLDER, *, now=1100, controller="laptop", alive=True, max_age=3600,
           break_lock=None, activating=()):
    return stale_reason(holder, now=now, controller=controller, pid_alive=lambda pid: alive,
                        max_age=max_age, break_lock=break_lock, activating=activating)


def test_a_lock_file_names_its_run_controller_pid_and_time():
    assert HOLDER == Holder("3f2a9c0d1e4b", "ci-runner-7", 4242, 1000, "3f2a9c0d1e4b ci-runner-7 4242 1000")
    assert parse_holder("garbage") is None
    assert "run 3f2a9c0d1e4b from ci-runner-7 (pid 4242)" in HOLDER.describe(1100)
    assert "(100 s ago)" in HOLDER.describe(1100)


def test_a_live_run_keeps_its_lock():
    assert reason() is None  # another controller, young: it may well be running
    assert reason(controller="ci-runner-7", alive=True) is None  # its process is alive


def test_a_run_whose_process_on_this_controller_is_gone_loses_its_lock():
    assert "pid 4242" in reason(controller="ci-runner-7", alive=False)


def test_an_old_lock_or_one_the_operator_names_is_taken_over():
    assert "deploy_lock_max_age" in reason(now=1000 + 3601)
    assert "break_lock=3f2a9c0d1e4b" in reason(break_lock="3f2a9c0d1e4b")
    assert reason(break_lock="000000000000") is None  # another run's id breaks nothing


def test_never_while_an_activation_of_the_old_run_still_runs():
    units = ("asgi-fleet-activate-hello.service",)
    assert reason(controller="ci-runner-7", alive=False, activating=units) is None
    assert reason(break_lock="3f2a9c0d1e4b", activating=units) is None


def test_the_agents_answer_is_read():
    answer = parse_lock_answer({
        "outcome": "held", "holder": "3f2a9c0d1e4b ci-runner-7 4242 1000",
        "activating": ["asgi-fleet-activate-hello.service"],
        "last_words": {"hello": "rolled back: hello runs releases/a again and answers 200"}})
    assert not answer.acquired and answer.holder == HOLDER
    assert answer.activating == ("asgi-fleet-activate-hello.service",)
    assert answer.last_words == ("hello: rolled back: hello runs releases/a again and answers 200",)
    assert parse_lock_answer({"outcome": "acquired"}).acquired
