"""Time: the clock, the configured time zone and the timetable of the three jobs.

Each job runs at its time of day from ``training_schedule`` (``data_update_at``, ``daily_at``,
``evaluation_at``) in ``training_schedule.timezone``, once a week when ``weekday`` is set. The ``schedule``
library keeps naive local times; :class:`Timetable` converts them to the configured zone.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytz
import schedule

from botcore.errors import ConfigError
from botcore.signals import StopFlag

JOBS = ("data", "training", "evaluation")  # the scheduled jobs, in chain order
TRADE_JOB = "trade"  # not scheduled: it follows every data update (and a training that changed a champion)
RUN_ONCE_JOBS = ("data", TRADE_JOB, "training", "evaluation")  # what --run-once accepts, in chain order
AT_KEYS = {"data": "data_update_at", "training": "daily_at", "evaluation": "evaluation_at"}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class Clock:
    """The wall clock. Tests pass a controllable one (same two methods)."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float, stop: StopFlag) -> None:
        stop.wait(seconds)


def iso(moment: datetime) -> str:
    """``moment`` as ISO 8601 in UTC to the second (the format of every time in the state file)."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def parse_time(text: Any) -> datetime | None:
    """An ISO 8601 time as an aware datetime (naive means UTC); None for anything else."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def resolve_timezone(name: str) -> pytz.BaseTzInfo:
    """The pytz zone for ``training_schedule.timezone``, or ConfigError with a suggestion."""
    try:
        return pytz.timezone(name)
    except pytz.UnknownTimeZoneError:
        hint = difflib.get_close_matches(name, pytz.all_timezones, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else " (e.g. UTC, Europe/Berlin, America/New_York)"
        raise ConfigError(f"training_schedule.timezone = {name!r} is not a known time zone{extra}") from None


class Timetable:
    """When each job runs.

    :param sched_cfg: the ``training_schedule`` section of the config.
    """

    def __init__(self, sched_cfg: dict[str, Any]) -> None:
        self.cfg = sched_cfg
        self.tz = resolve_timezone(sched_cfg["timezone"])

    def build_scheduler(self, action: Callable[[str], None]) -> schedule.Scheduler:
        """One ``schedule`` job per step at its time of day in ``training_schedule.timezone``.

        The jobs are :class:`ZoneJob`: their next run is :meth:`next_slot` (see there for daylight saving),
        not the ``schedule`` library's own arithmetic, which on a spring-forward day moves the next day's run
        an hour early and so runs a daily job twice that day.
        """
        scheduler = ZoneScheduler(self)
        weekday = self.cfg.get("weekday")
        for job in JOBS:
            every = scheduler.every()
            period = getattr(every, weekday) if weekday else every.day
            period.at(self.cfg[AT_KEYS[job]], self.tz).tag(job).do(action, job)  # named before scheduled
        return scheduler

    def next_runs(self, scheduler: schedule.Scheduler) -> dict[str, str]:
        """Next run of each job, ISO 8601 in the configured time zone."""
        out = {}
        for item in scheduler.get_jobs():
            job = next(iter(item.tags))
            moment = getattr(item, "next_slot", None)
            if moment is None and item.next_run is not None:  # a plain schedule.Job keeps naive local times
                moment = item.next_run.astimezone()
            if moment is not None:
                out[job] = moment.astimezone(self.tz).isoformat(timespec="minutes")
        return out

    def slot(self, job: str, day: date) -> datetime:
        """The moment ``job`` is due on the local date ``day``.

        Daylight saving: a time of day that does not exist that day (02:30 on a spring-forward night in
        Europe/Berlin) is read in standard time, i.e. it falls one hour later (03:30 summer time), as cron and
        the ``schedule`` library do; a time that exists twice (02:30 on a fall-back night) is its second
        occurrence (standard time). Either way there is exactly one slot per day.
        """
        hour, minute = map(int, self.cfg[AT_KEYS[job]].split(":"))
        return self.tz.normalize(self.tz.localize(datetime(day.year, day.month, day.day, hour, minute),
                                                  is_dst=False))

    def _wanted_weekday(self) -> int | None:
        weekday = self.cfg.get("weekday")
        return None if weekday is None else WEEKDAYS.index(weekday)

    def next_slot(self, job: str, now: datetime) -> datetime:
        """The first scheduled time of ``job`` strictly after ``now`` (aware, in the configured zone)."""
        wanted = self._wanted_weekday()
        today: date = now.astimezone(self.tz).date()
        for ahead in range(9):
            day = today + timedelta(days=ahead)
            if wanted is not None and day.weekday() != wanted:
                continue
            moment = self.slot(job, day)
            if moment > now:
                return moment
        raise AssertionError("unreachable: a slot exists within 8 days")

    def previous_slot(self, job: str, now: datetime) -> datetime:
        """The latest scheduled time of ``job`` at or before ``now``."""
        wanted = self._wanted_weekday()
        today: date = now.astimezone(self.tz).date()
        for back in range(9):
            day = today - timedelta(days=back)
            if wanted is not None and day.weekday() != wanted:
                continue
            moment = self.slot(job, day)
            if moment <= now:
                return moment
        raise AssertionError("unreachable: a slot exists within 8 days")

    def missed_jobs(self, last_seen: datetime | None, now: datetime,
                    latest_runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Jobs whose latest slot fell while no daemon was running and that have not run since.

        :param last_seen: when a daemon was last seen alive (None: never, so nothing was missed).
        :param latest_runs: the state's ``jobs`` (job -> its latest run, with ``start``).
        """
        if not self.cfg["catch_up_missed"] or last_seen is None:
            return []
        missed = []
        for job in JOBS:
            slot = self.previous_slot(job, now)
            last_start = parse_time(latest_runs.get(job, {}).get("start"))
            if last_seen < slot and (last_start is None or last_start < slot):
                missed.append(job)
        return missed


def _library_now() -> datetime:
    """Now, as an aware UTC time, read through the ``schedule`` library's own ``datetime`` module (so that a
    test that moves the library's clock moves this one too)."""
    return schedule.datetime.datetime.now(UTC)


class ZoneJob(schedule.Job):
    """A ``schedule`` job whose next run is :meth:`Timetable.next_slot`, kept as an aware time.

    The library compares naive local times, which are ambiguous for an hour each autumn wherever the machine's
    own zone has daylight saving; this job compares aware times instead (:attr:`should_run`).
    """

    def __init__(self, interval: int, scheduler: ZoneScheduler) -> None:
        super().__init__(interval, scheduler)
        self.timetable = scheduler.timetable
        self.next_slot: datetime | None = None

    def _schedule_next_run(self) -> None:
        job = next(iter(self.tags), None)
        if job is None:
            raise ValueError("a ZoneJob is tagged with its job name before .do() schedules it")
        self.next_slot = self.timetable.next_slot(job, _library_now())
        self.next_run = self.next_slot.astimezone().replace(tzinfo=None)  # the library's naive local view

    @property
    def should_run(self) -> bool:
        return self.next_slot is not None and _library_now() >= self.next_slot


class ZoneScheduler(schedule.Scheduler):
    """A ``schedule.Scheduler`` of :class:`ZoneJob` (one per job of the timetable)."""

    def __init__(self, timetable: Timetable) -> None:
        super().__init__()
        self.timetable = timetable

    def every(self, interval: int = 1) -> ZoneJob:
        return ZoneJob(interval, self)

    @property
    def idle_seconds(self) -> float | None:
        slots = [job.next_slot for job in self.jobs if isinstance(job, ZoneJob) and job.next_slot is not None]
        if not slots:
            return None
        return (min(slots) - _library_now()).total_seconds()
