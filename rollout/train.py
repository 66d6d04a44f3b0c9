"""Job entry point: ``python -m rollout.train --config F`` (== ``photocrafter train``), also ``ray job submit``'s.

Owns the run's lifecycle around the controller: resolving the run directory and name, starting a private
local Ray cluster or joining the one the job was submitted to, checking the resource plan before any actor
exists (against the config here, against the live nodes when the components start), ending with a clear
message and exit status 1 when the plan cannot be placed or a learner is lost, turning SIGTERM/SIGINT
(``ray job stop``, Ctrl-C) into "finish the step, write a final checkpoint, exit", and resuming from a run
directory. The iteration itself lives in ``rollout.controller``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from rollout.config import TrainConfig, dump_config, in_ray_job_working_dir_copy, load_config_or_report, run_home
from rollout.env import apply_runtime_defaults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (default: configs/embedded.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override one config field, e.g. --set trainer.steps=20 (repeatable)")


def run(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config, args.overrides)
    if config is None:
        return 1
    return train(config, config_source=args.config or "configs/embedded.yaml")


def with_absolute_run_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with ``trainer.output_dir`` and a relative sqlite ``tracking.mlflow_uri`` made absolute under
    :func:`rollout.config.run_home`, so the run, its resume and its MLflow history share one place."""
    home = run_home()
    output_dir = (home / Path(config.trainer.output_dir).expanduser()).resolve()
    uri = config.tracking.mlflow_uri.strip()
    database = uri.removeprefix("sqlite:///")
    if uri.startswith("sqlite:///") and database not in ("", ":memory:") and not database.startswith("/"):
        uri = f"sqlite:///{(home / database).resolve()}"
    return config.model_copy(update={
        "trainer": config.trainer.model_copy(update={"output_dir": str(output_dir)}),
        "tracking": config.tracking.model_copy(update={"mlflow_uri": uri}),
    })


def new_run_dir(config: TrainConfig, config_source: str) -> tuple[Path, str]:
    name = config.trainer.run_name or f"{Path(config_source).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.trainer.output_dir).expanduser().resolve() / name
    if (run_dir / "run.json").exists():
        raise FileExistsError(f"{run_dir} already holds a run; use `photocrafter resume --run {run_dir}` or "
                              f"choose another trainer.run_name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, name


def init_ray(config: TrainConfig, namespace: str) -> None:
    """Start a private local cluster (``cluster.address: local``) or join an existing one."""
    import ray

    if ray.is_initialized():
        return
    # Ray's job runner sets RAY_ADDRESS for submitted jobs: join that cluster whatever the config says.
    address = os.environ.get("RAY_ADDRESS") or config.cluster.address
    if address == "local":
        kwargs = dict(num_cpus=config.cluster.num_cpus, num_gpus=config.cluster.num_gpus,
                      dashboard_host=config.cluster.dashboard_host, include_dashboard=True)
        if config.cluster.metrics_export_port:
            kwargs["_metrics_export_port"] = config.cluster.metrics_export_port
        ray.init(address="local", namespace=namespace, log_to_driver=True, **kwargs)
    else:
        ray.init(address=address, namespace=namespace, log_to_driver=True)


class StopRequest:
    """Set by SIGTERM/SIGINT; the controller checks it between stages and stops after a final checkpoint."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        print(f"\n[photocrafter] {self.signal_name} received: finishing the step, writing a final checkpoint",
              file=sys.stderr, flush=True)


def train(config: TrainConfig, config_source: str = "configs/embedded.yaml", resume_dir: Path | None = None) -> int:
    """Run (or resume) a training run to completion or until stopped. Returns the process exit code."""
    from rollout.controller import Controller, LearnerLost
    from rollout.cluster.placement import plan_resources
    from rollout.cluster.preflight import PlanRefused

    apply_runtime_defaults()
    plan = plan_resources(config)
    if not plan.ok:
        for problem in plan.problems:
            print(f"{config_source}: {problem}", file=sys.stderr)
        return 1
    config = with_absolute_run_paths(config)
    if resume_dir is None:
        run_dir, name = new_run_dir(config, config_source)
        (run_dir / "config.yaml").write_text(dump_config(config))
        (run_dir / "run.json").write_text(json.dumps({"name": name, "config_source": config_source}))
    else:
        run_dir = resume_dir
        name = json.loads((run_dir / "run.json").read_text())["name"]
    namespace = config.cluster.namespace or name
    from rollout.tracking.run_tracker import resolve_tracking_uri

    print(f"[photocrafter] run {name}: {run_dir}", flush=True)
    print(f"[photocrafter] MLflow tracking: {resolve_tracking_uri(config.tracking.mlflow_uri, run_dir)}", flush=True)
    if in_ray_job_working_dir_copy():
        print(f"[photocrafter] this Ray job's working directory is a temporary copy; relative run paths resolve "
              f"under {run_home()} ($PHOTOCRAFTER_HOME); resume with `photocrafter resume --run {run_dir}`",
              flush=True)
    print(plan.format(), flush=True)
    init_ray(config, namespace)
    stop = StopRequest()
    stop.install()
    controller = Controller(config, run_dir=run_dir, run_name=name, stop=stop)
    try:
        controller.start(resume=resume_dir is not None)
        controller.run()
    except PlanRefused as refused:
        for line in refused.lines:
            print(f"{config_source}: {line}", file=sys.stderr)
        return 1
    except LearnerLost as lost:
        print(f"[photocrafter] run {name} failed: {lost}", file=sys.stderr, flush=True)
        return 1
    finally:
        controller.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    apply_runtime_defaults()
    parser = argparse.ArgumentParser(prog="python -m rollout.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
