"""Train, tune, checkpoint, resume and register trading models.

Examples::

    python train_bot.py --model-type deepscalper --symbol AAPL --steps 10000
    python train_bot.py --model-type backtrader --algo ppo --symbol AAPL --steps 20000
    python train_bot.py --model-type both --symbol GOOGL
    python train_bot.py --model-type deepscalper --symbol GOOGL --optimize --trials 20 [--sampler grid]
    python train_bot.py --model-type deepscalper --symbol GOOGL --resume
    python train_bot.py --model-type both --symbol GOOGL --iterations 3
    python train_bot.py --continuous --model-type deepscalper --max-cycles 3
    python train_bot.py --import-model /path/to/GOOGL_1d_deepscalper_<run id> [--symbol GOOGL]
    python train_bot.py --model-type deepscalper --set deepscalper.learning_rate=3e-4 --set env.window=16
    python train_bot.py --list [--symbol GOOGL]      |  --show <run id>  |  --prune --keep 5

Every model trains on the train split and is scored on the validation split only (annualised Sharpe ratio net
of costs, fast engine); the test split is left for evaluate_bot.py. Finished runs go to the registry under
models/ (see agents.registry); each session is recorded in results/training_session_<timestamp>.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.config import DEVICES, INTERVALS, SB3_ALGOS, load_config, resolve_device
from agents.importing import import_model
from agents.registry import Registry, RunRecord, folder_size
from botcore import paths
from botcore.cli import add_set_flag, run_guarded, seed_number, whole_number
from botcore.config import MAX_WORKERS
from botcore.errors import UserError
from botcore.logsetup import setup_logging
from botcore.markets import resolve_costs
from botcore.signals import StopFlag, stop_on_signals
from botcore.symbols import safe_name, validate_symbol
from datafeed.dataset import Dataset
from rl_env.config import EnvConfig
from rl_env.data import MarketData
from training.checkpoints import prune
from training.cluster import make_runner
from training.continuous import continuous
from training.hpo import optimize_then_train
from training.job import JobResult, JobSpec, recent_bars
from training.session import Session

logger = logging.getLogger("train_bot")


_positive_int = whole_number(1)
_non_negative_int = whole_number(0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_bot.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-type", choices=("deepscalper", "backtrader", "both"),
                   help="deepscalper, backtrader (a stable-baselines3 agent) or both (default: the config's "
                        "model_types)")
    p.add_argument("--algo", choices=SB3_ALGOS, help="stable-baselines3 algorithm for model type backtrader")
    p.add_argument("--engine", choices=("backtrader", "fast"),
                   help="env the backtrader model type trains on: backtrader's broker or the fast numpy env")
    p.add_argument("--symbol", "--symbols", dest="symbols", nargs="+", metavar="SYM",
                   help="prepared dataset(s) to train on (default: the config's symbols)")
    p.add_argument("--interval", choices=INTERVALS, help="bar interval of the dataset (default: data.interval)")
    p.add_argument("--workers", type=whole_number(1, MAX_WORKERS),
                   help="parallel processes for independent symbol/model jobs (or Optuna workers sharing one study)")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="run the jobs (and Optuna workers) on a Ray cluster: auto (started on this machine with "
                        "ray start), ray://HOST:PORT or HOST:PORT (default: cluster.address; none = this machine)")
    p.add_argument("--steps", type=_positive_int, help="env steps per iteration")
    p.add_argument("--episodes", type=_non_negative_int, help="most training episodes per iteration (0 = no limit)")
    p.add_argument("--iterations", type=_positive_int, help="rounds of train -> validate; the best round is kept")
    p.add_argument("--seed", type=seed_number, help="seed of python, numpy, torch, agents and envs")
    p.add_argument("--checkpoint-every", type=_non_negative_int, help="env steps between checkpoints")
    p.add_argument("--eval-every", type=_non_negative_int,
                   help="env steps between intermediate validations (0 = once per iteration)")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest unfinished run of each symbol and model type from its checkpoint")
    p.add_argument("--optimize", action="store_true", help="hyperparameter search with Optuna")
    p.add_argument("--trials", type=_positive_int, help="Optuna trials (shared among --workers)")
    p.add_argument("--sampler", choices=("tpe", "grid", "random"), help="tpe (default), grid (optimize.grid) or random")
    p.add_argument("--storage", metavar="URL", help="Optuna storage (default sqlite:///results/optuna.db)")
    p.add_argument("--study-name", help="Optuna study (default {SYM}_{INTERVAL}_{model_type}_{algo})")
    p.add_argument("--seeds", type=_positive_int, help="seeds per Optuna trial; the objective is their mean")
    p.add_argument("--continuous", action="store_true",
                   help="loop: refresh data, train, validate, promote or keep, sleep until the next cycle")
    p.add_argument("--max-cycles", type=_positive_int, help="continuous mode: stop after this many cycles")
    p.add_argument("--import-model", metavar="PATH",
                   help="copy a run folder from outside the registry (model.zip and metadata.json, this toolkit's "
                        "format) into it as a new challenger run, after checking its checksum and format; with "
                        "--symbol SYM it is registered under SYM. Nothing is trained")
    p.add_argument("--rollback", metavar="SYM",
                   help="make the previous champion of SYM the champion again (with --model-type; both when not "
                        "given); the change is recorded in models/champion_history.json. Nothing is trained")
    p.add_argument("--device", choices=DEVICES,
                   help="torch device of both model families: cpu, cuda, or auto (cuda when torch sees a GPU, else "
                        "cpu) (default: training_params.device, cpu)")
    p.add_argument("--config", help="config file (default: ./training_config.json when it exists)")
    add_set_flag(p)
    registry = p.add_argument_group("the model registry (nothing is trained)")
    registry.add_argument("--list", action="store_true",
                          help="every registered run (with --symbol: of those symbols): run id, type, algorithm, "
                               "steps, validation and latest test Sharpe, champion, status, size on disk")
    registry.add_argument("--show", metavar="RUN", help="the metadata of one registered run (id or folder)")
    registry.add_argument("--prune", action="store_true",
                          help="remove registered runs beyond the newest --keep N per symbol, interval and model "
                               "type (never a champion or the previous champion kept for rollback), their curves, "
                               "and stale checkpoints of unfinished runs that --resume can no longer pick")
    registry.add_argument("--keep", type=_positive_int, metavar="N", help="with --prune: newest runs kept per group")
    registry.add_argument("--dry-run", action="store_true", help="with --prune: say what would go, remove nothing")
    p.add_argument("--quiet", action="store_true", help="warnings and errors only; no progress bar")
    p.add_argument("--verbose", action="store_true", help="debug messages on the terminal")
    return p


# --- configuration -------------------------------------------------------------------------------------

def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """The config: defaults <- training_config.json (or --config) <- flags."""
    overrides = {
        "training_params": {"steps": args.steps, "episodes": args.episodes, "iterations": args.iterations,
                            "seed": args.seed, "checkpoint_every": args.checkpoint_every,
                            "eval_every": args.eval_every, "workers": args.workers, "algo": args.algo,
                            "engine": args.engine, "device": args.device},
        "data": {"interval": args.interval},
        "optimize": {"trials": args.trials, "sampler": args.sampler, "storage": args.storage, "seeds": args.seeds},
        "cluster": {"address": args.cluster},
    }
    return load_config(args.config, overrides, assignments=args.assignments)


def model_types(args: argparse.Namespace, cfg: dict[str, Any]) -> list[str]:
    if args.model_type == "both":
        return ["deepscalper", "backtrader"]
    if args.model_type:
        return [args.model_type]
    return list(dict.fromkeys(cfg["model_types"]))


def build_specs(args: argparse.Namespace, cfg: dict[str, Any]) -> list[JobSpec]:
    tp = cfg["training_params"]
    symbols = [validate_symbol(s) for s in (args.symbols or cfg["symbols"])]
    interval = cfg["data"]["interval"]
    specs = []
    for symbol in dict.fromkeys(symbols):
        for model_type in model_types(args, cfg):
            specs.append(JobSpec(symbol=symbol, interval=interval, model_type=model_type, algo=tp["algo"],
                                 engine=tp["engine"], cfg=cfg, steps=tp["steps"], iterations=tp["iterations"],
                                 episodes=tp["episodes"], seed=tp["seed"], checkpoint_every=tp["checkpoint_every"],
                                 eval_every=tp["eval_every"], resume=args.resume, quiet=args.quiet,
                                 device=tp["device"]))
    return specs


def processes_for(args: argparse.Namespace, cfg: dict[str, Any], n_jobs: int) -> int:
    """Worker processes: --workers; ``both`` trains its two models side by side even with one worker."""
    workers = cfg["training_params"]["workers"]
    if args.model_type == "both" and workers == 1:
        workers = 2
    return min(workers, n_jobs)


def _status(r: JobResult) -> str:
    if r.status != "finished":
        return r.status
    return r.model_status if r.model_status not in ("", "ok") else "champion" if r.promoted else "challenger"


def _kept_steps(r: JobResult) -> str:
    """Env steps of the kept checkpoint (the best validation), and of the whole run when it trained further."""
    kept = r.best_step or r.steps
    return f"{kept:,}" if kept == r.steps or r.status != "finished" else f"{kept:,}/{r.steps:,}"


def print_results(results: list[JobResult], quiet: bool = False) -> None:
    """The session's table (with ``quiet``: one line per job); a last line names the jobs that failed."""
    def cell(value: float, width: int) -> str:
        return f"{value:{width}.3f}" if math.isfinite(value) else f"{'n/a':>{width}}"

    def model(r: JobResult) -> str:
        return r.model_type if r.algo == "deepscalper" else f"{r.model_type}/{r.algo}"

    failed = [r for r in results if r.status == "failed"]
    if quiet:
        for r in results:
            if r.status == "finished":
                print(f"{r.symbol} {r.interval} {model(r)}: {_status(r)}, validation Sharpe "
                      f"{cell(r.val_sharpe, 0).strip()} at step {r.best_step or r.steps:,} (run {r.run_id})")
    else:
        header = (f"{'symbol':<10} {'int':<4} {'model':<19} {'steps (kept)':>13} {'train Sharpe':>12} "
                  f"{'val Sharpe':>10}  {'status':<11} run")
        print(header)
        print("-" * len(header))
        for r in results:
            extra = r.run_id if r.status != "failed" else r.error
            print(f"{r.symbol:<10} {r.interval:<4} {model(r):<19} {_kept_steps(r):>13} {cell(r.train_sharpe, 12)} "
                  f"{cell(r.val_sharpe, 10)}  {_status(r):<11} {extra}")
            for warning in r.warnings:
                print(f"  warning: {warning}")
        if any(r.status == "finished" for r in results):
            print("steps (kept): env steps of the kept checkpoint (the best validation), of all steps trained when "
                  "it was not the last. Sharpe: annualised, net of costs, of that checkpoint on the training and "
                  "validation splits (n/a: the policy never trades). The test split is untouched: run "
                  "evaluate_bot.py for out-of-sample results.")
    if failed and len(results) > 1:
        print(f"{len(results) - len(failed)} of {len(results)} job(s) trained; failed: "
              + ", ".join(f"{r.symbol} {model(r)}" for r in failed))


