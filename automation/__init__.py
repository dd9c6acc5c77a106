"""Scheduled retraining: the library behind ``automate_training.py``.

One module per concept, imports pointing down the list:

- ``alerts``: alert delivery (log, email, webhook) with secrets redacted.
- ``state``: ``results/automation_state.json`` (atomic saves, bounded history, recovery after ``kill -9``).
- ``runner``: one unit of work as a child process with a timeout.
- ``schedule``: the clock, the time zone and the timetable (next runs, missed runs).
- ``monitor``: the alert log (with dedupe) and the checks of champions and data age.
- ``chain``: the units of each job, the chain rule and running a job.
- ``status``: what ``--status`` reports.
- ``daemon``: :class:`~automation.daemon.Automation`, the locked entry points (run once, the daemon loop).
"""
