"""Experiment tracking with MLflow (``train.tracking: mlflow``; docs/experiments.md, "Tracking with MLflow").

A run logs its flattened config as params, tags saying where and how it ran, every epoch's record as metrics
(step: the epoch), the final val/test metrics of the checkpoint it keeps (``final/<split>/<metric>``) and, as
artifacts, its report, metrics and config and the model folder of that checkpoint (``model/``). Only process 0
of a torchrun launch logs. The run's MLflow id is kept in ``<run folder>/tracking.json``, so ``--resume``
continues the same MLflow run. A sweep is an MLflow run of its own, with each of its runs as a child (their
processes learn its id from :data:`PARENT_ENV`) and the comparison table as its description and an artifact.

The server is asked before anything trains: one that cannot be reached is one sentence then, not a failure an
hour later. Once training runs, a failed call to the server is a warning; the values wait and go with the next
call, and the run folder keeps every number either way.

Where the store is: ``--tracking-uri`` or ``train.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite
store in ``runs/mlflow`` under the current folder (a plain folder given as the URI is such a store too). The
``mlflow`` package is the ``tracking`` extra; it is imported only when a run asks for tracking. Nothing heavier
than the standard library is imported with this module (``tasks.sweep`` imports it, and Ray's workers that one).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from seg_ext import __version__
from seg_ext.errors import Preempted, SegExtError
from seg_ext.io import atomic_write_text

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
RECORD = "tracking.json"  # in a run (or sweep) folder: the MLflow run it logs to
DEFAULT_STORE = Path("runs") / "mlflow"
PARENT_ENV = "SEG_EXT_MLFLOW_PARENT_RUN"  # a sweep's MLflow run id, for the runs it starts
URI_ENV = "SEG_EXT_MLFLOW_URI"  # the sweep's tracking URI, resolved, for the runs it starts (wins over theirs)
SWEEP_ENV = "SEG_EXT_MLFLOW_SWEEP_DIR"  # the sweep's folder: a run's name is its folder relative to it
# the run's files logged as artifacts (with the figures report.html shows, *.png and *.jpg beside it)
RUN_FILES = ("report.html", "report.md", "metrics.json", "metrics.jsonl", "config.yaml", "splits.json")
SWEEP_FILES = ("comparison.md", "comparison.json", "sweep.json", "runs.json", "search.json")
# how long one call to the server may try, unless MLFLOW_HTTP_REQUEST_* say otherwise (MLflow's own default
# retries a refused call for about four minutes, which would stall training that long each epoch)
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
INSTALL = ("install the tracking extra (pip install -e '.[tracking]', or pip install -r requirements-tracking.txt "
           "into the environment), or set train.tracking: none")


def tracking_opts(uri: str) -> list[str]:
    """The ``--opts`` that make a run log to ``uri`` (what ``--tracking-uri`` sets)."""
    return ["train.tracking=mlflow", f"train.tracking_uri={uri}"]


def is_tracking_opt(opt: str) -> bool:
    """Whether an ``--opts`` item is one of :func:`tracking_opts`' keys (a resumed run takes those too)."""
    return opt.split("=", 1)[0].strip() in ("train.tracking", "train.tracking_uri")


def enabled(cfg: dict[str, Any]) -> bool:
    """Whether the run of ``cfg`` is tracked (``train.tracking: mlflow``)."""
    return cfg["train"]["tracking"] == "mlflow"


def import_mlflow() -> Any:
    """The ``mlflow`` module, or one sentence saying how to install it."""
    try:
        import mlflow
    except ImportError as exc:
        raise SegExtError(f"train.tracking is mlflow but the mlflow package cannot be imported ({exc}); {INSTALL}") from None
    return mlflow


