"""MLflow tracking (``train.tracking: mlflow``, ``--tracking-uri``), read back through MLflow's own client from a
real ``mlflow server`` on 127.0.0.1 with a SQLite store in a temporary folder: a run's params, metric histories,
final metrics, tags and artifacts (its model folder included); a killed run resumed into the same MLflow run,
each epoch once; sweeps of both engines as a run with their runs as children; a torchrun launch logged once.
Fast: the checks made before anything trains (an unreachable server, MLflow not installed, a bad setting) and
the tracker going on when the server fails mid-run. Without MLflow (``pip install '.[tracking]'``; ``make
test-all`` installs it) the tests that need it skip, saying so.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, MlflowServer, call_tool, free_port
from seg_ext.errors import ConfigError

try:
    import mlflow  # noqa: F401

    HAVE_MLFLOW = True
except ImportError:
    HAVE_MLFLOW = False

WHY = "MLflow is not installed (the tracking extra: pip install '.[tracking]'; make test-all installs it)"
needs_mlflow = pytest.mark.skipif(not HAVE_MLFLOW, reason=WHY)
TINY = ["data.image_size=[64,64]", "data.batch_size=4", "data.num_workers=0", "model.base_width=4", "model.depth=2",
        "report.num_overlays=0", "report.num_worst=1"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not HAVE_MLFLOW:
        pytest.skip(WHY)
    folder = tmp_path_factory.mktemp("mlflow")
    s = MlflowServer(folder, folder / "artifacts")
    yield s
    s.stop()


def _tool(name: str, args: list, timeout: float = 600, command: list[str] | None = None) -> subprocess.CompletedProcess:
    command = command or [sys.executable, str(ROOT / "tools" / f"{name}.py")]
    proc = subprocess.run([*command, *[str(a) for a in args]], capture_output=True, text=True, env=ENV, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _run_id(folder: Path) -> str:
    return json.loads((folder / "tracking.json").read_text())["run_id"]


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _epochs(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


# ---- against a real server (full tier) ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_logs_its_config_epochs_results_tags_and_model(server, scenes_root, tmp_path):
    out = tmp_path / "run"
    _tool("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--tracking-uri", server.uri, "--opts",
                             *TINY, "train.epochs=2"])
    client, run_id = server.client(), _run_id(out)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "seg_ext"
    # params: the whole config, flattened
    from seg_ext.config import read_yaml
    from seg_ext.tasks.tracking import flatten

    assert run.data.params == flatten(read_yaml(out / "config.yaml"))
    assert run.data.params["train.epochs"] == "2" and run.data.params["data.image_size"] == "[64, 64]"
    assert run.data.params["train.tracking_uri"] == server.uri
    # every epoch's record at its step, as metrics.jsonl has it; the final metrics as metrics.json has them
    records = _epochs(out)
    for key in ("train/loss", "val/mIoU", "val/loss", "lr"):
        assert _history(client, run_id, key) == [(r["epoch"], r[key]) for r in records], key
    final = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        for key in ("mIoU", "mAP", "pixel_acc"):
            assert run.data.metrics[f"final/{split}/{key}"] == final[split][key]
    assert run.data.metrics["best_epoch"] == final["best_epoch"]
    # where and how it ran
    tags = run.data.tags
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if commit:
        assert tags["git_commit"].startswith(commit) and tags["mlflow.source.git.commit"] == tags["git_commit"]
    assert tags["device"] == final["device"] and tags["precision"] == final["precision"] and tags["world_size"] == "1"
    assert tags["machine"] and tags["kind"] == "train" and tags["method"] == "semantic" and "mlflow.parentRunId" not in tags
    # the run's files and its model folder, which loads and holds best.pt's weights
    files = _artifacts(client, run_id)
    assert {"report.html", "report.md", "metrics.json", "metrics.jsonl", "config.yaml", "model/model.safetensors",
            "model/config.json", "model/README.md"} <= files, files
    assert {name for name in files if name.endswith(".png")} == {p.name for p in out.glob("*.png")}
    from mlflow.artifacts import download_artifacts
    from safetensors.torch import load_file

    folder = Path(download_artifacts(run_id=run_id, artifact_path="model", dst_path=str(tmp_path / "dl"),
                                     tracking_uri=server.uri))
    weights = load_file(str(folder / "model.safetensors"))
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert weights.keys() == ckpt["model"].keys() and all(torch.equal(weights[k], ckpt["model"][k]) for k in weights)
    from seg_ext.inference import Predictor

    assert Predictor.from_pretrained(folder).class_names == ckpt["class_names"]


@pytest.mark.slow
def test_a_killed_run_resumed_continues_its_mlflow_run_with_each_epoch_once(server, scenes_root, tmp_path):
    """SIGKILL after the second epoch's checkpoint (with 2 loader workers, as real runs have), then --resume: the
    same MLflow run (RUNNING while dead) goes on to FINISHED, and its history has each epoch once, equal to
    metrics.jsonl, whichever side of the kill the second epoch's metrics reached the server."""
    from test_resume_exact import SEMANTIC, _interrupt

    out = tmp_path / "run"
    args = ["--data-root", scenes_root, "--output-dir", out, "--tracking-uri", server.uri, "--opts", *SEMANTIC,
            "train.tracking_experiment=resumed"]
    killed = _interrupt("train_semantic", args, out, lambda state: state.get("epoch", 0) >= 2, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    client, run_id = server.client(), _run_id(out)
    assert client.get_run(run_id).info.status == "RUNNING"
    _tool("train_semantic", ["--output-dir", out, "--resume"])
    assert _run_id(out) == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    records = _epochs(out)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    for key in ("epoch", "train/loss", "val/mIoU"):
        assert _history(client, run_id, key) == [(r["epoch"], r[key] if key != "epoch" else r["epoch"]) for r in records]
    assert run.data.metrics["final/test/mIoU"] == json.loads((out / "metrics.json").read_text())["test"]["mIoU"]


@pytest.mark.slow
def test_a_server_lost_mid_run_costs_one_warning_and_its_epochs_follow_when_it_is_back(scenes_root, tmp_path):
    """The real path of a server that goes away while a run trains: the server is stopped after the first epoch,
    the run goes on with one warning, the server comes back on the same port and store while the run is held,
    and the run ends FINISHED with every epoch in MLflow once."""
    if not HAVE_MLFLOW:
        pytest.skip(WHY)
    from test_resume_exact import ENV as RUN_ENV, SEMANTIC, _command, _state

    folder, out = tmp_path / "mlflow", tmp_path / "run"
    folder.mkdir()
    server = MlflowServer(folder, folder / "artifacts")
    port = int(server.uri.rsplit(":", 1)[1])
    proc = subprocess.Popen(_command("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--tracking-uri",
                                                        server.uri, "--opts", *SEMANTIC]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=RUN_ENV, start_new_session=True)

    def hold_until(ready) -> None:  # look only while the run is stopped: no moment is missed
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)
            if ready():
                return  # (left stopped)
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.02)
        raise AssertionError("the run ended before the moment came")

    def warned() -> bool:
        log = out / "log.txt"
        return log.is_file() and "did not take the metrics" in log.read_text()

    try:
        hold_until(lambda: _state(out / "last.pt").get("epoch", 0) >= 1)
        server.stop()  # gone after the first epoch
        proc.send_signal(signal.SIGCONT)
        hold_until(warned)
        server = MlflowServer(folder, folder / "artifacts", port=port)  # back, while the run waits
        proc.send_signal(signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        assert stderr.count("did not take the metrics") == 1, stderr[-3000:]
        client, run_id = server.client(), _run_id(out)
        assert client.get_run(run_id).info.status == "FINISHED"
        records = _epochs(out)
        assert [r["epoch"] for r in records] == [1, 2, 3, 4]
        for key in ("epoch", "train/loss"):
            assert _history(client, run_id, key) == [(r["epoch"], r[key] if key != "epoch" else r["epoch"]) for r in records]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        server.stop()


def _check_sweep(client, out: Path, engine: str, settings: list[str]) -> None:
    """The sweep's MLflow run, FINISHED, with the comparison as its description and artifact, and its runs as
    children named by their folders, each with the metrics of its metrics.json."""
    parent_id = _run_id(out)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == out.name
    assert parent.data.tags["kind"] == "sweep" and parent.data.tags["engine"] == engine
    assert parent.data.tags["failed_runs"] == "0"
    assert parent.data.tags["mlflow.note.content"] == (out / "comparison.md").read_text()
    assert {"comparison.md", "comparison.json", "runs.json", "sweep.json"} <= _artifacts(client, parent_id)
    assert json.loads(parent.data.params["sweep.seeds"]) == [0]
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(c.info.run_name for c in children) == sorted(f"{s}/seed0" for s in settings)
    for child in children:
        folder = out / child.info.run_name
        assert child.info.status == "FINISHED" and _run_id(folder) == child.info.run_id
        assert child.data.metrics["final/test/mIoU"] == json.loads((folder / "metrics.json").read_text())["test"]["mIoU"]
        assert child.data.tags["sweep"] == str(out.resolve())


@pytest.mark.slow
def test_a_sweep_is_a_run_with_its_runs_as_children_and_continues_as_the_same(server, scenes_root, tmp_path):
    out = tmp_path / "sweep"
    args = ["--data-root", scenes_root, "--output-dir", out, "--grid", "train.lr=0.001,0.01", "--tracking-uri",
            server.uri, "--opts", *TINY, "train.epochs=1", "train.tracking_experiment=sweeps"]
    _tool("sweep", args)
    client = server.client()
    _check_sweep(client, out, "local", ["train.lr=0.001", "train.lr=0.01"])
    parent_id = _run_id(out)
    # the same command again: nothing new to train, the same sweep run, still two children
    _tool("sweep", args)
    assert _run_id(out) == parent_id
    _check_sweep(client, out, "local", ["train.lr=0.001", "train.lr=0.01"])
    experiment = client.get_run(parent_id).info.experiment_id
    assert len(client.search_runs([experiment])) == 3


@pytest.mark.slow
def test_a_ray_sweep_logs_its_runs_as_children_too(server, scenes_root, tmp_path):
    pytest.importorskip("ray", reason="Ray Tune is not installed (pip install '.[cluster]')")
    from test_ray_sweep import RAY_ENV

    out = tmp_path / "raysweep"
    env = {**ENV, **RAY_ENV}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "sweep.py"), "--engine", "ray", "--data-root",
                           str(scenes_root), "--output-dir", str(out), "--grid", "train.lr=0.001,0.01", "--tracking-uri",
                           server.uri, "--opts", *TINY, "train.epochs=1", "train.tracking_experiment=ray",
                           "train.threads=1"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    _check_sweep(server.client(), out, "ray", ["train.lr=0.001", "train.lr=0.01"])


