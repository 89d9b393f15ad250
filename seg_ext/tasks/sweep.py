"""Sweeps: every combination of a grid of config values, for every seed, each a run of the training tool in a
folder of its own; resumable; ending with the comparison (:func:`seg_ext.tasks.compare.compare_runs`).

``tools/sweep.py`` is the command. A grid item is ``key=v1,v2,...``: the values are YAML, split at the commas
outside brackets, so ``augment.crop_scale=[0.25,1],[0.75,1]`` has two values. The seed sets ``train.seed``
only: the split (``data.split_seed``) stays, so seeds vary the training, not the data.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from seg_ext.config import parse_value
from seg_ext.errors import ConfigError, Preempted, SegExtError
from seg_ext.io import atomic_write_text
from seg_ext.tasks.tracking import is_tracking_opt, sweep_finished, sweep_tracking, tracking_opts

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]


def split_values(text: str) -> list[str]:
    """``"[0.25,1],[0.75,1]"`` -> ``["[0.25,1]", "[0.75,1]"]``: commas inside brackets or braces stay."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["key=v1,v2", ...]`` -> ``{"key": [v1, v2]}`` with YAML values.

    Raises:
        ConfigError: an item without ``=``, a key given twice, or an empty value.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"grid item '{item}' must look like key=value1,value2, e.g. augment.hflip_prob=0,0.5")
        if key in grid:
            raise ConfigError(f"grid key '{key}' is given twice; give all its values in one item: {key}=v1,v2")
        values = split_values(text)
        if any(not v.strip() for v in values):
            raise ConfigError(f"grid item '{item}' has an empty value; expected values separated by commas, e.g. {key}=0,0.5")
        grid[key] = [parse_value(v.strip()) for v in values]
    return grid


def _rounded(value: Any, digits: int) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    return value


def _slug(value: Any, digits: int = 6) -> str:
    """A value as a folder name reads it: YAML's words (``null``, ``true``), floats to ``digits`` significant
    digits (a search's 0.0012345678901234567 is ``0.00123457``); the full values are in the runs' configs and
    the sweep's ``runs.json``."""
    value = _rounded(value, digits)
    if isinstance(value, (list, dict, bool)) or value is None:
        text = json.dumps(value, separators=(",", ":"))
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-") or "x"


@dataclass
class PlannedRun:
    setting: dict[str, Any]  # grid key -> value
    seed: int
    folder: Path

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={json.dumps(v)}" for k, v in self.setting.items()] + [f"train.seed={self.seed}"]

    @property
    def name(self) -> str:
        return " ".join(f"{k}={_slug(v)}" for k, v in self.setting.items()) + f" seed {self.seed}"


def setting_folder(setting: dict[str, Any], digits: int = 6) -> str:
    """A setting's folder name: ``key=value__key=value`` (``default`` for none; see :func:`_slug`)."""
    return "__".join(f"{k}={_slug(v, digits)}" for k, v in setting.items()) or "default"


def plan_settings(settings: Sequence[dict[str, Any]], seeds: Sequence[int], output_dir: Path) -> list[PlannedRun]:
    """Every setting for every seed: ``output_dir/<key=value__...>/seed<k>``; floats in the names get more
    digits where two settings would otherwise share a folder."""
    distinct = [s for i, s in enumerate(settings) if s not in settings[:i]]
    digits = 6
    while digits < 17 and len({setting_folder(s, digits) for s in distinct}) < len(distinct):
        digits += 1
    return [PlannedRun(setting, int(seed), output_dir / setting_folder(setting, digits) / f"seed{seed}")
            for setting in settings for seed in seeds]


def write_plan(runs: Sequence[PlannedRun], output_dir: Path) -> None:
    """``OUT/runs.json``: each run's folder (relative to OUT), its setting with the values in full, and its seed."""
    atomic_write_text(json.dumps([{"folder": str(r.folder.relative_to(output_dir)), "setting": r.setting, "seed": r.seed}
                                  for r in runs], indent=2), output_dir / "runs.json")