def resolve_uri(configured: str | None) -> str:
    """Where the runs are logged: a sweep's URI for its runs, else ``configured`` (``--tracking-uri`` /
    ``train.tracking_uri``), else ``MLFLOW_TRACKING_URI``, else a SQLite store in ``runs/mlflow``. A plain folder
    (no ``scheme:``) means a SQLite store in it; relative paths are made absolute (a sweep's runs start elsewhere)."""
    uri = os.environ.get(URI_ENV) or configured or os.environ.get("MLFLOW_TRACKING_URI") or str(DEFAULT_STORE)
    if "://" not in uri and uri != "databricks":  # a folder
        return f"sqlite:///{(Path(uri).expanduser().resolve() / 'mlflow.db')}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri.rstrip("/")


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def check_store(uri: str, timeout: float = 10.0) -> None:
    """Before anything trains: a server answers its health check, a SQLite store's folder can be made.

    Raises:
        SegExtError: one sentence naming the URI, what went wrong and what to do.
    """
    where = "--tracking-uri, train.tracking_uri or MLFLOW_TRACKING_URI"
    sqlite = _sqlite_path(uri)
    if sqlite is not None:
        try:
            sqlite.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SegExtError(f"MLflow store {uri}: cannot make its folder {sqlite.parent} ({exc.strerror}); "
                              f"expected a writable place, set by {where}") from None
        return
    if not uri.startswith(("http://", "https://")):
        return  # databricks, or a store only MLflow knows: its first call says what is wrong
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as reply:
            reply.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise SegExtError(f"MLflow tracking server {uri} refuses the connection (HTTP {exc.code}); set "
                              "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)") from None
        raise SegExtError(f"{uri} answers HTTP {exc.code} at /health, so it is not an MLflow tracking server; "
                          f"expected the address of `mlflow server` in {where}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SegExtError(f"MLflow tracking server {uri} cannot be reached ({reason}); start it (mlflow server "
                          f"--host HOST --port PORT), correct {where}, or set train.tracking: none") from None


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.001}}`` -> ``{"train.lr": "0.001"}``: lists and null as JSON, the rest as text."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[name] = text[:6000]  # (MLflow's longest param value)
    return out


def numbers(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) dict with their keys joined by ``/`` (MLflow refuses other values)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numbers(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out["".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)] = float(value)
    return out


