"""The run as a Ray job: ``ray job submit`` to a local head node, named actors visible to ``ray list actors``,
and ``ray job stop`` (SIGTERM) ending the run with a final checkpoint.

The head is started with ``ray start --head --block`` in its own process group and torn down by signalling that
group, never with ``ray stop`` (which would kill every Ray process on the machine).
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
from pathlib import Path

import pytest

from rollout.config import PROJECT_ROOT

RAY = str(Path(sys.executable).with_name("ray"))
EXPECTED_ACTORS = {"critic-rollout-0", "artist-sampler-0", "reward-0", "reward-1", "critic-learner", "artist-learner"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
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
    yield address, env
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


def test_job_submit_runs_and_names_its_actors(head, tmp_path):
    address, env = head
    job_id = _submit(address, env, "--set", "trainer.steps=3", "--set", f"trainer.output_dir={tmp_path}",
                     "--set", "trainer.run_name=job", "--set", "tracking.sample_grid_every=0",
                     "--set", "artist.resolution=32")
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
    assert (tmp_path / "job" / "checkpoints" / "step_00000003" / "manifest.json").is_file()


def test_job_stop_writes_a_final_checkpoint(head, tmp_path):
    address, env = head
    job_id = _submit(address, env, "--set", "trainer.steps=500", "--set", f"trainer.output_dir={tmp_path}",
                     "--set", "trainer.run_name=stopped", "--set", "tracking.sample_grid_every=0",
                     "--set", "artist.resolution=32")
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
    checkpoints = sorted((tmp_path / "stopped" / "checkpoints").glob("step_*/manifest.json"))
    assert checkpoints, f"no final checkpoint after ray job stop:\n{logs[-3000:]}"
    step = int(json.loads(checkpoints[-1].read_text())["step"])
    assert 1 <= step < 500
    assert f"checkpoint step {step}" in logs