def plan(grid: dict[str, list[Any]], seeds: Sequence[int], output_dir: Path) -> list[PlannedRun]:
    """Every combination of the grid's values for every seed: ``output_dir/<key=value__...>/seed<k>``."""
    combos = itertools.product(*grid.values()) if grid else [()]
    return plan_settings([dict(zip(grid, combo)) for combo in combos], seeds, output_dir)


def check_settings(runs: Sequence[PlannedRun], config: Path | None, method: str | None, opts: Sequence[str]) -> None:
    """Build every run's config before anything runs, so an unknown key or a bad value stops the sweep at once.

    Raises:
        ConfigError: naming the key (from the config loader) and the grid setting.
    """
    from seg_ext.methods import method_class, method_config, resolve_method

    name = resolve_method(method, config)
    ignored: dict[str, str] | None = None  # swept keys that every run's config leaves unused, with why
    for run in runs:
        try:
            cfg = method_config(name, config, [*opts, *run.overrides])
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in the sweep's setting {run.name})") from None
        unused = {k: why for k, why in method_class(name).ignored_keys(cfg).items() if k in run.setting}
        ignored = unused if ignored is None else {k: why for k, why in ignored.items() if k in unused}
    if ignored:
        key, why = next(iter(ignored.items()))
        raise ConfigError(f"the sweep varies '{key}', but {why}: every value would give the same numbers; "
                          "expected a key this config uses")


def training_tool(method: str | None, config: Path | None) -> Path:
    """The training tool of the method's task (``tools/train_<task>.py``)."""
    from seg_ext.methods import method_class, resolve_method

    return ROOT / "tools" / f"train_{method_class(resolve_method(method, config)).task}.py"


def run_command(run: PlannedRun, tool: Path, config: Path | None, data_root: Path | None, method: str | None,
                opts: Sequence[str]) -> list[str]:
    """The command line of ``tool`` (:func:`training_tool`) for ``run`` (``--resume`` when its folder holds an
    unfinished run). Needs nothing heavier than the standard library: Ray's workers build it for each trial."""
    command = [sys.executable, str(tool), "--output-dir", str(run.folder)]
    if (run.folder / "last.pt").is_file() or (run.folder / "last.prev.pt").is_file():
        # the run keeps its saved config, but logs to MLflow when the sweep now does (--tracking-uri)
        tracking = [o for o in opts if is_tracking_opt(o)]
        return command + ["--resume"] + (["--opts", *tracking] if tracking else [])
    if method is not None:
        command += ["--method", method]
    if config is not None:
        command += ["--config", str(config)]
    if data_root is not None:
        command += ["--data-root", str(data_root)]
    return command + ["--opts", *opts, *run.overrides]


ENGINES = ("local", "ray")


def run_env(threads: int | None) -> dict[str, str]:
    """What a run's process gets on top of the sweep's environment, with either engine: the checkout on
    ``PYTHONPATH``, and ``threads`` torch threads (``OMP_NUM_THREADS``) unless the sweep's environment sets them
    (``train.threads``, when set, still wins inside the run)."""
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


@dataclass
class RayOptions:
    """How ``--engine ray`` runs (see ``seg_ext.tasks.ray_sweep``): the cluster's address (None: embedded, on
    this machine), each run's resources, retries of a failed trial, and an optional search instead of the grid
    (``search`` "optuna": ``trials`` samples of ``space``, ASHA stopping bad ones early, the ``top`` best settings
    then run over the seeds)."""

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    max_failures: int = 3
    search: str | None = None
    trials: int = 0
    space: Sequence[str] = ()
    top: int = 1

    def arguments(self) -> dict[str, Any]:
        """What a continued sweep must repeat (the address and resources may change between runs of it)."""
        if self.search is None:
            return {}
        return {"search": self.search, "trials": self.trials, "space": list(self.space), "top": self.top}


