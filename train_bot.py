"""Train, tune, checkpoint, resume and register trading models.

Examples::

    python train_bot.py --model-type deepscalper --symbol AAPL --steps 10000
    python train_bot.py --model-type backtrader --algo ppo --symbol AAPL --steps 20000
    python train_bot.py --model-type both --symbol GOOGL
    python train_bot.py --model-type deepscalper --symbol GOOGL --optimize --trials 20 [--sampler grid]
    python train_bot.py --model-type deepscalper --symbol GOOGL --resume
    python train_bot.py --model-type both --symbol GOOGL --iterations 3
    python train_bot.py --continuous --model-type deepscalper --max-cycles 3

Every model trains on the train split and is scored on the validation split only (annualised Sharpe ratio net
of costs, fast engine); the test split is left for evaluate_bot.py. Finished runs go to the registry under
models/ (see botcore.registry); each session is recorded in results/training_session_<timestamp>.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import multiprocessing as mp
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from botcore import paths
from botcore.atomic import atomic_write_json
from botcore.cli import run_guarded
from botcore.config import INTERVALS, SB3_ALGOS, load_config
from botcore.errors import DataError, UserError
from botcore.logsetup import setup_logging
from botcore.symbols import validate_symbol
from botcore.training import (JobResult, JobSpec, StopFlag, check_dataset, init_worker_process, run_jobs,
                              stop_on_signals, wait_for_workers)

logger = logging.getLogger("train_bot")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be {minimum} or more")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


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
    p.add_argument("--workers", type=_positive_int, help="parallel processes for independent symbol/model jobs "
                   "(or Optuna workers sharing one study)")
    p.add_argument("--steps", type=_positive_int, help="env steps per iteration")
    p.add_argument("--episodes", type=_non_negative_int, help="most training episodes per iteration (0 = no limit)")
    p.add_argument("--iterations", type=_positive_int, help="rounds of train -> validate; the best round is kept")
    p.add_argument("--seed", type=int, help="seed of python, numpy, torch, agents and envs")
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
    p.add_argument("--config", help="config file (default: ./training_config.json when it exists)")
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
                            "engine": args.engine},
        "data": {"interval": args.interval},
        "optimize": {"trials": args.trials, "sampler": args.sampler, "storage": args.storage, "seeds": args.seeds},
    }
    return load_config(args.config, overrides)


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
                                 eval_every=tp["eval_every"], resume=args.resume, quiet=args.quiet))
    return specs


def processes_for(args: argparse.Namespace, cfg: dict[str, Any], n_jobs: int) -> int:
    """Worker processes: --workers; ``both`` trains its two models side by side even with one worker."""
    workers = cfg["training_params"]["workers"]
    if args.model_type == "both" and workers == 1:
        workers = 2
    return min(workers, n_jobs)


# --- one session -----------------------------------------------------------------------------------------

class Session:
    """results/training_session_<timestamp>.json, rewritten (atomically) as the session goes on."""

    def __init__(self, argv: Sequence[str], cfg: dict[str, Any], mode: str, log_file: Path):
        self.stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S_%f")
        self.path = paths.results_dir() / f"training_session_{self.stamp}.json"
        self.data: dict[str, Any] = {"session": self.stamp, "mode": mode, "argv": list(argv),
                                     "started": _now(), "finished": None, "log_file": str(log_file),
                                     "config": cfg, "jobs": [], "cycles": [], "optimize": None, "exit_code": None}
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    def finish(self, code: int) -> None:
        self.data.update(finished=_now(), exit_code=code)
        self.save()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def print_results(results: list[JobResult]) -> None:
    header = f"{'symbol':<10} {'int':<4} {'model':<19} {'steps':>8} {'val Sharpe':>10}  {'status':<11} run"
    print(header)
    print("-" * len(header))
    for r in results:
        model = r.model_type if r.algo == "deepscalper" else f"{r.model_type}/{r.algo}"
        sharpe = f"{r.val_sharpe:10.3f}" if math.isfinite(r.val_sharpe) else f"{'n/a':>10}"
        status = ("champion" if r.promoted else "challenger") if r.status == "finished" else r.status
        extra = r.run_id if r.status != "failed" else r.error
        print(f"{r.symbol:<10} {r.interval:<4} {model:<19} {r.steps:>8} {sharpe}  {status:<11} {extra}")
    if any(r.status == "finished" for r in results):
        print("Validation Sharpe: annualised, net of costs, on the validation split (n/a: the policy never trades). "
              "The test split is untouched: run evaluate_bot.py for out-of-sample results.")


def train_once(args: argparse.Namespace, cfg: dict[str, Any], session: Session, stop: StopFlag,
               log_file: Path) -> list[JobResult]:
    specs = build_specs(args, cfg)
    for spec in specs:
        check_dataset(spec.symbol, spec.interval)
    if args.optimize:
        results = [optimize_then_train(args, cfg, spec, session, stop, log_file) for spec in specs]
    else:
        results = run_jobs(specs, processes_for(args, cfg, len(specs)), stop, str(log_file), args.quiet)
    session.data["jobs"].extend(r.to_dict() for r in results)
    session.save()
    return results


# --- hyperparameter search ---------------------------------------------------------------------------------

def optimize_then_train(args: argparse.Namespace, cfg: dict[str, Any], spec: JobSpec, session: Session,
                        stop: StopFlag, log_file: Path) -> JobResult:
    """Run the study (in ``--workers`` processes sharing its storage), then retrain the best trial's
    hyperparameters with the session's seed and register it with the study's trial count."""
    from trainer import hpo

    opt = cfg["optimize"]
    settings = hpo.StudySettings(storage=opt["storage"], study_name=args.study_name or hpo.default_study_name(spec),
                                 sampler=opt["sampler"], trials=opt["trials"], seeds=opt["seeds"],
                                 grid=hpo.check_grid(spec.algo, opt["grid"]) if opt["sampler"] == "grid" else {})
    hpo.create_study(settings, spec.seed)
    workers = min(cfg["training_params"]["workers"], settings.trials)
    base = dataclasses.replace(spec, resume=False)
    logger.info("%s: Optuna study %s in %s, %d trials, %s sampler, %d worker(s)", spec.label, settings.study_name,
                settings.storage_redacted, settings.trials, settings.sampler, workers)
    started = time.monotonic()
    if workers <= 1:
        hpo.optimize(base, settings, settings.trials, 0, stop)
    else:
        shares = [settings.trials // workers + (1 if i < settings.trials % workers else 0) for i in range(workers)]
        _run_optimize_workers(base, settings, shares, stop, log_file, args.quiet)
    if stop.requested:
        return JobResult(spec.symbol, spec.interval, spec.model_type, spec.algo, "stopped",
                         error="optimization stopped by a signal; run again to add trials to the same study")
    summary = hpo.summarize(settings)
    logger.info("%s: best trial #%d, validation Sharpe %.3f, params %s (%d trials)", spec.label, summary.best_trial,
                summary.best_value, summary.best_params, summary.n_trials)
    study_info = {"study": settings.study_name, "storage": settings.storage_redacted, "sampler": settings.sampler,
                  "seeds": settings.seeds, "seconds": round(time.monotonic() - started, 3), **summary.to_dict()}
    session.data["optimize"] = (session.data["optimize"] or []) + [dict(study_info, symbol=spec.symbol,
                                                                        model_type=spec.model_type)]
    session.save()
    final = dataclasses.replace(spec, hyperparams=summary.best_params, hpo_trials=max(1, summary.n_trials),
                                trial_sharpes=summary.trial_sharpes, extra_metadata={"optuna": study_info})
    return run_jobs([final], 1, stop, str(log_file), args.quiet)[0]


def _run_optimize_workers(base: JobSpec, settings: Any, shares: list[int], stop: StopFlag, log_file: Path,
                          quiet: bool) -> None:
    import concurrent.futures as cf

    from trainer import hpo

    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=len(shares), mp_context=ctx, initializer=init_worker_process,
                                initargs=(str(log_file), quiet)) as pool:
        futures = [pool.submit(hpo.optimize_worker, base, settings, n, i) for i, n in enumerate(shares)]
        wait_for_workers(futures, stop)
        for fut in futures:
            if fut.cancelled():
                continue
            exc = fut.exception()
            if exc is not None:
                raise UserError(f"an Optuna worker failed: {type(exc).__name__}: {exc}")


# --- continuous mode ----------------------------------------------------------------------------------------

def refresh_data(args: argparse.Namespace, cfg: dict[str, Any]) -> None:
    """Bring the datasets up to date the way data_pipeline.py does (its own main, same config)."""
    import data_pipeline

    symbols = [validate_symbol(s) for s in (args.symbols or cfg["symbols"])]
    argv = ["--symbols", *symbols, "--interval", cfg["data"]["interval"]]
    if args.config:
        argv += ["--config", args.config]
    if args.quiet:
        argv.append("--quiet")
    code = data_pipeline.main(argv)
    if code != 0:
        raise DataError(f"data refresh failed (python data_pipeline.py {' '.join(argv)} exited with {code})")


def _sleep(seconds: float, stop: StopFlag) -> None:
    """Sleep in short naps so that SIGTERM ends the wait at once."""
    end = time.monotonic() + seconds
    while not stop.requested and time.monotonic() < end:
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))


def continuous(args: argparse.Namespace, cfg: dict[str, Any], session: Session, stop: StopFlag,
               log_file: Path) -> int:
    interval_s = 60.0 * cfg["training_params"]["continuous_interval_minutes"]
    cycle, failures = 0, 0
    while not stop.requested:
        cycle += 1
        started = time.monotonic()
        record: dict[str, Any] = {"cycle": cycle, "started": _now()}
        logger.info("continuous mode: cycle %d", cycle)
        try:
            refresh_data(args, cfg)
            results = train_once(args, cfg, session, stop, log_file)
            print_results(results)
            record["jobs"] = [r.to_dict() for r in results]
            failed = [r for r in results if r.status == "failed"]
            record["status"] = "failed" if failed else "stopped" if stop.requested else "ok"
            if failed:
                record["error"] = "; ".join(f"{r.symbol} {r.model_type}: {r.error}" for r in failed)
        except Exception as exc:  # noqa: BLE001 - one failed cycle never ends the loop
            logger.error("cycle %d failed: %s", cycle, exc, exc_info=not isinstance(exc, UserError))
            record.update(status="failed", error=str(exc))
        record["finished"] = _now()
        failures += record["status"] == "failed"
        session.data["cycles"].append(record)
        session.save()
        if args.max_cycles and cycle >= args.max_cycles:
            break
        wait = max(0.0, interval_s - (time.monotonic() - started))
        logger.info("continuous mode: next cycle in %.0f s", wait)
        _sleep(wait, stop)
    logger.info("continuous mode: ended after %d cycle(s), %d failed", cycle, failures)
    return 1 if failures == cycle else 0


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
    log_file = setup_logging("training", quiet=args.quiet, verbose=args.verbose)

    def body() -> int:
        import torch

        torch.set_num_threads(1)
        cfg = resolve(args)
        session = Session(argv, cfg, "continuous" if args.continuous else "optimize" if args.optimize else "train",
                          log_file)
        stop = StopFlag()
        code = 1
        try:
            with stop_on_signals(stop):
                if args.continuous:
                    code = continuous(args, cfg, session, stop, log_file)
                else:
                    results = train_once(args, cfg, session, stop, log_file)
                    print_results(results)
                    code = _exit_code(results, stop)
            return code
        finally:
            session.finish(code)
            logger.info("session record: %s", session.path)

    return run_guarded(body)


def _exit_code(results: list[JobResult], stop: StopFlag) -> int:
    if stop.requested:
        return 128 + int(stop.signum or signal.SIGTERM)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        logger.error("%s %s %s failed: %s", r.symbol, r.interval, r.model_type, r.error)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
