"""The run as a Ray job, following docs/quickstart.md: ``ray job submit`` of the default config to a local head
node, named actors visible to ``ray list actors``, ``ray job stop`` (SIGTERM) ending the run with a final
checkpoint, and ``photocrafter resume --run runs/<run>`` from the project continuing it with its checkpoints and
its MLflow history.

The head is started with ``ray start --head --block`` in its own process group and torn down by signalling that
group, never with ``ray stop`` (which would kill every Ray process on the machine). ``PHOTOCRAFTER_HOME`` is set
in the head's environment, as the quickstart describes, so the jobs' runs land in a temporary folder instead of
the user's ``~/photocrafter``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from rollout.config import PROJECT_ROOT
from run_sizes import PLUMBING, cli_sets

RAY = str(Path(sys.executable).with_name("ray"))
EXPECTED_ACTORS = {"critic-rollout-0", "artist-sampler-0", "reward-0", "reward-1", "critic-learner-0",
                   "artist-learner-0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    home = tmp_path_factory.mktemp("photocrafter-home")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PHOTOCRAFTER_HOME": str(home),
           # ray job stop: SIGTERM, then SIGKILL after this grace period; the run needs it to finish its step
           # and write the final checkpoint.
           "RAY_JOB_STOP_WAIT_TIME_S": "300",
           # The entrypoint's `python` must be this environment's interpreter.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    temp_dir = tempfile.mkdtemp(prefix="rjh", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs_port, dashboard_port = _free_port(), _free_port()
    # Every service port is chosen free: other Ray clusters on the machine (a developer's, the test session's
    # own local cluster) hold the defaults, and a clash silently disables the job agent.
    ports = [f"--{flag}={_free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "ray-client-server-port", "node-manager-port", "object-manager-port")]
    process = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={gcs_port}", f"--dashboard-port={dashboard_port}",
         "--dashboard-host=127.0.0.1", "--num-cpus=8", "--include-dashboard=true", f"--temp-dir={temp_dir}",
         "--disable-usage-stats", *ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.monotonic() + 180
    while True:
        probe = subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True)
        if probe.returncode == 0:
            break
        if time.monotonic() > deadline or process.poll() is not None:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"local Ray head did not come up: {probe.stderr.decode()[-500:]}")
        time.sleep(2)
    yield address, env, home
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def _ray(env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _submit(address: str, env: dict, *train_args: str) -> str:
    deadline = time.monotonic() + 120
    while True:  # the job agent comes up a little after the dashboard answers
        result = _ray(env, "job", "submit", "--address", address, "--working-dir", str(PROJECT_ROOT), "--no-wait",
                      "--", "python", "-m", "rollout.train", "--config", "configs/embedded.yaml", *train_args)
        if result.returncode == 0 or "No available agent" not in result.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert result.returncode == 0, result.stderr[-2000:]
    job_id = next(line.split("'")[1] for line in result.stdout.splitlines() if "submitted successfully" in line)
    return job_id


def _status(address: str, env: dict, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(address).get_job_status(job_id).value)


def _logs(address: str, env: dict, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address).get_job_logs(job_id)


def _run_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_job_submit_runs_and_names_its_actors(head):
    address, env, home = head
    name = _run_name("job")
    job_id = _submit(address, env, "--set", "trainer.steps=3", "--set", f"trainer.run_name={name}",
                     "--set", "tracking.sample_grid_every=0", "--set", "artist.resolution=32", *cli_sets(PLUMBING))
    seen: set[str] = set()
    deadline = time.monotonic() + 900
    while (status := _status(address, env, job_id)) in ("PENDING", "RUNNING"):
        listed = _ray(env, "list", "actors", "--address", address, "--format", "json", "--limit", "1000")
        if listed.returncode == 0:
            seen |= {a.get("name") for a in json.loads(listed.stdout or "[]") if a.get("state") == "ALIVE"}
        assert time.monotonic() < deadline, "job did not finish in time"
        time.sleep(3)
    logs = _logs(address, env, job_id)
    assert status == "SUCCEEDED", logs[-3000:]
    assert "step 3/3" in logs
    assert EXPECTED_ACTORS <= seen, f"named actors seen while running: {sorted(n for n in seen if n)}"
    # The run lives under PHOTOCRAFTER_HOME, not in Ray's per-job copy of the working directory, and says so.
    run_dir = home / "runs" / name
    assert (run_dir / "checkpoints" / "step_00000003" / "manifest.json").is_file()
    assert f"run {name}: {run_dir}" in logs
    assert f"MLflow tracking: sqlite:///{home / 'runs' / 'mlflow.db'}" in logs


def test_job_stop_writes_a_final_checkpoint_and_resume_continues_the_run(head):
    address, env, home = head
    name = _run_name("stopped")
    job_id = _submit(address, env, "--set", "trainer.steps=500", "--set", f"trainer.run_name={name}",
                     "--set", "tracking.sample_grid_every=0", "--set", "artist.resolution=32", *cli_sets(PLUMBING))
    deadline = time.monotonic() + 900
    while "step 1/500" not in _logs(address, env, job_id):
        assert _status(address, env, job_id) in ("PENDING", "RUNNING"), _logs(address, env, job_id)[-3000:]
        assert time.monotonic() < deadline, "the job never finished a step"
        time.sleep(3)
    stop = _ray(env, "job", "stop", "--address", address, job_id, timeout=400)
    assert stop.returncode == 0, stop.stderr[-2000:]
    while _status(address, env, job_id) not in ("STOPPED", "FAILED", "SUCCEEDED"):
        time.sleep(2)
    logs = _logs(address, env, job_id)
    assert "SIGTERM received" in logs
    run_dir = home / "runs" / name
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*/manifest.json"))
    assert checkpoints, f"no final checkpoint after ray job stop:\n{logs[-3000:]}"
    stopped = json.loads(checkpoints[-1].read_text())
    step = int(stopped["step"])
    assert 1 <= step < 500
    assert f"checkpoint step {step}" in logs

    # `photocrafter resume --run runs/<run-name>` from the project directory, as the quickstart says.
    resumed = subprocess.run(
        [sys.executable, "-m", "rollout.commands.cli", "resume", "--run", f"runs/{name}", "--set",
         f"trainer.steps={step + 1}"],
        cwd=PROJECT_ROOT, env={**env, "PYTHONPATH": str(PROJECT_ROOT)}, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert f"resumed from {checkpoints[-1].parent} at step {step}" in resumed.stdout
    final = json.loads((run_dir / "checkpoints" / f"step_{step + 1:08d}" / "manifest.json").read_text())
    assert final["mlflow_run_id"] == stopped["mlflow_run_id"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'runs' / 'mlflow.db'}")
    history = client.get_metric_history(stopped["mlflow_run_id"], "time/stage/step_s")
    assert sorted({m.step for m in history}) == list(range(1, step + 2))  # the job's steps, then the resumed one
    assert client.get_run(stopped["mlflow_run_id"]).info.status == "FINISHED"