def sweep(grid_items: Sequence[str], seeds: Sequence[int], output_dir: Path, config: Path | None = None,
          data_root: Path | None = None, method: str | None = None, opts: Sequence[str] = (), jobs: int = 1,
          engine: str = "local", ray: RayOptions | None = None, tracking_uri: str | None = None) -> int:
    """Run the sweep (skipping finished runs, resuming unfinished ones), then write ``output_dir/comparison.md``.

    ``engine``: ``local`` (this machine, ``jobs`` at a time) or ``ray`` (Ray Tune, ``ray``'s options). With
    ``train.tracking: mlflow`` in the config or ``--opts``, or with ``tracking_uri``, the sweep is an MLflow run
    and its runs are its children (``seg_ext.tasks.tracking``); the URI is not one of the sweep's arguments (the
    same sweep may log elsewhere when continued).

    Returns:
        The number of runs that failed (0: all finished).

    Raises:
        ConfigError: a bad grid or setting; the folder holds a sweep with other arguments.
    """
    from seg_ext.tasks.compare import is_run

    if engine not in ENGINES:
        raise ConfigError(f"--engine is {engine!r}; expected one of: {', '.join(ENGINES)}")
    ray = ray or RayOptions()
    if not seeds:
        raise ConfigError("--seeds needs at least one seed, e.g. --seeds 0 1 2")
    if jobs < 1:
        raise ConfigError(f"--jobs is {jobs}; expected 1 or more")
    if engine != "ray" and (ray.search or ray.address):
        raise ConfigError("--search and --address are for --engine ray")
    grid = parse_grid(grid_items)
    if ray.search is not None:
        if grid:
            raise ConfigError("--grid and --search do not go together: a search samples --space instead of a grid")
        if ray.search != "optuna":
            raise ConfigError(f"--search is {ray.search!r}; expected optuna")
        if ray.trials < 1 or not ray.space or ray.top < 1:
            raise ConfigError("--search optuna needs --trials N (1 or more) and --space KEY=RANGE ...; --top 1 or more")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise SegExtError(f"--output-dir {output_dir} is a file; expected a folder (new, or the sweep's own)")
    arguments = {"grid": {k: v for k, v in grid.items()}, "seeds": [int(s) for s in seeds],
                 "config": str(config) if config else None, "data_root": str(data_root) if data_root else None,
                 "method": method, "opts": list(opts), **ray.arguments()}
    marker = output_dir / "sweep.json"
    if marker.is_file():
        before = json.loads(marker.read_text())
        engine_before = before.pop("engine", "local")
        if before != arguments:
            made = f" made with the {engine_before} engine" if engine_before != engine else ""
            raise SegExtError(f"{output_dir} holds a sweep{made} with other arguments ({marker}); run it with the same "
                              "arguments to continue it, or choose another --output-dir")
    if tracking_uri:  # each run logs there (a run's own config keeps it: --resume logs to the same place)
        opts = [*opts, *tracking_opts(tracking_uri)]
    if engine == "ray":
        return _ray_sweep(grid, seeds, output_dir, config, data_root, method, opts, ray, arguments)
    runs = plan(grid, seeds, output_dir)
    check_settings(runs, config, method, opts)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps({**arguments, "engine": engine}, indent=2), marker)
    write_plan(runs, output_dir)

    with sweep_tracking(_sweep_config(config, method, opts), output_dir, arguments, engine) as (tracker, tracking_env):
        todo = [r for r in runs if not is_run(r.folder)]
        logger.info("sweep: %d run(s), %d finished before, %d to run, %d at a time", len(runs), len(runs) - len(todo),
                    len(todo), jobs)
        failed = _execute(todo, len(runs) - len(todo), len(runs), config, data_root, method, opts, jobs, tracking_env)
        _compare(runs, output_dir)
        sweep_finished(tracker, output_dir, failed)
    return failed


def _sweep_config(config: Path | None, method: str | None, opts: Sequence[str]) -> dict[str, Any]:
    """The config the sweep's settings start from (its ``train.tracking`` says whether the sweep is tracked)."""
    from seg_ext.methods import method_config, resolve_method

    return method_config(resolve_method(method, config), config, list(opts))



def _compare(runs: Sequence[PlannedRun], output_dir: Path) -> None:
    from seg_ext.tasks.compare import compare_runs, is_run

    finished = [r.folder for r in runs if is_run(r.folder)]
    if finished:
        compare_runs(finished, output_dir / "comparison.md", title=f"Sweep {output_dir.name}")
        logger.info("comparison: %s", output_dir / "comparison.md")


