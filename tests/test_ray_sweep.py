"""Sweeps on Ray (``tools/sweep.py --engine ray``), with real processes: a Ray cluster of two nodes on this
machine (a head and a second node started with ``ray start``, 1 CPU each), sweeps of tiny runs spread over both,
the second node's raylet SIGKILLed while a trial runs on it, and an Optuna search with ASHA. Without Ray
installed (``pip install '.[cluster]'``) these tests skip, saying so; the checks of ``--space`` run in the fast
tier.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, call_tool, free_port, process, processes

try:
    import ray  # noqa: F401
    import optuna  # noqa: F401

    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False

needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray Tune and Optuna are not installed (pip install '.[cluster]')")
TINY = ["data.image_size=[64,64]", "data.batch_size=4", "data.num_workers=0", "model.base_width=4", "model.depth=2",
        "report.num_overlays=0", "report.num_worst=1", "train.threads=1"]
RAY_BIN = Path(sys.executable).parent / "ray"
# no usage reports; no token authentication (Ray 2.60 turns it on by default and writes ~/.ray/auth_token, which
# every process of a cluster must then share): the test cluster listens on 127.0.0.1 only
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


@pytest.fixture(autouse=True)
def _ray_env(monkeypatch):
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)


class Cluster:
    """A head and a second node on this machine, each with 1 CPU; stopped by killing exactly its own processes
    (``ray stop`` would stop every Ray on the machine)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port, self.node2_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        env = {**os.environ, **RAY_ENV}
        common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        subprocess.run([str(RAY_BIN), "start", "--head", f"--port={self.port}", f"--temp-dir={tmp}", "--include-dashboard=false",
                        *common], check=True, capture_output=True, env=env, timeout=120)
        subprocess.run([str(RAY_BIN), "start", f"--address={self.address}", f"--node-manager-port={self.node2_port}", *common],
                       check=True, capture_output=True, env=env, timeout=120)
        probe = ("import json, ray; ray.init(address='%s', log_to_driver=False); "
                 "print(json.dumps([(n['NodeID'], n['NodeManagerPort'], n['Alive']) for n in ray.nodes()]))" % self.address)
        for _ in range(60):
            out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
            nodes = [n for n in json.loads(out.stdout.strip().splitlines()[-1]) if n[2]] if out.returncode == 0 else []
            if len(nodes) == 2:
                break
            time.sleep(1)
        assert len(nodes) == 2, out.stderr[-2000:]
        self.head_id = next(n[0] for n in nodes if n[1] != self.node2_port)
        self.node2_id = next(n[0] for n in nodes if n[1] == self.node2_port)

    def pids(self, *markers: str) -> list[int]:
        return [pid for pid, (_, _, cmdline) in processes().items()
                if any(m in cmdline for m in markers) and pid != os.getpid()]

    def raylet_of_node2(self) -> int:
        pids = [p for p in self.pids(f"--node_manager_port={self.node2_port}") if "raylet" in Path(f"/proc/{p}/comm").read_text()]
        assert len(pids) == 1, pids
        return pids[0]

    def stop(self) -> None:
        """SIGKILL the cluster's processes (those naming its session folder or port) and their descendants."""
        own = set(self.pids(str(self.tmp), f"127.0.0.1:{self.port}", f"--gcs_server_port={self.port}"))
        parents = {pid: parent for pid, (_, parent, _) in processes().items()}
        grew = True
        while grew:
            children = {pid for pid, parent in parents.items() if parent in own} - own
            grew = bool(children)
            own |= children
        for pid in own - {os.getpid()}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not HAVE_RAY:
        pytest.skip("Ray Tune and Optuna are not installed (pip install '.[cluster]')")
    c = Cluster(tmp_path_factory.mktemp("ray"))
    yield c
    c.stop()


