"""Ray metrics: the controller's metric dict becomes photocrafter_* series on the metrics export port."""

from __future__ import annotations

import re
import time
import urllib.request
import uuid


from rollout.config import PROJECT_ROOT
from rollout.tracking.ray_metrics import PREFIX, STAGE_SECONDS_BOUNDARIES, MetricUpdate, RayMetrics, plan_updates

_PROM_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

STEP = {
    "count/edits": 8.0, "count/critiques": 4.0, "count/tokens": 192.0,
    "data/rejected/load": 2.0, "data/rejected/reward": 0.0,
    "reward/critic/total/mean": 0.25, "reward/artist/total/mean": 0.625,
    "policy/critic_version": 3.0, "policy/artist_version": 2.0,
    "time/stage/critic_rollout_s": 1.5, "time/stage/step_s": 4.0, "time/stage/sync_s": float("nan"),
    "learner/grpo/kl": 0.001,
}


def test_plan_maps_counts_gauges_and_stage_times():
    updates = set(plan_updates(STEP))
    assert updates == {
        MetricUpdate("edits_total", "inc", 8.0), MetricUpdate("critiques_total", "inc", 4.0),
        MetricUpdate("tokens_total", "inc", 192.0),
        MetricUpdate("rejected_records_total", "inc", 2.0, (("stage", "load"),)),
        MetricUpdate("reward_mean", "set", 0.25, (("model", "critic"),)),
        MetricUpdate("reward_mean", "set", 0.625, (("model", "artist"),)),
        MetricUpdate("policy_version", "set", 3.0, (("model", "critic"),)),
        MetricUpdate("policy_version", "set", 2.0, (("model", "artist"),)),
        MetricUpdate("stage_seconds", "observe", 1.5, (("stage", "critic_rollout"),)),
        MetricUpdate("stage_seconds", "observe", 4.0, (("stage", "step"),)),
    }
    assert plan_updates({}) == []


def test_rejected_totals_become_counter_increments():
    assert plan_updates({"data/rejected": 5}) == [
        MetricUpdate("rejected_records_total", "inc", 5.0, (("stage", "unspecified"),))]
    # The controller reports run totals; the counter moves by what changed since the last step.
    assert plan_updates({"data/rejected": 5}, {"unspecified": 5.0}) == []
    assert plan_updates({"data/rejected/load": 7, "data/rejected/reward": 1},
                        {"load": 5.0, "reward": 1.0}) == [
        MetricUpdate("rejected_records_total", "inc", 2.0, (("stage", "load"),))]


def test_counts_fall_back_to_rate_times_stage_time():
    updates = plan_updates({"perf/edits_per_s": 2.5, "time/stage/artist_sample_s": 3.2,
                            "perf/tokens_per_s": 100.0, "time/stage/critic_rollout_s": float("nan")})
    assert MetricUpdate("edits_total", "inc", 8.0) in updates
    assert not any(u.metric == "tokens_total" for u in updates)
    assert MetricUpdate("edits_total", "inc", 3.0) in plan_updates(
        {"count/edits": 3, "perf/edits_per_s": 2.5, "time/stage/artist_sample_s": 3.2})
    assert list(STAGE_SECONDS_BOUNDARIES) == sorted(STAGE_SECONDS_BOUNDARIES)


def test_metrics_need_a_ray_driver():
    # In a fresh interpreter: this session may already hold a Ray driver.
    import subprocess
    import sys

    code = ("from rollout.tracking.ray_metrics import RayMetrics\n"
            "try:\n    RayMetrics('x')\nexcept RuntimeError as exc:\n    print('refused:', exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=PROJECT_ROOT)
    assert "refused:" in result.stdout and "ray.init" in result.stdout, result.stdout + result.stderr


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_recorded_step_appears_on_the_metrics_export_port(ray_local):
    run = f"metrics-test-{uuid.uuid4().hex[:8]}"
    metrics = RayMetrics(run)
    assert all(_PROM_NAME.match(m._name) and m._name.startswith(PREFIX) for m in metrics._metrics.values())
    assert metrics.record_step(STEP) == 10
    assert metrics.record_step({"count/edits": 4.0, "time/stage/critic_rollout_s": 0.02,
                                "data/rejected/load": 5.0}) == 3

    port = ray_local.nodes()[0]["MetricsExportPort"]
    wanted = {
        "ray_photocrafter_edits_total": "12.0", "ray_photocrafter_tokens_total": "192.0",
        "ray_photocrafter_critiques_total": "4.0", "ray_photocrafter_rejected_records_total": "5.0",
        "ray_photocrafter_reward_mean": None, "ray_photocrafter_policy_version": None,
        "ray_photocrafter_stage_seconds_count": None,
    }
    deadline = time.monotonic() + 45
    found: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        try:
            body = _scrape(port)
        except OSError:
            body = ""
        found = {}
        for line in body.splitlines():
            if f'run="{run}"' in line:
                found.setdefault(line.split("{", 1)[0], []).append(line)
        if set(wanted) <= set(found) and found["ray_photocrafter_edits_total"][0].endswith(" 12.0"):
            break
        time.sleep(2)
    missing = set(wanted) - set(found)
    assert not missing, f"not exported on port {port} within 45 s: {sorted(missing)}"
    for name, value in wanted.items():
        if value is not None:
            assert any(line.endswith(f" {value}") for line in found[name]), found[name]
    assert any('stage="load"' in line for line in found["ray_photocrafter_rejected_records_total"])
    rewards = found["ray_photocrafter_reward_mean"]
    assert any('model="artist"' in line and line.endswith(" 0.625") for line in rewards), rewards
    counts = {re.search(r'stage="(\w+)"', line).group(1): line.rsplit(" ", 1)[1]
              for line in found["ray_photocrafter_stage_seconds_count"]}
    assert counts == {"critic_rollout": "2.0", "step": "1.0"}
