"""Sweeps on Ray Tune (``tools/sweep.py --engine ray``): the local runner's grid x seeds on one machine or a
cluster, trials that survive lost nodes, and an Optuna search with ASHA early stopping.

Each run (setting x seed) is one Tune trial, placed by its resources (``--cpus-per-run``, ``--gpus-per-run``). A
trial starts the same training-tool command as the local runner (``seg_ext.tasks.sweep.run_command``) in the same
folder (``OUT/<key=value__...>/seed<k>``), so the runs, their files and their numbers are the local runner's. The
trial relays the run's per-epoch validation metric (the ``metrics.jsonl`` line the trainer's history hook writes
after each validation) to Tune with ``tune.report``, which is what ASHA decides on.

Lost work: the training process is tied to its trial (it gets SIGTERM when the trial's worker exits or dies, and
saves its position like any stopped run: see :data:`SUPERVISOR`); a trial whose process or node dies is retried (``--max-failures``) wherever there
is room, waits for the dead run's lock to be released, and continues from ``last.pt`` with ``--resume``: exact
resume makes its numbers those of an uninterrupted run. The sweep folder (and the checkout) must be on a file
system every node sees; the sweep checks it on every node before the first trial.

``ray`` is imported only here and only when ``--engine ray`` is asked for: the local runner needs nothing new.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from seg_ext.config import parse_value
from seg_ext.errors import ConfigError, Preempted, SegExtError

logger = logging.getLogger(__name__)

INSTALL = "pip install '.[cluster]' (ray[tune]==2.60.0 and optuna==5.0.0)"
CONNECT_TIMEOUT = 10.0  # seconds to reach --address before saying it cannot be reached
SPACE_KINDS = ("uniform", "loguniform", "int", "choice")
# what Tune logs when a sweep is stopped: its advice (Tuner.restore) is not how a sweep continues
TUNE_STOP_MESSAGES = ("Stop signal received", "Experiment has been interrupted", "Trials did not complete",
                      "Failed to fetch metrics")


def import_ray() -> Any:
    """The ``ray`` module with Tune, or one sentence saying how to install them."""
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError:
        raise SegExtError(f"--engine ray needs Ray Tune, which is not installed here; install it with {INSTALL}") from None
    return ray


# ---- the search space --------------------------------------------------------------------------------------


@dataclass
class Dimension:
    """One key of ``--space``: ``uniform:LOW:HIGH``, ``loguniform:LOW:HIGH``, ``int:LOW:HIGH`` (both ends
    included) or ``choice:V1,V2,...`` (YAML values)."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    values: list[Any] = field(default_factory=list)

    def sample_space(self) -> Any:
        from ray import tune

        if self.kind == "uniform":
            return tune.uniform(self.low, self.high)
        if self.kind == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.kind == "int":
            return tune.randint(int(self.low), int(self.high) + 1)
        return tune.choice(self.values)

    def example(self) -> Any:
        """A value of the range (for checking the key against the config)."""
        if self.kind == "choice":
            return self.values[0]
        return int(self.low) if self.kind == "int" else float(self.low)


def parse_space(items: Sequence[str]) -> list[Dimension]:
    """``["train.lr=loguniform:1e-4:1e-2", "model.base_width=choice:16,32"]`` -> dimensions.

    Raises:
        ConfigError: an item that does not parse, in one sentence naming it and the forms expected.
    """
    from seg_ext.tasks.sweep import split_values

    forms = "uniform:LOW:HIGH, loguniform:LOW:HIGH, int:LOW:HIGH or choice:V1,V2"
    dims: list[Dimension] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        kind, _, rest = text.partition(":")
        if not sep or not key or kind not in SPACE_KINDS or not rest:
            raise ConfigError(f"--space item '{item}' does not parse; expected KEY={forms}")
        if any(d.key == key for d in dims):
            raise ConfigError(f"--space key '{key}' is given twice")
        if kind == "choice":
            values = [parse_value(v.strip()) for v in split_values(rest)]
            if len(values) < 2 or any(v is None or v == "" for v in values):
                raise ConfigError(f"--space item '{item}' needs two or more values: {key}=choice:V1,V2")
            dims.append(Dimension(key, kind, values=values))
            continue
        try:
            low, high = (float(v) for v in rest.split(":"))
        except ValueError:
            raise ConfigError(f"--space item '{item}' does not parse; expected KEY={forms} with numbers") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high) or (kind == "loguniform" and low <= 0) or (
                kind == "int" and (low != int(low) or high != int(high))):
            raise ConfigError(f"--space item '{item}': expected LOW < HIGH" + (", both above 0" if kind == "loguniform" else "")
                              + (", both integers" if kind == "int" else ""))
        dims.append(Dimension(key, kind, low, high))
    return dims