def train_once(args: argparse.Namespace, cfg: dict[str, Any], session: Session, stop: StopFlag,
               log_file: Path) -> list[JobResult]:
    specs = build_specs(args, cfg)
    missing = _missing_datasets(specs, cfg)
    ready = [spec for spec in specs if spec.symbol not in missing]
    if args.optimize:
        done = [optimize_then_train(spec, cfg, session, stop, log_file, args.study_name, args.quiet)
                for spec in ready]
    else:
        done = _run_jobs(ready, processes_for(args, cfg, len(ready)), cfg, stop, log_file, args.quiet)
    by_spec = dict(zip(map(id, ready), done))
    results = [by_spec[id(spec)] if spec.symbol not in missing else JobResult.of(spec, "failed", missing[spec.symbol])
               for spec in specs]
    session.data["jobs"].extend(r.to_dict() for r in results)
    session.save()
    return results


def _run_jobs(specs: list[JobSpec], workers: int, cfg: dict[str, Any], stop: StopFlag, log_file: Path,
              quiet: bool) -> list[JobResult]:
    """The jobs on this machine's worker pool, or on the Ray cluster of --cluster / cluster.address."""
    if not specs:
        return []
    runner = make_runner(cfg, workers)
    try:
        return runner.run_jobs(specs, stop, str(log_file), quiet)
    finally:
        runner.close()