def git_commit() -> str:
    """The commit of this checkout (``+dirty`` with uncommitted changes to tracked files), or ``unknown``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    """One MLflow run, through ``MlflowClient`` (no global active run). Calls made while training
    (:meth:`log_metrics`) never stop it: a failure is a warning and the values wait for the next call."""

    def __init__(self, client: Any, uri: str, run_id: str, experiment_id: str) -> None:
        self.client, self.uri, self.run_id, self.experiment_id = client, uri, run_id, experiment_id
        self.pending: list[tuple[dict[str, float], int]] = []
        self.warned = False

    @classmethod
    def open(cls, uri: str, experiment: str, name: str, tags: dict[str, str], run_id: str | None = None,
             parent: str | None = None) -> "Tracker":
        """A new MLflow run in ``experiment`` (made when missing; with a SQLite store, its artifacts go beside
        the database), or the run ``run_id`` continued (status back to RUNNING)."""
        import_mlflow()
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        try:
            if run_id is not None:
                info = client.get_run(run_id).info
                client.update_run(run_id, status="RUNNING")
                return cls(client, uri, run_id, info.experiment_id)
            found = client.get_experiment_by_name(experiment)
            if found is not None:
                experiment_id = found.experiment_id
            else:
                sqlite = _sqlite_path(uri)
                location = (sqlite.parent / "artifacts").as_uri() if sqlite is not None else None
                experiment_id = client.create_experiment(experiment, artifact_location=location)
            if parent is not None:
                tags = {**tags, "mlflow.parentRunId": parent}
            run = client.create_run(experiment_id, tags=tags, run_name=name)
        except Exception as exc:  # MlflowException, or the HTTP library's: one sentence either way
            if run_id is not None:
                raise SegExtError(f"MLflow at {uri} could not continue run {run_id} ({_first_line(exc)}); delete {RECORD} "
                                  "in the run folder to log the rest into a new run, or set train.tracking: none") from None
            raise SegExtError(f"MLflow at {uri} could not start a run in experiment {experiment!r}: "
                              f"{_first_line(exc)}") from None
        return cls(client, uri, run.info.run_id, experiment_id)

    def log_params(self, params: dict[str, str]) -> None:
        """Log ``params``; those the run has already (a resumed run) stay: MLflow never changes a param, so a
        value changed since is logged as a tag ``changed.<key>`` instead, and said once."""
        have = self.client.get_run(self.run_id).data.params
        changed = {k: v for k, v in params.items() if k in have and have[k] != v}
        if changed:
            logger.warning("MLflow keeps a run's params as first logged; changed since: %s (logged as tags "
                           "changed.<key>)", ", ".join(f"{k} {have[k]} -> {v}" for k, v in changed.items()))
        self._batch(params={k: v for k, v in params.items() if k not in have},
                    tags={f"changed.{k}": v for k, v in changed.items()})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._batch(tags=tags)

    def _batch(self, metrics: list[Any] = (), params: dict[str, str] | None = None,
               tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Param, RunTag

        self.client.log_batch(self.run_id, metrics=list(metrics), params=[Param(k, v) for k, v in (params or {}).items()],
                              tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()], synchronous=True)

    def log_metrics(self, values: dict[str, float], step: int) -> bool:
        """Log ``values`` at ``step`` (with any that failed before); a failure is a warning, once, and the values
        wait. Returns whether everything logged has reached the server."""
        from mlflow.entities import Metric

        if values:
            self.pending.append((dict(values), int(step)))
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, s) for vals, s in self.pending for k, v in vals.items()]
        if not metrics:
            return True
        try:
            self._batch(metrics=metrics)
        except Exception as exc:
            if not self.warned:
                logger.warning("MLflow at %s did not take the metrics of step %d (%s); training goes on, the run "
                               "folder keeps every value, and they are sent again with the next epoch's", self.uri,
                               step, _first_line(exc))
                self.warned = True
            return False
        self.pending.clear()
        return True

    def log_epoch(self, record: dict[str, Any]) -> None:
        """An epoch's line of ``metrics.jsonl`` (its numbers, and ``epoch`` itself) at step ``epoch``."""
        epoch = int(record["epoch"])
        self.log_metrics({**numbers({k: v for k, v in record.items() if k != "epoch"}), "epoch": float(epoch)}, epoch)

    def logged_through(self) -> int:
        """The last epoch the server has (0: none), from the history of the ``epoch`` metric."""
        try:
            return max((int(m.step) for m in self.client.get_metric_history(self.run_id, "epoch")), default=0)
        except Exception as exc:
            logger.warning("MLflow at %s: could not read which epochs it has (%s); sending them all", self.uri,
                           _first_line(exc))
            return 0

    def log_files(self, folder: Path, names: tuple[str, ...] = (), patterns: tuple[str, ...] = (),
                  artifact_path: str | None = None) -> None:
        """``folder``'s files ``names`` and those matching ``patterns`` (top level) as artifacts."""
        paths = [folder / n for n in names if (folder / n).is_file()]
        paths += sorted(p for pattern in patterns for p in folder.glob(pattern) if p.is_file())
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_folder(self, folder: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def end(self, status: str) -> None:
        """Set the run's status (FINISHED, FAILED, KILLED) after one last try of what waits; never raises."""
        if self.pending:
            self.log_metrics({}, 0)
        if self.pending:
            logger.warning("MLflow at %s: %d epoch(s) of metrics never reached it; metrics.jsonl has them", self.uri,
                           len(self.pending))
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as exc:
            logger.warning("MLflow at %s: could not mark run %s %s (%s)", self.uri, self.run_id, status, _first_line(exc))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "run_id" in record else None


def _open(cfg: dict[str, Any], uri: str, output_dir: Path, name: str, tags: dict[str, str],
          previous: dict[str, Any] | None, parent: str | None = None) -> Tracker:
    """Open the MLflow run of a run or sweep folder (continue ``previous``, its ``tracking.json``, when given),
    with the tags every run has besides ``tags``: the code's commit (also as MLflow's own tag, which its UI shows),
    the machine, the package's version and the folder; keep its id in the folder's ``tracking.json``."""
    from seg_ext.engine import machine

    commit = git_commit()
    tags = {**tags, "mlflow.source.git.commit": commit, "git_commit": commit, "machine": machine(),
            "seg_ext_version": __version__, "run_folder": str(output_dir.resolve())}
    experiment = cfg["train"]["tracking_experiment"]
    tracker = Tracker.open(uri, experiment, name, tags, run_id=previous["run_id"] if previous else None, parent=parent)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps({"tracking_uri": tracker.uri, "experiment": experiment, "experiment_id":
                                  tracker.experiment_id, "run_id": tracker.run_id}, indent=2) + "\n", output_dir / RECORD)
    logger.info("MLflow: %s run %s in experiment %r at %s%s", tags["kind"], tracker.run_id, experiment, uri,
                " (continued)" if previous else "")
    return tracker