# ---- connecting --------------------------------------------------------------------------------------------


def connect(address: str | None, python_path: str, cpus: int | None = None) -> None:
    """Start an embedded Ray (``address`` None; ``cpus``: its CPUs, default all) or join a cluster
    (``HOST:PORT``, or ``auto``: ``RAY_ADDRESS`` or the cluster started on this machine). The workers import
    seg_ext from ``python_path`` (the checkout, at the same path on every node).

    Raises:
        SegExtError: the address cannot be reached within :data:`CONNECT_TIMEOUT` seconds.
    """
    ray = import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave the machine
    if ray.is_initialized():
        return
    if address not in (None, "auto"):
        host, _, port = str(address).rpartition(":")
        if not host or not port.isdigit():
            raise SegExtError(f"--address {address} is not HOST:PORT (or auto); e.g. --address 10.0.0.5:6379")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
        except OSError:
            raise SegExtError(f"cannot reach a Ray cluster at {address} within {CONNECT_TIMEOUT:.0f} s; start one there "
                              "with 'ray start --head --port PORT' or check --address") from None
    try:
        runtime_env = {"env_vars": {"PYTHONPATH": python_path, "RAY_USAGE_STATS_ENABLED": "0"}}
        if address is None:
            # "local": a Ray of its own even when a cluster was started on this machine (ray.init() would join it)
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     runtime_env=runtime_env)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False, runtime_env=runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SegExtError(f"cannot connect to the Ray cluster at {address}: {str(exc).splitlines()[0]}; start one "
                          "with 'ray start --head' or check --address") from None


def _check_folder_on_node(token_path: str, expected: str, tools: str) -> str:
    path = Path(token_path)
    if not path.is_file() or path.read_text() != expected:
        return f"the sweep folder {path.parent} is not visible there"
    if not Path(tools).is_dir():
        return f"the checkout {Path(tools).parent} is not there"
    return ""


def check_cluster(output_dir: Path, cpus_per_run: float, gpus_per_run: float, root: Path) -> list[dict[str, Any]]:
    """Check that the cluster can run the trials: enough CPUs and GPUs on some node for one run, and the sweep
    folder and the checkout visible, at the same paths, from every node. Returns the alive nodes.

    Raises:
        SegExtError: one sentence naming what is missing (and the node).
    """
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if gpus_per_run > 0 and not any(n["Resources"].get("GPU", 0) >= gpus_per_run for n in nodes):
        total = sum(n["Resources"].get("GPU", 0) for n in nodes)
        raise SegExtError(f"--gpus-per-run {gpus_per_run:g} but no node of the Ray cluster has that many GPUs (the cluster "
                          f"has {total:g}); lower --gpus-per-run or add GPU nodes")
    if not any(n["Resources"].get("CPU", 0) >= cpus_per_run for n in nodes):
        most = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
        raise SegExtError(f"--cpus-per-run {cpus_per_run:g} but no node of the Ray cluster has that many CPUs (at most "
                          f"{most:g}); lower --cpus-per-run")
    output_dir.mkdir(parents=True, exist_ok=True)
    token, expected = output_dir / ".ray_check", uuid.uuid4().hex
    token.write_text(expected)
    check = ray.remote(num_cpus=0)(_check_folder_on_node)
    try:
        futures = {n["NodeManagerAddress"] + " (" + n["NodeID"][:8] + ")": check.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                str(token.resolve()), expected, str(root / "tools")) for n in nodes}
        for node, future in futures.items():
            problem = ray.get(future, timeout=120)
            if problem:
                raise SegExtError(f"{problem} from node {node}; the sweep folder and the checkout must be on a file "
                                  "system every node sees, at the same path (NFS, a cluster file system)")
    finally:
        token.unlink(missing_ok=True)
    return nodes


# ---- the trial ---------------------------------------------------------------------------------------------


@dataclass
class TrialSpec:
    """What every trial of a sweep shares: the training-tool arguments, the metric to report."""

    config: str | None
    data_root: str | None
    method: str | None
    opts: list[str]
    metric: str  # the validation metric reported to Tune (without "val/")
    tool: str  # the training tool (seg_ext.tasks.sweep.training_tool), so a trial need not import the methods
    env: dict[str, str]  # on top of the worker's environment (seg_ext.tasks.sweep.run_env: --cpus-per-run threads)