def _missing_datasets(specs: list[JobSpec], cfg: dict[str, Any]) -> dict[str, str]:
    """Symbol -> why its dataset cannot be read. With one symbol the error ends the command (one line naming the
    command that makes the dataset); with several, the others train and the missing ones are failed jobs.
    Each readable dataset's training window (``training_params.lookback_days``) is said here, once per symbol."""
    symbols = list(dict.fromkeys(spec.symbol for spec in specs))
    missing: dict[str, str] = {}
    for symbol in symbols:
        interval = cfg["data"]["interval"]
        try:
            dataset = Dataset.open(symbol, interval)
        except UserError as exc:
            if len(symbols) == 1:
                raise
            missing[symbol] = str(exc)
            continue
        logger.info("%s %s: %s", symbol, interval, resolve_costs(cfg["data"]["costs"], dataset.market).statement())
        days = int(cfg["training_params"]["lookback_days"])
        if days > 0:
            window = EnvConfig.from_config(cfg, "discrete", training=True).window
            recent_bars(MarketData.from_frame(dataset.split("train"), symbol, interval), days, window + 2,
                        level=logging.INFO)
    return missing


# --- main ----------------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.max_cycles and not args.continuous:
        build_parser().error("--max-cycles needs --continuous")
    if (args.trials or args.sampler or args.storage or args.study_name or args.seeds) and not args.optimize:
        build_parser().error("--trials, --sampler, --storage, --study-name and --seeds need --optimize")
    if args.algo and args.model_type == "deepscalper":
        build_parser().error("--algo applies to --model-type backtrader (or both), not deepscalper")
    registry_action = _registry_action(args)
    if registry_action is not None:
        return run_guarded(registry_action)
    if args.keep is not None or args.dry_run:
        build_parser().error("--keep and --dry-run need --prune")
    if args.import_model:
        if args.resume or args.optimize or args.continuous or (args.symbols and len(args.symbols) > 1):
            build_parser().error("--import-model takes at most one --symbol and no --resume, --optimize or "
                                 "--continuous")
        return run_guarded(lambda: _import_model(args))
    if args.rollback:
        if args.resume or args.optimize or args.continuous or args.symbols:
            build_parser().error("--rollback SYM takes no --symbol, --resume, --optimize or --continuous")
        return run_guarded(lambda: _rollback(args))

    def body() -> int:
        log_file = setup_logging("training", quiet=args.quiet, verbose=args.verbose)
        import torch

        torch.set_num_threads(1)
        cfg = resolve(args)
        requested = cfg["training_params"]["device"]
        device = resolve_device(requested)  # cuda without a GPU: one line, exit code 2, before any job
        if requested != "cpu":
            logger.info("training on %s (device %s)", device, requested)
        session = Session(argv, cfg, "continuous" if args.continuous else "optimize" if args.optimize else "train",
                          log_file)
        stop = StopFlag()
        code = 1
        try:
            with stop_on_signals(stop, "stopping at the next safe point (a checkpoint is saved)"):
                if args.continuous:
                    symbols = [validate_symbol(s) for s in (args.symbols or cfg["symbols"])]

                    def cycle() -> list[JobResult]:
                        results = train_once(args, cfg, session, stop, log_file)
                        print_results(results, args.quiet)
                        return results

                    code = continuous(symbols, cfg, session, stop, cycle, args.max_cycles, args.quiet)
                else:
                    results = train_once(args, cfg, session, stop, log_file)
                    print_results(results, args.quiet)
                    code = _exit_code(results, stop)
            return code
        finally:
            session.finish(code)
            logger.info("session record: %s", session.path)

    return run_guarded(body)