@pytest.mark.slow
def test_under_torchrun_only_process_0_logs(server, scenes_root, tmp_path):
    out = tmp_path / "dist"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(ROOT / "tools" / "train_semantic.py")]
    _tool("", ["--data-root", scenes_root, "--output-dir", out, "--tracking-uri", server.uri, "--opts", *TINY,
               "train.epochs=2", "train.device=cpu", "train.tracking_experiment=torchrun"], command=torchrun)
    client, run_id = server.client(), _run_id(out)
    run = client.get_run(run_id)
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
    assert _history(client, run_id, "epoch") == [(1, 1.0), (2, 2.0)]


@pytest.mark.slow
def test_a_run_without_tracking_never_imports_mlflow(scenes_root, tmp_path):
    """The package without the extra runs as before: a training that does not ask for tracking, in a process of its
    own, ends without MLflow among its modules (installed or not)."""
    tool = ROOT / "tools" / "train_semantic.py"
    argv = [str(tool), "--data-root", str(scenes_root), "--output-dir", str(tmp_path / "run"), "--opts", *TINY,
            "train.epochs=1"]
    code = ("import runpy, sys\n"
            f"sys.argv = {argv!r}\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('mlflow imported:', 'mlflow' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mlflow imported: False" in proc.stdout and not (tmp_path / "run" / "tracking.json").exists()


# ---- before anything trains, and while it does (fast tier) -------------------------------------------------


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@needs_mlflow
def test_an_unreachable_server_is_one_sentence_before_anything_trains(scenes_root, tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code = call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", tmp_path / "run", "--tracking-uri",
                                        uri, "--opts", *TINY, "train.epochs=1"])
    line = _one_error(capsys)
    assert code == 2 and f"MLflow tracking server {uri} cannot be reached" in line and "train.tracking: none" in line
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "config.yaml").exists()
    # a sweep says so before its first run starts
    code = call_tool("sweep", ["--data-root", scenes_root, "--output-dir", tmp_path / "sweep", "--grid",
                               "train.lr=0.001,0.01", "--tracking-uri", uri, "--opts", *TINY, "train.epochs=1"])
    assert code == 2 and "cannot be reached" in _one_error(capsys)
    assert not list((tmp_path / "sweep").glob("*/seed0.out"))