# The trial's worker starts the run through this small supervisor (standard library only, so it starts at once).
# Ray kills a worker's direct children with SIGKILL when the worker exits (RAY_kill_child_processes_on_worker_exit,
# on by default), which is how a trial that Tune stops (Ctrl-C, ASHA) ends: a run started directly would die
# without saving its position. Started one level down, the run gets SIGTERM when the supervisor dies, however it
# dies (PR_SET_PDEATHSIG), saves its position and exits; the supervisor dies with the worker (a lost node), passes
# SIGTERM and SIGINT on, and exits with the run's status.
SUPERVISOR = """
import ctypes, os, signal, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: this supervisor dies with the trial's worker
if os.getppid() == 1:
    sys.exit(143)
def run_side():
    os.setsid()  # a terminal's Ctrl-C to the sweep's group does not reach the run directly
    libc.prctl(1, signal.SIGTERM)  # the run is told to stop when this supervisor dies
proc = subprocess.Popen(sys.argv[1:], preexec_fn=run_side)
for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, lambda s, f: proc.send_signal(signal.SIGTERM))
code = proc.wait()
sys.exit(128 - code if code < 0 else code)
"""


def _wait_for_lock(folder: Path, timeout: float = 600.0) -> None:
    """Wait until no process holds the run's lock (a run of an earlier attempt may still be saving its position)."""
    lock = folder / ".lock"
    if not lock.is_file():
        return
    deadline = time.monotonic() + timeout
    with open(lock, "a+") as handle:
        while True:
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.lockf(handle, fcntl.LOCK_UN)
                return
            except OSError:
                if time.monotonic() > deadline:
                    return  # the run itself will say that the folder is in use
                time.sleep(0.5)


def _report_lines(path: Path, offset: int, metric: str, report: Any) -> int:
    """Report the complete new lines of ``metrics.jsonl`` from byte ``offset`` that hold the metric; the new
    offset."""
    if not path.is_file():
        return offset
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        value = row.get(f"val/{metric}")
        if isinstance(value, (int, float)) and row.get("epoch") is not None:
            report({"epoch": int(row["epoch"]), metric: float(value)})
    return offset + end


def run_trial(run: Any, spec: TrialSpec) -> None:
    """One Tune trial: the training command of ``run`` (a ``seg_ext.tasks.sweep.PlannedRun``; with ``--resume``
    when its folder holds a started run), its validation metric relayed to Tune after each epoch. Raises when the
    run fails, so Tune retries it."""
    import ray
    from ray import tune

    from seg_ext.tasks.sweep import run_command

    run.folder.parent.mkdir(parents=True, exist_ok=True)
    _wait_for_lock(run.folder)
    command = run_command(run, Path(spec.tool), Path(spec.config) if spec.config else None,
                          Path(spec.data_root) if spec.data_root else None, spec.method, spec.opts)
    context = ray.get_runtime_context()
    attempt = {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
               "resumed": "--resume" in command, "started": time.time()}
    attempts_file = run.folder.parent / f"{run.folder.name}.ray.json"
    attempts = json.loads(attempts_file.read_text()) if attempts_file.is_file() else []
    attempts_file.write_text(json.dumps([*attempts, attempt], indent=2))
    env = {**os.environ, **spec.env}
    with open(run.folder.parent / f"{run.folder.name}.out", "a") as log:
        proc = subprocess.Popen([command[0], "-c", SUPERVISOR, *command], stdout=log, stderr=subprocess.STDOUT, env=env)
        offset, metrics = 0, run.folder / "metrics.jsonl"
        try:
            while proc.poll() is None:
                offset = _report_lines(metrics, offset, spec.metric, tune.report)
                time.sleep(0.5)
        finally:
            if proc.poll() is None:  # the trial was stopped (ASHA, Ctrl-C): the run saves its position
                proc.send_signal(signal.SIGTERM)
                proc.wait()
        _report_lines(metrics, offset, spec.metric, tune.report)
    if proc.returncode != 0:
        raise RuntimeError(f"run {run.folder} exited with {proc.returncode}; see {log.name}")


# ---- the sweep ---------------------------------------------------------------------------------------------