def _import_model(args: argparse.Namespace) -> int:
    setup_logging("training", quiet=args.quiet, verbose=args.verbose)
    record = import_model(args.import_model, Registry.from_config(resolve(args)),
                          args.symbols[0] if args.symbols else None)
    print(f"imported {args.import_model} as run {record.run_id} ({record.symbol} {record.interval} {record.algo}, "
          f"challenger); evaluate it with: python evaluate_bot.py --symbol {record.symbol} --models {record.run_id}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    setup_logging("training", quiet=args.quiet, verbose=args.verbose)
    cfg = resolve(args)
    registry = Registry.from_config(cfg)
    symbol = validate_symbol(args.rollback)
    types = model_types(args, cfg) if args.model_type else ["deepscalper", "backtrader"]
    done = 0
    for model_type in types:
        if args.model_type is None and registry.champion(symbol, cfg["data"]["interval"], model_type) is None:
            continue
        record = registry.rollback(symbol, cfg["data"]["interval"], model_type)
        print(f"{symbol} {cfg['data']['interval']} {model_type}: champion is again {record.run_id}")
        done += 1
    if not done:
        raise UserError(f"{symbol} {cfg['data']['interval']} has no champion to roll back")
    return 0


# --- the registry: --list, --show, --prune -------------------------------------------------------------------

_TRAINING_FLAGS = ("model_type", "algo", "engine", "interval", "workers", "cluster", "steps", "episodes",
                   "iterations", "seed", "checkpoint_every", "eval_every", "trials", "sampler", "storage", "study_name",
                   "seeds", "max_cycles", "import_model", "rollback", "device")


def _registry_action(args: argparse.Namespace) -> Any:
    """The body of --list, --show or --prune (None when none is given); a clash of flags ends with exit code 2."""
    chosen = [name for name in ("list", "show", "prune") if getattr(args, name)]
    if not chosen:
        return None
    clashing = [f"--{k.replace('_', '-')}" for k in _TRAINING_FLAGS if getattr(args, k) not in (None, False)]
    clashing += [f"--{k}" for k in ("resume", "optimize", "continuous") if getattr(args, k)]
    if len(chosen) > 1 or clashing:
        build_parser().error(f"--{chosen[0]} trains nothing; it does not go with "
                             f"{', '.join(['--' + c for c in chosen[1:]] + clashing)}")
    if args.prune and args.keep is None:
        build_parser().error("--prune needs --keep N (the newest runs kept per symbol, interval and model type)")
    if (args.keep is not None or args.dry_run) and not args.prune:
        build_parser().error("--keep and --dry-run need --prune")
    if args.show and args.symbols:
        build_parser().error("--show RUN takes no --symbol")
    action = {"list": _list_runs, "show": _show_run, "prune": _prune}[chosen[0]]

    def body() -> int:
        setup_logging("training", quiet=args.quiet, verbose=args.verbose)
        cfg = resolve(args)
        return action(args, Registry.from_config(cfg))

    return body


def _list_runs(args: argparse.Namespace, registry: Registry) -> int:
    symbols = [validate_symbol(s) for s in args.symbols] if args.symbols else [None]
    records = [r for symbol in dict.fromkeys(symbols) for r in registry.runs(symbol)]
    if not records:
        where = f" of {', '.join(s for s in symbols if s)}" if args.symbols else ""
        print(f"no registered run{where} under {registry.root} (train one with train_bot.py)")
        return 0
    protected = registry.protected_runs()
    tests = latest_test_sharpes(sorted({r.symbol for r in records}))
    header = (f"{'run id':<22} {'symbol':<8} {'int':<4} {'type':<11} {'algo':<11} {'steps':>9} {'val Sharpe':>10} "
              f"{'test Sharpe':>11}  {'champion':<9} {'status':<18} {'size':>8}")
    print(header)
    print("-" * len(header))
    total = 0
    for r in records:
        size = folder_size(r.path)
        total += size
        why = protected.get(r.run_id, "")
        champion = ("yes" if r.is_champion else "previous" if why.startswith("previous") else
                    "shadow" if why.startswith("shadow") else "")
        print(f"{r.run_id:<22} {r.symbol:<8} {r.interval:<4} {r.model_type:<11} {r.algo:<11} {_run_steps(r):>9} "
              f"{_number(r.score):>10} {_number(tests.get(r.run_id, math.nan)):>11}  {champion:<9} "
              f"{str(r.metadata.get('status') or 'ok'):<18} {_size(size):>8}")
    print(f"{len(records)} run(s), {_size(total)} on disk. steps: of the kept checkpoint. test Sharpe: of the newest "
          "test-split evaluation that included the run (evaluate_bot.py), blank when none. champion 'previous': "
          "kept for --rollback; 'shadow': a challenger trading on paper beside the champion (--prune keeps both).")
    return 0


def _show_run(args: argparse.Namespace, registry: Registry) -> int:
    record = registry.get(args.show)
    print(json.dumps({"path": str(record.path), "champion": record.is_champion,
                      "size_bytes": folder_size(record.path), "metadata": record.metadata}, indent=2, default=str))
    return 0


def _prune(args: argparse.Namespace, registry: Registry) -> int:
    symbol = None
    if args.symbols:
        if len(args.symbols) > 1:
            build_parser().error("--prune takes at most one --symbol")
        symbol = validate_symbol(args.symbols[0])
    freed = prune(args.keep, symbol, dry_run=args.dry_run, registry=registry)
    verb = "would remove" if args.dry_run else "removed"
    for what, path, size in freed:
        print(f"{verb} {what} {path.name} ({_size(size)})")
    runs, checkpoints = sum(w == "run" for w, _, _ in freed), sum(w == "checkpoint" for w, _, _ in freed)
    total = _size(sum(s for _, _, s in freed))
    print((f"--dry-run: would prune {runs} run(s) and {checkpoints} stale checkpoint(s), freeing {total}"
           if args.dry_run else f"pruned {runs} run(s) and {checkpoints} stale checkpoint(s), freed {total}")
          + "; champions, the previous champions kept for rollback and the shadow challengers "
            "(trading.shadow_challengers) are kept")
    return 0


def latest_test_sharpes(symbols: Sequence[str], max_files: int = 200) -> dict[str, float]:
    """Run id -> its test-split Sharpe in the newest evaluation that included it (``results/
    model_comparison_<SYM>_<stamp>.json`` of evaluate_bot.py; the newest ``max_files`` per symbol are read)."""
    found: dict[str, float] = {}
    for symbol in symbols:
        files = sorted(paths.results_dir().glob(f"model_comparison_{safe_name(symbol)}_*.json"), reverse=True)
        for path in files[:max_files]:
            try:
                outcome = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(outcome, dict) or outcome.get("split") != "test":
                continue
            for run_id, entry in (outcome.get("models") or {}).items():
                if isinstance(entry, dict) and entry.get("status") == "ok" and run_id not in found:
                    value = entry.get("sharpe_ratio")
                    found[run_id] = float(value) if isinstance(value, (int, float)) else math.nan
    return found


def _run_steps(record: RunRecord) -> str:
    training = record.metadata.get("training") or {}
    steps = training.get("best_step") or training.get("steps")
    return f"{int(steps):,}" if isinstance(steps, (int, float)) else ""


def _number(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else ""


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def _exit_code(results: list[JobResult], stop: StopFlag) -> int:
    if stop.requested:
        return 128 + int(stop.signum or signal.SIGTERM)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        logger.error("%s %s %s failed: %s", r.symbol, r.interval, r.model_type, r.error)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
