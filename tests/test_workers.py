"""The local worker pool: long-lived workers take several calls each, at one torch thread; a call that raises
leaves its worker serving; a worker that dies is reported and replaced while calls remain. A shared pool: the
parent takes calls from the same queue as its workers; workers started ahead of their calls; stops in both."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from botcore.signals import StopFlag
from training.workers import WorkerPool, run_in_workers


def _whoami(_tag: int, stop: StopFlag) -> tuple[int, int]:
    import torch

    time.sleep(0.05)
    return os.getpid(), torch.get_num_threads()


def _fails(_tag: int, stop: StopFlag) -> None:
    raise ValueError("bad input in the call")


def _dies(code: int, stop: StopFlag) -> None:
    os._exit(code)


def test_a_pool_of_two_serves_many_calls_at_one_torch_thread_and_survives_a_failing_call():
    calls = [(_whoami, (i,)) for i in range(3)] + [(_fails, (3,))] + [(_whoami, (i,)) for i in range(4, 8)]
    outcomes = run_in_workers(calls, processes=2, stop=StopFlag())
    assert [o.status for o in outcomes] == ["done"] * 3 + ["error"] + ["done"] * 4, outcomes
    assert "ValueError: bad input in the call" in outcomes[3].error
    pids = {o.value[0] for o in outcomes if o.status == "done"}
    assert len(pids) <= 2 and os.getpid() not in pids  # seven calls, at most two processes (the imports paid twice)
    assert {o.value[1] for o in outcomes if o.status == "done"} == {1}


def test_a_worker_that_dies_is_reported_and_replaced():
    calls = [(_whoami, (0,)), (_dies, (5,)), (_whoami, (2,)), (_whoami, (3,)), (_whoami, (4,))]
    outcomes = run_in_workers(calls, processes=1, stop=StopFlag())
    assert [o.status for o in outcomes] == ["done", "died", "done", "done", "done"], outcomes
    assert "exit code 5" in outcomes[1].error
    before, after = outcomes[0].value[0], {o.value[0] for o in outcomes[2:]}
    assert len(after) == 1 and before not in after  # one replacement worker served the rest


def test_an_empty_list_of_calls_starts_nothing():
    assert run_in_workers([], processes=4, stop=StopFlag()) == []


@pytest.mark.parametrize("processes", [0, 1])
def test_no_calls_run_after_a_stop_that_came_first(processes):
    stop = StopFlag()
    stop.request()
    outcomes = run_in_workers([(_whoami, (0,)), (_whoami, (1,))], processes=processes, stop=stop)
    assert [o.status for o in outcomes] == ["skipped", "skipped"]


def _alive(pid: int) -> bool:
    """The process runs (a zombie, ended but not yet reaped by whoever adopted it, does not)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"