def _first_calls(tracker: Tracker, params: dict[str, str], tags: dict[str, str]) -> None:
    """The params (and tags) logged before anything trains: refused by the server, one sentence."""
    try:
        tracker.log_params(params)
        if tags:
            tracker.set_tags(tags)
    except Exception as exc:
        raise SegExtError(f"MLflow at {tracker.uri} did not take the run's params ({_first_line(exc)}); nothing was "
                          "trained yet") from None


def _status(exc: BaseException | None) -> str:
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, (Preempted, KeyboardInterrupt)) else "FAILED"


@contextmanager
def _ending(tracker: Tracker) -> Iterator[Tracker]:
    """End the run when the block ends: FINISHED, KILLED (stopped: it resumes) or FAILED."""
    try:
        yield tracker
    except BaseException as exc:
        tracker.end(_status(exc))
        raise
    tracker.end("FINISHED")


def check(cfg: dict[str, Any]) -> str | None:
    """The tracking URI of ``cfg``'s run, checked (the package importable, the server answering), or None when
    the run is not tracked. Every process of a torchrun launch may call it: it only reads."""
    if not enabled(cfg):
        return None
    import_mlflow()
    uri = resolve_uri(cfg["train"]["tracking_uri"])
    check_store(uri)
    return uri


@contextmanager
def run_tracking(cfg: dict[str, Any], output_dir: Path, command: str, resume: bool = False,
                 kind: str = "train") -> Iterator[Tracker | None]:
    """The MLflow run of a training (``kind`` "train") or an evaluation ("evaluate") in ``output_dir``, for the
    block's duration; None when the run is not tracked or this is not process 0. A resumed run continues the
    MLflow run its ``tracking.json`` names (on the server it names)."""
    from seg_ext import distributed

    if not enabled(cfg) or not distributed.is_main():
        yield None
        return
    uri = check(cfg)
    previous = _read_record(output_dir) if resume else None
    if previous is not None and previous.get("tracking_uri") not in (None, uri):
        logger.info("resuming: the run logs to %s, where it started (not %s)", previous["tracking_uri"], uri)
        uri = previous["tracking_uri"]
        check_store(uri)
    sweep = os.environ.get(SWEEP_ENV)
    name = output_dir.name
    if sweep:
        try:
            name = str(output_dir.resolve().relative_to(Path(sweep)))
        except ValueError:
            pass
    tags = {"mlflow.source.name": command or "seg_ext", "mlflow.source.type": "LOCAL", "kind": kind,
            "method": str(cfg["method"]), "model": str(cfg["model"]["name"]), **({"sweep": sweep} if sweep else {})}
    tracker = _open(cfg, uri, output_dir, name, tags, previous, os.environ.get(PARENT_ENV))
    with _ending(tracker):
        _first_calls(tracker, flatten(cfg), {"resumed": "true"} if previous else {})
        yield tracker