def _ray_sweep(grid: dict[str, list[Any]], seeds: Sequence[int], output_dir: Path, config: Path | None,
               data_root: Path | None, method: str | None, opts: Sequence[str], options: RayOptions,
               arguments: dict[str, Any]) -> int:
    """The sweep on Ray Tune: the grid (or, with a search, the best settings it finds) over the seeds."""
    from seg_ext.engine import lower_is_better
    from seg_ext.tasks import ray_sweep as rs

    rs.import_ray()
    dims = rs.parse_space(options.space) if options.search else []
    check_settings(plan_settings([{d.key: d.example() for d in dims}], seeds[:1], output_dir) if dims
                   else plan(grid, seeds, output_dir), config, method, opts)
    sweep_cfg = _sweep_config(config, method, opts)
    train = sweep_cfg["train"]
    metric = str(train["best_metric"])
    mode = "min" if lower_is_better(metric) else "max"
    output_dir = output_dir.resolve()
    with sweep_tracking(sweep_cfg, output_dir, arguments, "ray") as (tracker, tracking_env):
        spec = rs.TrialSpec(str(Path(config).resolve()) if config else None,
                            str(Path(data_root).resolve()) if data_root else None, method, list(opts), metric,
                            str(training_tool(method, config)),
                            {**run_env(max(1, math.ceil(options.cpus_per_run))), **tracking_env})
        failed = _ray_runs(grid, seeds, output_dir, dims, spec, options, mode, int(train["epochs"]), arguments)
        sweep_finished(tracker, output_dir, failed)
    return failed


def _ray_runs(grid: dict[str, list[Any]], seeds: Sequence[int], output_dir: Path, dims: Sequence[Any], spec: Any,
              options: RayOptions, mode: str, epochs: int, arguments: dict[str, Any]) -> int:
    """Connect to the cluster, check it, run the search (with one) and the runs, compare them; the failed count."""
    from seg_ext.tasks import ray_sweep as rs
    from seg_ext.tasks.compare import is_run

    rs.connect(options.address, spec.env["PYTHONPATH"])
    try:
        nodes = rs.check_cluster(output_dir, options.cpus_per_run, options.gpus_per_run, ROOT)
        atomic_write_text(json.dumps({**arguments, "engine": "ray"}, indent=2), output_dir / "sweep.json")
        logger.info("sweep on Ray: %d node(s) (%s)", len(nodes), ", ".join(n["NodeManagerAddress"] for n in nodes))
        if dims:  # the search's best settings, over the seeds
            runs = plan_settings(_search(dims, seeds, output_dir, spec, options, mode, epochs), seeds, output_dir)
        else:
            runs = plan(grid, seeds, output_dir)
        write_plan(runs, output_dir)
        todo = [r for r in runs if not is_run(r.folder)]
        logger.info("sweep: %d run(s), %d finished before, %d to run", len(runs), len(runs) - len(todo), len(todo))
        failed = 0
        if todo:
            trainable, space = rs.grid_trainable(todo, spec)
            results = rs.execute(trainable, space, spec, output_dir, options.cpus_per_run, options.gpus_per_run,
                                 options.max_failures, f"grid-{int(time.time())}", mode)
            failed = sum(1 for r in results if r.error is not None)
            for r in results:
                if r.error is not None:
                    logger.warning("%s: failed after %d retries: %s", r.config["run"]["folder"], options.max_failures,
                                   str(r.error).splitlines()[0] if str(r.error) else type(r.error).__name__)
        _compare(runs, output_dir)
        return failed
    finally:
        rs.shutdown()


