"""The README's command sequence, run as a newcomer would: ``make demo``, then every command of its next steps,
in order, in one fresh workspace, offline. Each must succeed.

The command lines are read from README.md and run verbatim, with these exceptions, each recognised explicitly:

- ``--steps N`` of a train_bot.py line is followed by the test's own ``--steps`` (the last one counts);
- ``make demo`` runs its recipe from the Makefile (in the test's workspace, not the repository) with a small
  ``DEMO_STEPS``; ``make test`` is the suite this test belongs to and is not run again;
- a Yahoo ``--update-data`` of symbols that have no dataset in the workspace needs the network: skipped;
- a ``--cluster HEAD:PORT`` line needs a Ray cluster the user started (HEAD names its head node): skipped here; the
  cluster backend is tested on a real two-node cluster in tests/test_cluster.py;
- ``<run id>`` is replaced by a run id of the workspace's registry;
- the daemon (``automate_training.py`` with no flag) runs until it has started, then gets SIGTERM;
- ``--create-config`` runs on a workspace without a config; the small sizes below are then merged into the file
  it wrote. The sizes (steps, Optuna trials, walk-forward folds) live in the
  workspace's training_config.json; data.source is never set there: the workspace must work as ``make demo``
  left it.
"""
from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {"data_pipeline.py", "train_bot.py", "evaluate_bot.py", "automate_training.py"}
DEMO_STEPS = "300"
SMALL = {
    "training_params": {"steps": 300},
    "deepscalper": {"learning_starts": 100, "buffer_size": 2000},
    "sb3": {"n_steps": 128},
    "optimize": {"trials": 3},
    "walkforward": {"folds": 2},
}
COMMAND_TIMEOUT = 300