def _meet(folder: str, stop: StopFlag) -> tuple[int, int]:
    """Leave this process's mark, then wait until another process has left one: two calls that return have run
    at the same time in two processes."""
    Path(folder, str(os.getpid())).touch()
    import torch

    deadline = time.monotonic() + 120
    while len(os.listdir(folder)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    return os.getpid(), torch.get_num_threads()


def test_two_shared_processes_are_the_parent_and_one_worker_side_by_side_at_one_torch_thread(tmp_path):
    import torch

    threads = torch.get_num_threads()
    calls = [(_meet, (str(tmp_path),)), (_meet, (str(tmp_path),))] + [(_whoami, (i,)) for i in range(2, 5)]
    outcomes = run_in_workers(calls, processes=2, stop=StopFlag(), share_parent=True)
    assert [o.status for o in outcomes] == ["done"] * 5, outcomes
    pids = {o.value[0] for o in outcomes}
    assert len(pids) == 2 and os.getpid() in pids  # the parent and one worker process, nothing more
    assert {o.value[1] for o in outcomes} == {1}  # the parent too trains at one thread beside its worker ...
    assert torch.get_num_threads() == threads  # ... and gets its threads back


def test_a_pool_started_ahead_serves_its_calls_and_one_closed_unused_leaves_no_process(tmp_path):
    with WorkerPool(3, StopFlag(), share_parent=True).start() as pool:
        assert pool.size == 2
        pids = [w.proc.pid for w in pool._pool.workers]
        assert len(pids) == 2 and all(_alive(p) for p in pids)  # started before any call is known
        outcomes = pool.run([(_whoami, (i,)) for i in range(4)])
    assert [o.status for o in outcomes] == ["done"] * 4
    assert {o.value[0] for o in outcomes} <= {os.getpid(), *pids}
    assert not any(_alive(p) for p in pids)
    unused = WorkerPool(2, StopFlag()).start()
    pids = [w.proc.pid for w in unused._pool.workers]
    started = time.monotonic()
    unused.close()  # the caller's preparation failed: idle and still-importing workers end at once
    assert time.monotonic() - started < 5 and not any(_alive(p) for p in pids)


def _meet_then_wait_for_stop(folder: str, stop: StopFlag) -> str:
    _meet(folder, stop)
    while not stop.requested:
        time.sleep(0.02)
    return "stopped cleanly"


def test_a_stop_ends_the_parents_call_and_its_workers_call_at_their_safe_points(tmp_path):
    stop = StopFlag()
    calls = [(_meet_then_wait_for_stop, (str(tmp_path),))] * 2 + [(_whoami, (2,))]

    def stop_when_both_run() -> None:
        deadline = time.monotonic() + 120
        while len(os.listdir(tmp_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.request()

    threading.Thread(target=stop_when_both_run, daemon=True).start()
    outcomes = run_in_workers(calls, processes=2, stop=stop, share_parent=True, abandon_until_polled=True)
    assert [o.status for o in outcomes] == ["done", "done", "skipped"], outcomes
    assert outcomes[0].value == outcomes[1].value == "stopped cleanly"
    assert not any(_alive(int(p.name)) for p in tmp_path.iterdir() if int(p.name) != os.getpid())


def _interrupted_when_the_worker_runs(folder: str, stop: StopFlag) -> None:
    deadline = time.monotonic() + 120
    while not os.listdir(folder) and time.monotonic() < deadline:
        time.sleep(0.02)
    raise KeyboardInterrupt  # a second Ctrl-C while the parent trains


def _runs_forever(folder: str, stop: StopFlag) -> None:
    stop.requested  # noqa: B018 - it has reached a safe point: it would not be abandoned
    Path(folder, str(os.getpid())).touch()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # and it would not stop either
    time.sleep(600)


def test_a_second_ctrl_c_in_the_parents_call_kills_its_workers_at_once(tmp_path):
    calls = [(_interrupted_when_the_worker_runs, (str(tmp_path),)), (_runs_forever, (str(tmp_path),))]
    with pytest.raises(KeyboardInterrupt):
        run_in_workers(calls, processes=2, stop=StopFlag(), share_parent=True)
    (marker,) = tmp_path.iterdir()
    assert not _alive(int(marker.name))


_SCRIPT = """
import os, sys
if __name__ == "__mp_main__":  # the worker ran this script again
    open(os.environ["MARKER"], "a").write("imported")
if __name__ == "__main__":
    sys.path[:0] = [{repo!r}, {tests!r}]
    from botcore.signals import StopFlag
    from test_workers import _whoami
    from training.workers import WorkerPool
    with WorkerPool(1, StopFlag(), main_script=sys.argv[1] == "yes") as pool:
        print(pool.run([(_whoami, (0,))])[0].status)
"""


@pytest.mark.parametrize("main_script", [True, False])
def test_workers_of_package_calls_skip_the_main_scripts_imports(tmp_path, main_script):
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent
    script = tmp_path / "command.py"
    script.write_text(_SCRIPT.format(repo=str(tests.parent), tests=str(tests)))
    marker = tmp_path / "marker"
    out = subprocess.run([sys.executable, str(script), "yes" if main_script else "no"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "MARKER": str(marker)})
    assert out.stdout.strip() == "done", out.stderr
    assert marker.exists() == main_script


_PARENT = """
import sys
if __name__ == "__main__":
    sys.path[:0] = [{repo!r}, {tests!r}]
    from botcore.signals import StopFlag
    from test_workers import _meet_then_wait_for_stop
    from training.workers import WorkerPool
    with WorkerPool(2, StopFlag(), share_parent=True, main_script=False).start() as pool:
        pool.run([(_meet_then_wait_for_stop, ({folder!r},))] * 2)
"""


def test_the_worker_of_a_parent_killed_with_sigkill_stops_on_its_own(tmp_path):
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent
    folder = tmp_path / "marks"
    folder.mkdir()
    script = tmp_path / "parent.py"
    script.write_text(_PARENT.format(repo=str(tests.parent), tests=str(tests), folder=str(folder)))
    parent = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 120
        while len(os.listdir(folder)) < 2 and time.monotonic() < deadline:  # both run their call
            time.sleep(0.05)
        (worker,) = {int(p.name) for p in folder.iterdir()} - {parent.pid}
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 15
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)  # it noticed the parent was gone, stopped at its safe point and ended