def execute(trainable: Any, space: dict[str, Any], spec: TrialSpec, output_dir: Path, cpus_per_run: float,
            gpus_per_run: float, max_failures: int, name: str, mode: str = "max", scheduler: Any = None,
            search: Any = None, num_samples: int = 1) -> Any:
    """Run ``trainable`` over ``space`` (a grid of planned runs, or ``num_samples`` trials of a search) on the
    connected cluster; returns Tune's result grid.

    Raises:
        Preempted: Ctrl-C or SIGTERM stopped the sweep (the stopped runs saved their position).
    """
    from ray import tune

    resources = {"cpu": cpus_per_run, **({"gpu": gpus_per_run} if gpus_per_run else {})}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=space,
        tune_config=tune.TuneConfig(metric=spec.metric, mode=mode, scheduler=scheduler, search_alg=search,
                                    num_samples=num_samples, reuse_actors=True),  # a worker serves trial after trial
        run_config=tune.RunConfig(name=name, storage_path=str((output_dir / ".ray").resolve()), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    # Ctrl-C and SIGTERM stop the sweep as Tune's own SIGINT handler would (Tune stops the trials, whose runs save
    # their position, and returns), but through SIGUSR1, which Tune also catches: Tune's SIGINT handler would hide
    # that the sweep was stopped, and it leaves SIGTERM to kill the driver outright. A second signal stops at once.
    stop: list[int] = []

    def before_tune(signum: int, frame: Any) -> None:  # SIGUSR1 until Tune catches it
        raise KeyboardInterrupt

    def on_signal(signum: int, frame: Any) -> None:
        first = not stop
        stop.append(signum)
        if not first or signal.getsignal(signal.SIGUSR1) is before_tune:
            raise KeyboardInterrupt
        logger.warning("%s: stopping the runs where they are (each saves its position); a second one stops at once",
                       signal.Signals(signum).name)
        signal.raise_signal(signal.SIGUSR1)

    def not_tunes_advice(record: logging.LogRecord) -> bool:  # once stopped, Tune's advice (Tuner.restore) is not ours
        return not stop or not str(record.msg).startswith(TUNE_STOP_MESSAGES)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, before_tune)
    tune_loggers = [logging.getLogger(name) for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")]
    for tune_logger in tune_loggers:
        tune_logger.addFilter(not_tunes_advice)
    tune_handler = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        results = tuner.fit()
    except KeyboardInterrupt:
        stop.append(signal.SIGINT)  # (a second signal, or one before Tune started: the trials end with the driver)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for tune_logger in tune_loggers:
            tune_logger.removeFilter(not_tunes_advice)
        if tune_handler is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_handler
    if stop:
        raise Preempted(f"sweep stopped by {signal.Signals(stop[0]).name}; the finished runs are kept and the stopped "
                        "ones saved their position: run the same command again to continue", stop[0])
    return results


def grid_trainable(runs: Sequence[Any], spec: TrialSpec) -> tuple[Any, dict[str, Any]]:
    """The trainable and parameter space of planned runs (one trial each)."""
    from ray import tune

    space = {"run": tune.grid_search([{"setting": r.setting, "seed": r.seed, "folder": str(r.folder)} for r in runs])}
    return tune.with_parameters(_grid_trial, spec=spec), space


def search_trainable(dims: Sequence[Dimension], spec: TrialSpec, output_dir: Path, seed: int) -> tuple[Any, dict[str, Any]]:
    """The trainable and parameter space of a search: each sampled setting a run of ``seed`` in
    ``OUT/search/<key=value__...>/seed<k>``."""
    from ray import tune

    return (tune.with_parameters(_search_trial, spec=spec, output_dir=str(output_dir), seed=seed),
            {d.key: d.sample_space() for d in dims})


def _grid_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    from seg_ext.tasks.sweep import PlannedRun

    run = config["run"]
    run_trial(PlannedRun(run["setting"], int(run["seed"]), Path(run["folder"])), spec)


def _search_trial(config: dict[str, Any], spec: TrialSpec, output_dir: str, seed: int) -> None:
    from seg_ext.tasks.sweep import plan_settings

    run_trial(plan_settings([dict(config)], [seed], Path(output_dir) / "search")[0], spec)


def best_settings(trials: Sequence[dict[str, Any]], mode: str, top: int) -> list[dict[str, Any]]:
    """The ``top`` best distinct settings of a search's trials (``setting``, ``best``: the best validation value
    each reached; ASHA-stopped trials count with what they reached)."""
    scored = sorted((t for t in trials if t["best"] is not None), key=lambda t: t["best"], reverse=mode == "max")
    out: list[dict[str, Any]] = []
    for trial in scored:
        if trial["setting"] not in out:
            out.append(trial["setting"])
        if len(out) == top:
            break
    return out


def shutdown() -> None:
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()


__all__ = ["INSTALL", "TrialSpec", "best_settings", "check_cluster", "connect", "execute", "grid_trainable", "import_ray",
           "parse_space", "run_trial", "search_trainable", "shutdown"]