def readme_commands() -> list[str]:
    """The ``make`` and ``python`` lines of README.md's code blocks, in order, without their trailing comments."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            line = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
            if line.startswith(("make ", "python ")):
                commands.append(line)
    return commands


def demo_recipe() -> list[list[str]]:
    """The commands of the Makefile's demo target, with its variables filled in."""
    lines = (REPO / "Makefile").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("demo:"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        line = line.strip().replace("$(PY)", "python").replace("$(DEMO_STEPS)", DEMO_STEPS)
        assert "$(" not in line, f"the test does not know this Makefile variable: {line}"
        recipe.append(argv_of(line))
    return recipe


def argv_of(line: str) -> list[str]:
    words = shlex.split(line)
    if words[0] == "python" and words[1] in SCRIPTS:
        return [sys.executable, str(REPO / words[1]), *words[2:]]
    return words


def needs_network(words: list[str], ws: Path) -> bool:
    """A Yahoo download: ``data_pipeline.py --update-data`` without --source, for a symbol with no dataset yet
    (a prepared dataset is refreshed from its own source)."""
    if not (words[1].endswith("data_pipeline.py") and "--update-data" in words and "--source" not in words):
        return False
    symbols = words[words.index("--symbols") + 1:]
    symbols = symbols[:next((i for i, w in enumerate(symbols) if w.startswith("--")), len(symbols))]
    return any(not list((ws / "data").glob(f"{s}_*_manifest.json")) for s in symbols)


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def run(words: list[str], ws: Path, what: str) -> None:
    proc = subprocess.run(words, cwd=ws, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, f"{what}:\n{proc.stderr[-2000:]}"


def run_daemon(words: list[str], ws: Path, what: str) -> None:
    proc = subprocess.Popen(words, cwd=ws, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        state = ws / "results" / "automation_state.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if state.is_file() and json.loads(state.read_text() or "{}").get("daemon", {}).get("pid") == proc.pid:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"{what} ended by itself: {proc.communicate()}"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"{what} exited {proc.returncode} after SIGTERM:\n{out[-2000:]}\n{err[-2000:]}"


def newest_run_id(ws: Path) -> str:
    runs = sorted((p for p in (ws / "models").rglob("metadata.json")), key=lambda p: p.stat().st_mtime)
    assert runs, "no registered model to name in place of <run id>"
    return json.loads(runs[-1].read_text())["run_id"]


def test_readme_parses_into_the_expected_sequence():
    commands = readme_commands()
    assert commands[:2] == ["make demo", "make test"]
    assert any("--update-data" in c for c in commands) and "python automate_training.py" in commands
    assert {shlex.split(c)[1] for c in commands if c.startswith("python ")} == SCRIPTS


@pytest.mark.slow
def test_readme_commands_work_offline_after_make_demo(tmp_path):
    ws = tmp_path
    config = ws / "training_config.json"
    config.write_text(json.dumps(SMALL))
    (ws / "prices.csv").write_text((REPO / "sample_data" / "GOOGL_1d.csv").read_text())  # the README's CSV example
    ran, skipped = [], []
    for line in readme_commands():
        if line == "make test":
            continue  # the suite this test is part of
        if line.startswith("make demo"):
            for words in demo_recipe():
                run(words, ws, f"make demo: {' '.join(words[1:])}")
            ran.append(line)
            continue
        if "<run id>" in line:
            line = line.replace("<run id>", newest_run_id(ws))
        words = argv_of(line)
        assert words[0] == sys.executable, f"not a script of this repository: {line}"
        if words[1].endswith("train_bot.py") and "--steps" in words:
            words += ["--steps", str(SMALL["training_params"]["steps"])]
        if needs_network(words, ws) or any(w.startswith("HEAD:") for w in words):
            skipped.append(line)
            continue
        if words[2:] == []:
            run_daemon(words, ws, line)
        elif "--create-config" in words:
            config.unlink()
            run(words, ws, line)
            config.write_text(json.dumps(merge(json.loads(config.read_text()), SMALL), indent=2))
        else:
            run(words, ws, line)
        ran.append(line)
    assert skipped == ["python data_pipeline.py --symbols AAPL GOOGL --update-data",
                       "python train_bot.py --model-type both --symbols GOOGL SYN --cluster HEAD:6379"]
    assert len(ran) >= 20
    state = json.loads((ws / "results" / "automation_state.json").read_text())
    assert all(unit["outcome"] == "ok" for unit in state["units"].values()), state["units"]


# --- what the newcomer sees: several symbols, --quiet, and the terminal ------------------------------------

def test_several_symbols_carry_on_past_a_missing_dataset_and_name_it(workspace, capsys):
    import data_pipeline
    import evaluate_bot
    import train_bot

    assert data_pipeline.main(["--symbol", "SYN", "--source", "synthetic", "--bars", "600", "--quiet"]) == 0
    capsys.readouterr()
    assert train_bot.main(["--model-type", "deepscalper", "--symbols", "MSFT", "SYN", "--steps", "200",
                           "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("SYN 1d deepscalper: ")  # --quiet: one line per trained model
    assert out.splitlines()[-1] == "1 of 2 job(s) trained; failed: MSFT deepscalper"
    assert "python data_pipeline.py --symbols MSFT --interval 1d" in err and "Traceback" not in err
    assert evaluate_bot.main(["--symbols", "MSFT", "SYN", "--quiet"]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("SYN: ") and "(results: " in lines[0]  # the verdict only
    assert lines[1] == "1 of 2 symbol(s) evaluated; failed: MSFT" and "MSFT" in err


def test_log_lines_go_above_the_progress_bar_never_into_it():
    import io
    import logging

    from tqdm import tqdm

    from botcore.logsetup import OneLineFormatter, TerminalHandler

    screen = io.StringIO()
    handler = TerminalHandler(screen)
    handler.setFormatter(OneLineFormatter("%(levelname)s: %(message)s"))
    log = logging.getLogger("test_readme.terminal")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        with tqdm(total=10, desc="GOOGL 1d deepscalper", file=screen, disable=False, mininterval=0) as bar:
            bar.update(3)
            log.info("step 1000")
            bar.update(3)
    finally:
        log.removeHandler(handler)
    text = screen.getvalue()
    # the bar is cleared (a carriage return and blanks) before the line, which ends with its own newline
    assert "\nINFO: step 1000\n" in text.replace("\r", "\n")
    before = text[:text.index("INFO: step 1000")]
    assert before.rstrip(" ").endswith("\r") and "3/10" in before
    assert "6/10" in text[text.index("INFO: step 1000"):]


def test_the_terminal_lock_is_shared_between_processes(tmp_path):
    from botcore.logsetup import TerminalLock

    path = str(tmp_path / "terminal.lock")
    held = TerminalLock(path)
    assert held.acquire() and held.acquire()  # re-entrant within a process, as tqdm needs
    probe = ("import sys; sys.path.insert(0, sys.argv[2]); from botcore.logsetup import TerminalLock; "
             "raise SystemExit(0 if TerminalLock(sys.argv[1]).acquire(False) else 3)")
    assert subprocess.run([sys.executable, "-c", probe, path, str(REPO)]).returncode == 3
    held.release()
    assert subprocess.run([sys.executable, "-c", probe, path, str(REPO)]).returncode == 3  # still held once
    held.release()
    assert subprocess.run([sys.executable, "-c", probe, path, str(REPO)]).returncode == 0
