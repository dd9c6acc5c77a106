"""Daylight saving and the daemon's timetable: one run of each daily job per local day, on the spring-forward
and fall-back weekends too (the ``schedule`` library alone ran a daily job twice on the day after the spring
switch when its time of day fell in the skipped hour)."""
from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
import pytz
from test_automate_training import BERLIN, FakeRunner, berlin, simulated_time  # noqa: F401 (a fixture)

import automate_training as at
from automation.schedule import Timetable

SCRIPT_JOB = {"data_pipeline.py": "data", "train_bot.py": "training", "evaluate_bot.py": "evaluation"}


def _config(workspace, zone: str, **schedule_cfg) -> None:
    (workspace / "training_config.json").write_text(json.dumps({
        "symbols": ["SYN"], "model_types": ["deepscalper"], "trading": {"enabled": False},
        "training_schedule": {"timezone": zone, "data_update_at": "01:00", "daily_at": "02:30",
                              "evaluation_at": "04:00", **schedule_cfg}}))


def _runs(runner: FakeRunner, zone) -> list[tuple[str, str, str]]:
    return [(now.astimezone(zone).strftime("%Y-%m-%d"), now.astimezone(zone).strftime("%H:%M"), SCRIPT_JOB[script])
            for script, _, now in runner.calls]


@pytest.fixture(params=["UTC", "America/New_York"])
def machine_zone(request, monkeypatch):
    """The machine's own zone (the library keeps naive local times): UTC, and one with its own DST dates."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


def test_daily_jobs_run_once_a_day_across_the_spring_forward_weekend(workspace, simulated_time, machine_zone):  # noqa: F811
    """Europe/Berlin springs from 02:00 to 03:00 on Sunday 31 March 2024: 02:30 does not exist that day."""
    _config(workspace, "Europe/Berlin")
    clock = simulated_time(berlin(2024, 3, 29, 0, 30), berlin(2024, 4, 3, 0, 30))
    runner = FakeRunner(clock=clock)
    assert at.main(["--quiet"], runner=runner, clock=clock) == 0
    runs = _runs(runner, BERLIN)
    per_day = Counter((day, job) for day, _, job in runs)
    days = ["2024-03-29", "2024-03-30", "2024-03-31", "2024-04-01", "2024-04-02"]
    assert per_day == Counter({(d, j): 1 for d in days for j in ("data", "training", "evaluation")})
    training = [(day, hhmm) for day, hhmm, job in runs if job == "training"]
    # the skipped 02:30 is read in standard time: 03:30 summer time that Sunday, 02:30 again from Monday
    assert training == [("2024-03-29", "02:30"), ("2024-03-30", "02:30"), ("2024-03-31", "03:30"),
                        ("2024-04-01", "02:30"), ("2024-04-02", "02:30")]
    assert [hhmm for _, hhmm, job in runs if job == "data"] == ["01:00"] * 5


def test_daily_jobs_run_once_a_day_across_the_fall_back_weekend(workspace, simulated_time, machine_zone):  # noqa: F811
    """Europe/Berlin falls back from 03:00 to 02:00 on Sunday 27 October 2024: 02:30 happens twice that day."""
    _config(workspace, "Europe/Berlin")
    clock = simulated_time(berlin(2024, 10, 25, 0, 30), berlin(2024, 10, 30, 0, 30))
    runner = FakeRunner(clock=clock)
    assert at.main(["--quiet"], runner=runner, clock=clock) == 0
    runs = _runs(runner, BERLIN)
    per_day = Counter((day, job) for day, _, job in runs)
    days = ["2024-10-25", "2024-10-26", "2024-10-27", "2024-10-28", "2024-10-29"]
    assert per_day == Counter({(d, j): 1 for d in days for j in ("data", "training", "evaluation")})
    sunday = [now for script, _, now in runner.calls if script == "train_bot.py"
              and now.astimezone(BERLIN).day == 27]
    assert sunday[0].astimezone(UTC).strftime("%H:%M") == "01:30"  # the second 02:30 (standard time, +01:00)


def test_a_weekly_job_over_the_new_york_switch(workspace, simulated_time):  # noqa: F811
    """America/New_York springs forward on Sunday 10 March 2024 at 02:00; weekly jobs on Sundays at 02:30."""
    _config(workspace, "America/New_York", weekday="sunday")
    ny = pytz.timezone("America/New_York")
    clock = simulated_time(ny.localize(datetime(2024, 3, 2, 12)), ny.localize(datetime(2024, 3, 18)))
    runner = FakeRunner(clock=clock)
    assert at.main(["--quiet"], runner=runner, clock=clock) == 0
    training = [(day, hhmm) for day, hhmm, job in _runs(runner, ny) if job == "training"]
    assert training == [("2024-03-03", "02:30"), ("2024-03-10", "03:30"), ("2024-03-17", "02:30")]


def test_next_and_previous_slots_agree_on_the_switch_days():
    table = Timetable({"timezone": "Europe/Berlin", "data_update_at": "01:00", "daily_at": "02:30",
                       "evaluation_at": "04:00", "weekday": None, "catch_up_missed": True})
    after_saturday_run = berlin(2024, 3, 30, 2, 31)
    sunday = table.next_slot("training", after_saturday_run)
    assert sunday.isoformat() == "2024-03-31T03:30:00+02:00"
    monday = table.next_slot("training", sunday)
    assert monday.isoformat() == "2024-04-01T02:30:00+02:00"  # not 01:30, the hour the library lost
    assert table.previous_slot("training", monday) == monday and table.previous_slot("training", sunday) == sunday
    assert table.next_slot("data", berlin(2024, 3, 31, 0, 59)).isoformat() == "2024-03-31T01:00:00+01:00"