def test_without_mlflow_a_tracked_run_says_how_to_install_it(scenes_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: importing it fails
    code = call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", tmp_path / "run", "--opts", *TINY,
                                        "train.tracking=mlflow"])
    line = _one_error(capsys)
    assert code == 2 and "mlflow package cannot be imported" in line and "pip install -e '.[tracking]'" in line
    assert not (tmp_path / "run" / "last.pt").exists()


def test_tracking_settings_are_checked():
    from seg_ext.methods import method_config

    with pytest.raises(ConfigError, match=r"'train\.tracking' is 'wandb'.*none, mlflow"):
        method_config("semantic", None, ["train.tracking=wandb"])
    with pytest.raises(ConfigError, match=r"'train\.tracking_experiment'"):
        method_config("semantic", None, ["train.tracking_experiment=''"])


def test_a_folder_or_a_relative_sqlite_path_is_an_absolute_store(tmp_path, monkeypatch):
    from seg_ext.tasks.tracking import URI_ENV, resolve_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(URI_ENV, raising=False)
    assert resolve_uri(None) == f"sqlite:///{tmp_path / 'runs' / 'mlflow' / 'mlflow.db'}"
    assert resolve_uri("store") == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    assert resolve_uri("sqlite:///x.db") == f"sqlite:///{tmp_path / 'x.db'}"
    assert resolve_uri("http://host:5000/") == "http://host:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_uri(None) == "http://env:5000" and resolve_uri("http://mine:1") == "http://mine:1"
    monkeypatch.setenv(URI_ENV, "http://sweep:5000")  # a sweep's runs log where the sweep does
    assert resolve_uri("http://mine:1") == "http://sweep:5000"


