"""The local worker pool: long-lived workers take several calls each, at one torch thread; a call that raises
leaves its worker serving; a worker that dies is reported and replaced while calls remain."""
from __future__ import annotations

import os
import time

import pytest

from botcore.signals import StopFlag
from training.workers import run_in_workers


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