def run_placed(tracker: Tracker | None, device: Any, precision: str, world_size: int) -> None:
    """Tags known once the run is built: where it computes and how, over how many processes."""
    if tracker is not None:
        tracker.set_tags({"device": str(device), "precision": precision, "world_size": str(world_size)})


def run_finished(tracker: Tracker | None, output_dir: Path, summary: dict[str, Any], checkpoint: Path | None) -> None:
    """The run's end: its final metrics (``final/<split>/<metric>`` and the run's facts), its files and figures,
    and the model folder of ``checkpoint`` (a .pt file) as ``model/``. The run's work is done and in its folder
    by now: a failure here is a warning, not a failed run."""
    if tracker is None:
        return
    finals = numbers({split: summary[split] for split in ("val", "test") if isinstance(summary.get(split), dict)}, "final/")
    finals.update(numbers({k: summary[k] for k in ("train_seconds", "best_epoch", "parameters") if k in summary}))
    tracker.log_metrics(finals, int(summary.get("best_epoch") or summary.get("epochs") or 0))
    try:
        tracker.log_files(output_dir, RUN_FILES, ("*.png", "*.jpg"))
        if checkpoint is not None and checkpoint.is_file():
            from seg_ext.model_folder import export_folder

            with tempfile.TemporaryDirectory() as tmp:
                export_folder(checkpoint, Path(tmp) / "model")
                tracker.log_folder(Path(tmp) / "model", "model")
    except Exception as exc:
        logger.warning("MLflow at %s: the run's files did not all reach it (%s); %s has them", tracker.uri,
                       _first_line(exc), output_dir)


@contextmanager
def sweep_tracking(cfg: dict[str, Any], output_dir: Path, arguments: dict[str, Any],
                   engine: str) -> Iterator[tuple[Tracker | None, dict[str, str]]]:
    """The MLflow run of a sweep in ``output_dir`` (continued when the sweep runs again), and the environment its
    runs need to log as its children; ``(None, {})`` when the sweep's config is not tracked."""
    if not enabled(cfg):
        yield None, {}
        return
    uri = check(cfg)
    previous = _read_record(output_dir)
    if previous is not None and previous.get("tracking_uri") != uri:
        previous = None  # another server: a new sweep run there
    if engine == "ray" and _sqlite_path(uri) is not None:
        logger.warning("MLflow store %s is a file on this machine: runs on other nodes reach it only through a shared "
                       "filesystem (a tracking server is the usual way: --tracking-uri http://HOST:PORT)", uri)
    tags = {"mlflow.source.name": "tools/sweep.py", "kind": "sweep", "engine": engine}
    tracker = _open(cfg, uri, output_dir, output_dir.name, tags, previous)
    env = {PARENT_ENV: tracker.run_id, URI_ENV: uri, SWEEP_ENV: str(output_dir.resolve())}
    with _ending(tracker):
        _first_calls(tracker, flatten({"sweep": {k: v for k, v in arguments.items() if v not in (None, [], {})}}), {})
        yield tracker, env


def sweep_finished(tracker: Tracker | None, output_dir: Path, failed: int) -> None:
    """The sweep's files as artifacts, its comparison table as the run's description, how many runs failed."""
    if tracker is None:
        return
    comparison = output_dir / "comparison.md"
    tags = {"failed_runs": str(failed)}
    if comparison.is_file():
        tags["mlflow.note.content"] = comparison.read_text()[:8000]  # (MLflow's longest tag value)
    try:
        tracker.log_files(output_dir, SWEEP_FILES)
        tracker.set_tags(tags)
    except Exception as exc:
        logger.warning("MLflow at %s: the sweep's files did not all reach it (%s); %s has them", tracker.uri,
                       _first_line(exc), output_dir)