def test_flattened_params_and_metric_names():
    from seg_ext.tasks.tracking import flatten, numbers

    assert flatten({"train": {"lr": 0.001, "grad_clip": None, "amp": "auto"}, "data": {"image_size": [64, 64]},
                    "model": {}}) == {"train.lr": "0.001", "train.grad_clip": "null", "train.amp": "auto",
                                      "data.image_size": "[64, 64]", "model": "{}"}
    assert numbers({"mIoU": 50.5, "IoU": {"sky (blue)": 1, "road": float("nan")}, "ok": True, "name": "x"},
                   "final/test/") == {"final/test/mIoU": 50.5, "final/test/IoU/sky _blue_": 1.0}


@needs_mlflow
def test_a_server_failing_mid_run_costs_a_warning_and_the_values_follow_later(caplog):
    """The tracker's side of a server lost while training (MLflow's client raising): the run goes on with one
    warning, and what failed is sent with the next call that succeeds."""
    from seg_ext.tasks.tracking import Tracker

    class Client:  # MlflowClient's log_batch, down for two calls
        def __init__(self):
            self.calls, self.logged = 0, []

        def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
            self.calls += 1
            if self.calls <= 2:
                raise ConnectionError("connection refused")
            self.logged += [(m.key, m.step, m.value) for m in metrics]

        def set_terminated(self, run_id, status):
            self.status = status

    client = Client()
    tracker = Tracker(client, "http://host:1", "run", "0")
    with caplog.at_level(logging.WARNING, logger="seg_ext.tasks.tracking"):
        tracker.log_epoch({"epoch": 1, "train/loss": 0.5})
        tracker.log_epoch({"epoch": 2, "train/loss": 0.4})
        tracker.log_epoch({"epoch": 3, "train/loss": 0.3})
    assert len([r for r in caplog.records if "did not take the metrics" in r.message]) == 1
    assert sorted(x for x in client.logged if x[0] == "train/loss") == [("train/loss", 1, 0.5), ("train/loss", 2, 0.4),
                                                                        ("train/loss", 3, 0.3)]
    tracker.end("FINISHED")
    assert client.status == "FINISHED" and not tracker.pending


def test_a_tracked_sweep_resumes_its_untracked_runs_into_mlflow(tmp_path):
    """A sweep run again with --tracking-uri resumes a run begun without it: the resumed run keeps its saved config,
    and its command turns tracking on (a run's --opts may change that at resume)."""
    from seg_ext.tasks.sweep import PlannedRun, run_command

    run = PlannedRun({"train.lr": 0.01}, 0, tmp_path / "seed0")
    run.folder.mkdir()
    (run.folder / "last.pt").write_bytes(b"")
    opts = ["train.epochs=1", "train.tracking=mlflow", "train.tracking_uri=http://host:5000"]
    assert run_command(run, Path("tool.py"), None, None, None, opts)[-5:] == [
        str(run.folder), "--resume", "--opts", "train.tracking=mlflow", "train.tracking_uri=http://host:5000"]
    assert run_command(run, Path("tool.py"), None, None, None, ["train.epochs=1"])[-1] == "--resume"