def _search(dims: Sequence[Any], seeds: Sequence[int], output_dir: Path, spec: Any, options: RayOptions, mode: str,
            epochs: int) -> list[dict[str, Any]]:
    """Optuna's search with ASHA over ``options.trials`` runs of the first seed (``OUT/search/``); the best
    ``options.top`` settings by their best validation value, kept in ``OUT/search.json`` (a sweep run again
    reuses them)."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from seg_ext.tasks import ray_sweep as rs

    done = output_dir / "search.json"
    if done.is_file():
        return json.loads(done.read_text())["best"]
    import optuna

    metric = spec.metric
    search = OptunaSearch(metric=metric, mode=mode, sampler=optuna.samplers.TPESampler(seed=int(seeds[0])))
    scheduler = ASHAScheduler(time_attr="epoch", max_t=max(epochs, 1), grace_period=1, reduction_factor=2)
    trainable, space = rs.search_trainable(dims, spec, output_dir, int(seeds[0]))
    logger.info("search: %d trial(s) of %s, ASHA on val %s over %d epoch(s)", options.trials,
                ", ".join(d.key for d in dims), metric, epochs)
    results = rs.execute(trainable, space, spec, output_dir, options.cpus_per_run, options.gpus_per_run,
                         options.max_failures, f"search-{int(time.time())}", mode, scheduler, search, options.trials)
    trials = []
    for r in results:
        frame = r.metrics_dataframe
        epochs_done = int(frame["epoch"].max()) if frame is not None and "epoch" in frame and len(frame) else 0
        best = None
        if frame is not None and metric in frame and frame[metric].notna().any():
            best = float(frame[metric].max() if mode == "max" else frame[metric].min())
        trials.append({"setting": dict(r.config), "best": best, "epochs": epochs_done,
                       "stopped_early": r.error is None and epochs_done < epochs, "error": None if r.error is None else str(r.error)})
    best = rs.best_settings(trials, mode, options.top)
    atomic_write_text(json.dumps({"metric": metric, "mode": mode, "best": best, "trials": trials}, indent=2), done)
    logger.info("search: %d trial(s), %d stopped early by ASHA; best %s: %s", len(trials),
                sum(t["stopped_early"] for t in trials), metric, best)
    return best


def threads_per_run(jobs: int) -> int:
    """torch's CPU threads for each of ``jobs`` runs at a time: this process's CPUs shared out. Each run would
    otherwise take them all: with 2 runs on 2 cores, every run took 6 times as long as alone (OpenMP threads
    spinning against each other), so a sweep with ``--jobs 2`` was 5 times slower than one run at a time."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // jobs)


def _execute(todo: Sequence[PlannedRun], done: int, total: int, config: Path | None, data_root: Path | None,
             method: str | None, opts: Sequence[str], jobs: int, extra_env: dict[str, str] | None = None) -> int:
    """Run ``todo`` with at most ``jobs`` at once (``extra_env`` on top of their environment); a Ctrl-C or
    SIGTERM stops the runs (each saves its position) and the sweep; returns the number of failed runs."""
    env = {**os.environ, **run_env(threads_per_run(jobs) if jobs > 1 else None), **(extra_env or {})}
    pending, running, failed, tool = list(todo), {}, 0, training_tool(method, config)
    stop: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while running or (pending and not stop):
            while pending and len(running) < jobs and not stop:
                run = pending.pop(0)
                run.folder.parent.mkdir(parents=True, exist_ok=True)
                log = open(run.folder.parent / f"{run.folder.name}.out", "a")
                command = run_command(run, tool, config, data_root, method, opts)
                resumed = "--resume" in command
                proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
                running[proc] = (run, log, time.perf_counter())
                logger.info("[%d/%d] %s%s: started", done + 1, total, run.name, " (resumed)" if resumed else "")
                done += 1
            if stop:
                for proc in running:
                    proc.send_signal(stop[0])  # each run saves its position and exits
            for proc in [p for p in running if p.poll() is not None]:
                run, log, start = running.pop(proc)
                log.close()
                seconds = time.perf_counter() - start
                if proc.returncode == 0:
                    logger.info("%s: finished in %.0f s", run.name, seconds)
                elif stop:
                    logger.warning("%s: stopped; it continues where it was when the sweep is run again", run.name)
                else:
                    failed += 1
                    logger.warning("%s: failed (exit %d); see %s", run.name, proc.returncode, log.name)
            time.sleep(0.2)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stop:
        raise Preempted(f"sweep stopped by {signal.Signals(stop[0]).name}; the finished runs are kept and the stopped "
                        "ones saved their position: run the same command again to continue", stop[0])
    return failed