def _sweep(out: Path, root: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **RAY_ENV}
    return subprocess.Popen([sys.executable, str(ROOT / "tools" / "sweep.py"), "--data-root", str(root), "--output-dir",
                             str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


# 4 tiny runs, long enough (6 epochs) for a node to be lost while one of them trains
GRID = ["--grid", "train.lr=0.003,0.01", "--seeds", "0", "1", "--opts", *TINY, "train.epochs=6"]


@pytest.fixture(scope="module")
def local_sweep(scenes_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "sweep"
    proc = _sweep(out, scenes_root, *GRID, "--jobs", "2")
    assert proc.wait(timeout=600) == 0, proc.stdout.read()
    return out


def _numbers(out: Path) -> dict[str, dict]:
    """comparison.json's numbers per setting (mean, std and n of every metric; the training time left out)."""
    data = json.loads((out / "comparison.json").read_text())

    def clean(v: float) -> float | None:
        return None if v != v else v  # NaN (a std of one run) compares equal as None

    return {json.dumps(s["values"], sort_keys=True): {k: (clean(v["mean"]), clean(v["std"]), v["n"])
                                                      for k, v in s["stats"].items() if k != "train s"}
            for s in data["settings"]}


def _wait_for(condition, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)


def _epochs(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def _is_training(pid: int) -> bool:
    """Whether ``pid`` is a training tool itself (not the supervisor whose arguments name it too)."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return len(args) > 1 and args[1].endswith(b"train_semantic.py")


def _left_behind(out: Path, grace: float = 3.0) -> list[str]:
    """The processes (runs, their loader workers, supervisors) whose command line names the sweep folder ``out``,
    still there ``grace`` seconds after the sweep ended."""
    deadline = time.time() + grace
    while True:
        found = [f"{pid}: {cmdline[:200]}" for pid, (state, _, cmdline) in processes().items()
                 if state != "Z" and str(out) in cmdline]
        if not found or time.time() > deadline:
            return found
        time.sleep(0.2)


def _lock_free(run: Path) -> bool:
    import fcntl

    with open(run / ".lock", "a+") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.lockf(handle, fcntl.LOCK_UN)
        return True


@needs_ray
@pytest.mark.slow
def test_a_sweep_over_two_nodes_stopped_lost_a_node_and_equals_the_local_runner(cluster, local_sweep, scenes_root,
                                                                                tmp_path):
    """4 tiny runs spread over both nodes. SIGTERM to the sweep (a scheduler's) while runs train: exit 143, the
    running runs saved their position. The same command again: the stopped runs resume; the second node's raylet
    SIGKILLed while a trial trains there: the trial resumes from its last.pt on the head. comparison.json equals
    the local runner's on the same grid."""
    out = tmp_path / "sweep"
    command = [*GRID, "--engine", "ray", "--address", cluster.address]
    proc = _sweep(out, scenes_root, *command)
    stopped = pid = None
    deadline = time.time() + 300
    while pid is None and time.time() < deadline and proc.poll() is None:
        for run in out.glob("*/seed*"):
            pids = [p for p in cluster.pids(f"--output-dir {run} ") if _is_training(p)] if _epochs(run) >= 1 else []
            if len(pids) == 1:
                os.kill(pids[0], signal.SIGSTOP)  # held still (a tiny run would finish before the stop reaches it)
                if "training took" not in (run.parent / f"{run.name}.out").read_text():
                    stopped, pid = run, pids[0]  # held in the middle of its training
                    break
                os.kill(pids[0], signal.SIGCONT)
        time.sleep(0.1)
    assert pid is not None, proc.communicate()[0][-3000:] if proc.poll() is not None else "no run was caught training"
    supervisor = process(pid)[1]
    try:
        proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 60
        while Path(f"/proc/{supervisor}").exists() and time.time() < deadline:  # until Tune has ended the trial
            time.sleep(0.1)
    finally:
        os.kill(pid, signal.SIGCONT)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143 and "sweep stopped by SIGTERM" in log and "Tuner.restore" not in log, log[-3000:]
    deadline = time.time() + 60
    while not _lock_free(stopped) and time.time() < deadline:  # the run saves where it is and ends
        time.sleep(0.2)
    told = (stopped.parent / f"{stopped.name}.out").read_text()
    assert "stopped by SIGTERM" in told and "training took" not in told, told[-2000:]
    assert (stopped / "last.pt").is_file() and not (stopped / "metrics.json").is_file()
    assert _left_behind(out) == []  # every trial ended with the stopped sweep

    started = time.time()
    proc = _sweep(out, scenes_root, *command)  # the same command continues the sweep
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline and proc.poll() is None:
        for attempts in out.glob("*/seed*.ray.json"):
            last = json.loads(attempts.read_text())[-1]
            run = attempts.parent / attempts.name.split(".")[0]
            if (last["node_id"] == cluster.node2_id and last["started"] > started and _epochs(run) >= 2
                    and not (run / "metrics.json").is_file()):
                os.kill(cluster.raylet_of_node2(), signal.SIGKILL)  # the node is lost with its trial running
                killed = attempts
                break
        time.sleep(0.2)
    log = proc.communicate(timeout=600)[0]
    assert killed is not None, log[-3000:]
    assert proc.returncode == 0, log[-3000:]
    attempts = json.loads(killed.read_text())
    assert len(attempts) >= 2 and attempts[-1]["resumed"] and attempts[-1]["node_id"] == cluster.head_id
    assert "resumed from" in (stopped / "log.txt").read_text()
    ran_on = {a["node_id"] for p in out.glob("*/seed*.ray.json") for a in json.loads(p.read_text())}
    assert ran_on == {cluster.head_id, cluster.node2_id}  # both nodes ran trials
    numbers = _numbers(out)
    assert numbers == _numbers(local_sweep) and len(numbers) == 2  # as if nothing had happened
    assert all(stats["val mIoU"][2] == 2 for stats in numbers.values())
    assert _left_behind(out) == []


@needs_ray
@pytest.mark.slow
def test_optuna_search_stops_bad_trials_early_and_beats_the_worst_grid_point(scenes_root, tmp_path):
    """A learning-rate range with a bad end (1e-6 learns nothing in 4 epochs): ASHA stops at least one trial
    early, and the best found beats the worse point of a grid at the range's two ends, on val. With a loader
    worker per run, as real runs have: when the sweep has ended, no run, worker or supervisor is left (a worker
    forked during training once outlived its stopped trial for minutes)."""
    out = tmp_path / "search"
    opts = ["--opts", *[o for o in TINY if o != "train.threads=1"], "train.epochs=4"]  # threads: --cpus-per-run 1
    proc = _sweep(out, scenes_root, "--engine", "ray", "--search", "optuna", "--trials", "6", "--space",
                  "train.lr=loguniform:1e-6:0.3", "--seeds", "0", "--top", "1", *opts, "data.num_workers=1")
    log = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, log[-3000:]
    assert _left_behind(out) == []
    search = json.loads((out / "search.json").read_text())
    assert len(search["trials"]) == 6 and any(t["stopped_early"] for t in search["trials"]), search["trials"]
    grid = tmp_path / "grid"
    ref = _sweep(grid, scenes_root, "--grid", "train.lr=0.000001,0.3", "--seeds", "0", "--jobs", "2", *opts)
    assert ref.wait(timeout=600) == 0, ref.stdout.read()
    worst = min(s["stats"]["val mIoU"]["mean"] for s in json.loads((grid / "comparison.json").read_text())["settings"])
    best = max(t["best"] for t in search["trials"] if t["best"] is not None)
    assert best > worst
    final = json.loads((out / "comparison.json").read_text())["settings"]  # the best setting, run over the seeds
    from seg_ext.tasks.sweep import _slug

    assert len(final) == 1 and final[0]["runs"] == [str(out / f"train.lr={_slug(search['best'][0]['train.lr'])}" / "seed0")]
    threads = int(os.environ.get("OMP_NUM_THREADS") or 1)  # each run computes with the CPUs it holds
    assert json.loads((Path(final[0]["runs"][0]) / "metrics.json").read_text())["threads"] == threads


# ---- bad input (no cluster needed) -------------------------------------------------------------------------


@needs_ray
@pytest.mark.slow
def test_an_unreachable_address_is_one_sentence(scenes_root, tmp_path, capsys):
    port = free_port()  # nothing listens there
    start = time.time()
    assert call_tool("sweep", ["--engine", "ray", "--address", f"127.0.0.1:{port}", "--data-root", scenes_root,
                               "--output-dir", tmp_path / "s", "--opts", *TINY]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach a Ray cluster at 127.0.0.1:{port} within 10 s" in err and "Traceback" not in err
    assert time.time() - start < 30


@pytest.mark.parametrize("space, message", [
    (["train.lr=lognormal:1:2"], "does not parse"),
    (["train.lr=loguniform:0:1"], "both above 0"),
    (["train.lr=uniform:1"], "does not parse"),
    (["train.nonsense=uniform:0:1"], "train.nonsense"),
])
def test_a_bad_space_is_one_sentence(space, message, scenes_root, tmp_path, capsys):
    code = call_tool("sweep", ["--engine", "ray", "--search", "optuna", "--trials", "2", "--space", *space,
                               "--data-root", scenes_root, "--output-dir", tmp_path / "s"])
    err = capsys.readouterr().err
    if not HAVE_RAY:
        assert code == 2 and "pip install" in err
        return
    assert code == 2 and message in err and "Traceback" not in err


@needs_ray
@pytest.mark.slow
def test_no_gpu_and_another_engines_sweep_are_refused(scenes_root, tmp_path, capsys):
    gpus = torch.cuda.device_count()  # the refusal is asked of a machine that has fewer GPUs than requested
    assert call_tool("sweep", ["--engine", "ray", "--gpus-per-run", str(gpus + 1), "--data-root", scenes_root,
                               "--output-dir", tmp_path / "g", "--opts", *TINY]) == 2
    assert f"--gpus-per-run {gpus + 1} but no node of the Ray cluster has that many GPUs" in capsys.readouterr().err
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({"grid": {"train.lr": [0.1]}, "seeds": [0], "config": None,
                                                   "data_root": None, "method": None, "opts": [], "engine": "local"}))
    assert call_tool("sweep", ["--engine", "ray", "--data-root", scenes_root, "--output-dir", folder, "--opts", *TINY]) == 2
    assert "holds a sweep made with the local engine with other arguments" in capsys.readouterr().err


def test_the_install_sentence_names_the_extras_pins():
    """``--engine ray`` without Ray names the versions of requirements-cluster.txt (setup.py's extra reads it)."""
    from seg_ext.tasks.ray_sweep import INSTALL

    pins = [line.split("#")[0].strip() for line in (ROOT / "requirements-cluster.txt").read_text().splitlines()]
    assert [p for p in pins if p] == ["ray[tune]==2.60.0", "optuna==5.0.0"]
    assert all(p in INSTALL for p in pins if p)
