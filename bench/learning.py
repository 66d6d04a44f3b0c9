"""Does the loop learn? Warm start once, coordinated RL over seeds, a compute-matched SFT control, held-out
evaluation through the runs, and docs/results.md written from what this command measured.

    .venv/bin/python -m bench.learning --seeds 3                # the measurement behind docs/results.md
    .venv/bin/python -m bench.learning --seeds 1 --rl-steps 2   # a quick look

Stages, each through the project's own commands (``photocrafter sft / train / resume / export / evaluate``, run
as subprocesses so a failure is the command's own exit status and message):

1. ``warmstart``: critic SFT then artist SFT (stage ``adapt``) on the training split → ``OUT/models/SFT-only``.
2. ``rl-seed<s>``: ``train`` from the warm start with ``trainer.seed=s``, a checkpoint every
   ``--checkpoint-every`` steps → ``OUT/runs/rl-seed<s>``; the run's per-step training metrics are read back
   from its MLflow database into the stage's record.
3. ``export-seed<s>``: every checkpoint as standalone models (EMA artist) → ``OUT/models/SFT+RL-seed<s>@<step>``.
4. ``sft-control``: SFT continued from the warm start for as many optimiser steps as RL took, with as many
   samples per step as an RL update trains on (critic: batch × G sequences; artist: batch × G × K edits) →
   ``OUT/models/SFT-control``. It answers "would the same number of updates of plain SFT have done as well?".
5. ``eval-<label>``: ``evaluate`` of one model directory on the held-out split → ``OUT/eval/<label>``: every
   final model on ``--eval-pairs`` pairs, the checkpoints between on ``--curve-pairs`` (learning curves).
6. ``report``: tables, comparisons (clustered by scene) and figures from the files above → ``OUT/report`` and,
   unless ``--no-docs``, docs/results.md and docs/results/*.png (``bench.learning_report``).

Resumable: a stage whose output exists (with its ``OUT/stages/<stage>.json`` record) is skipped; outputs are
written under a ``.partial`` name and renamed into place, and an interrupted RL run continues from its newest
checkpoint (``photocrafter resume``). Any failure stops the run with an exception naming the stage, the
command, its exit status and the last lines it printed (all of its output is in ``OUT/logs/<stage>.log``).
Run it alone on the machine: its times and results are a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.config import PROJECT_ROOT  # noqa: E402

CLI_MODULE = "rollout.commands.cli"
TRAINING_METRICS = ("reward/artist/total/mean", "reward/artist/photometric/mean", "reward/artist/compliance/mean",
                    "reward/critic/total/mean", "reward/critic/format/mean", "reward/critic/suggestion/mean",
                    "reward/critic/rank/mean", "learner/grpo/kl", "learner/grpo/loss", "learner/nft/loss",
                    "groups/artist/low_std_frac", "groups/artist/zero_variance_frac",
                    "groups/critic/zero_variance_frac", "time/stage/step_s")
"""Per-step metrics each RL stage keeps from its run's MLflow history (docs/metrics.md)."""


class StageFailed(RuntimeError):
    """A stage's command failed; the message names the stage, the command, its exit status and output tail."""


@dataclass(slots=True)
class Sizes:
    """Everything that sizes the measurement (the defaults fit about two hours on a quiet 2-core machine)."""

    seeds: int = 3
    num_train: int = 256
    num_eval: int = 48
    critic_sft_steps: int = 1000
    critic_sft_batch: int = 4
    critic_sft_lr: float = 3e-3
    artist_sft_steps: int = 100
    artist_sft_batch: int = 8
    artist_sft_lr: float = 1e-3
    rl_steps: int = 20
    rl_batch: int = 4
    checkpoint_every: int = 5
    control_steps: int | None = None
    """SFT-control optimiser steps (default: ``rl_steps``)."""
    eval_pairs: int | None = None
    """Held-out pairs the final models are evaluated on (default: all)."""
    curve_pairs: int | None = None
    """Held-out pairs the checkpoints between are evaluated on (default: ``eval_pairs``)."""
    samples: int = 1
    eval_seed: int = 0
    config: str | None = None
    common_set: list[str] = field(default_factory=list)
    """Config overrides for every command (models, data, artist and critic settings)."""
    rl_set: list[str] = field(default_factory=list)
    """Config overrides for the RL runs only."""


    def command_line(self) -> str:
        """The ``python -m bench.learning`` invocation that measures these sizes (defaults left out)."""
        defaults, parts = Sizes(), ["python -m bench.learning", f"--seeds {self.seeds}"]
        for name, value in asdict(self).items():
            if name in ("common_set", "rl_set"):
                parts += [f"--{'set' if name == 'common_set' else 'rl-set'} {v}" for v in value]
            elif name != "seeds" and value != getattr(defaults, name):
                parts.append(f"--{name.replace('_', '-')} {value}")
        return " ".join(parts)


class Bench:
    """The stages of one measurement under ``out``; each stage runs at most once across re-runs."""

    def __init__(self, out: Path, sizes: Sizes, *, log=print):
        self.out, self.sizes, self.log = out.resolve(), sizes, log
        self.started = time.perf_counter()
        for folder in ("stages", "logs", "models", "runs", "eval"):
            (self.out / folder).mkdir(parents=True, exist_ok=True)
        self._check_same_sizes()

    # ------------------------------------------------------------------------------------------------ plumbing
    def _check_same_sizes(self) -> None:
        """A re-run must measure what the first run measured: refuse other sizes in the same folder."""
        record = self.out / "stages" / "sizes.json"
        current = asdict(self.sizes)
        if record.is_file():
            stored = json.loads(record.read_text())
            changed = {k: (stored.get(k), v) for k, v in current.items() if k != "seeds" and stored.get(k) != v}
            if changed:
                listed = ", ".join(f"{k}: {a} → {b}" for k, (a, b) in changed.items())
                raise StageFailed(f"{self.out} holds a measurement with other sizes ({listed}); use another --out "
                                  f"or the same sizes")
            current["seeds"] = max(current["seeds"], stored.get("seeds", 0))
        _write_json(record, current)
        _write_json(self.out / "stages" / "command.json", {"command": Sizes(**current).command_line()})

    def common_overrides(self) -> list[str]:
        s = self.sizes
        sets = [f"data.num_train={s.num_train}", f"data.num_eval={s.num_eval}", *s.common_set]
        return [arg for value in sets for arg in ("--set", value)]

    def config_args(self) -> list[str]:
        return ["--config", self.sizes.config] if self.sizes.config else []

    def done(self, stage: str) -> dict | None:
        path = self.out / "stages" / f"{stage}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def stage(self, name: str, work) -> dict:
        """Run ``work()`` (returns the stage's record) unless ``name`` is done; time it and keep its record."""
        if (record := self.done(name)) is not None:
            self.log(f"[bench.learning] {name}: done earlier ({record['seconds']:.0f}s then), skipped")
            return record
        self.log(f"[bench.learning] {name}: start ({self.elapsed()} into this run)")
        began = time.perf_counter()
        record = dict(work() or {})
        record["seconds"] = time.perf_counter() - began
        record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        _write_json(self.out / "stages" / f"{name}.json", record)
        self.log(f"[bench.learning] {name}: done in {record['seconds']:.0f}s ({self.elapsed()} into this run)")
        return record

    def elapsed(self) -> str:
        seconds = int(time.perf_counter() - self.started)
        return f"{seconds // 60}m{seconds % 60:02d}s"

    def command(self, stage: str, *args: str) -> None:
        """``photocrafter ARGS`` as a subprocess with this tree on the path; its output goes to the console and to
        ``OUT/logs/<stage>.log``; a non-zero exit raises :class:`StageFailed`."""
        argv = [sys.executable, "-m", CLI_MODULE, *args]
        path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path,
               "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"), "PYTHONUNBUFFERED": "1"}
        tail: deque[str] = deque(maxlen=40)
        log_path = self.out / "logs" / f"{stage}.log"
        with open(log_path, "a") as log_file:
            log_file.write(f"$ {' '.join(argv)}\n")
            process = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, bufsize=1)
            assert process.stdout is not None
            for line in process.stdout:
                log_file.write(line)
                tail.append(line.rstrip("\n"))
                if _worth_showing(line):
                    self.log(f"    {line.rstrip()}")
            status = process.wait()
        if status != 0:
            raise StageFailed(f"stage {stage}: `photocrafter {' '.join(args)}` exited with status {status}; its last "
                              f"lines (all in {log_path}):\n" + "\n".join(tail))

    @staticmethod
    def build_dir(final: Path, make) -> Path:
        """``make(partial)`` fills a fresh ``.partial`` folder that is renamed to ``final`` once complete, so an
        existing ``final`` is always complete and is kept."""
        if final.exists():
            return final
        partial = final.with_name(f".{final.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        make(partial)
        os.replace(partial, final)
        return final

    # -------------------------------------------------------------------------------------------------- stages
    @property
    def warm_start(self) -> Path:
        return self.out / "models" / "SFT-only"

    def run_warm_start(self) -> dict:
        s = self.sizes

        def make(partial: Path) -> None:
            common = [*self.config_args(), *self.common_overrides(), "--out", str(partial), "--seed", "0"]
            self.command("warmstart", "sft", "--stage", "critic", "--steps", str(s.critic_sft_steps),
                         "--batch-size", str(s.critic_sft_batch), "--lr", str(s.critic_sft_lr), *common)
            self.command("warmstart", "sft", "--stage", "adapt", "--init-from", str(partial),
                         "--steps", str(s.artist_sft_steps), "--batch-size", str(s.artist_sft_batch),
                         "--lr", str(s.artist_sft_lr), *common)

        self.build_dir(self.warm_start, make)
        return {"warmstart": json.loads((self.warm_start / "warmstart.json").read_text())}

    def rl_run_dir(self, seed: int) -> Path:
        return self.out / "runs" / f"rl-seed{seed}"

    def run_rl(self, seed: int) -> dict:
        from rollout.checkpoint import latest_checkpoint

        s, run_dir, stage = self.sizes, self.rl_run_dir(seed), f"rl-seed{seed}"
        latest = latest_checkpoint(run_dir) if run_dir.is_dir() else None
        if latest is not None:
            self.log(f"[bench.learning] {stage}: continuing from {latest.path.name}")
            if latest.step < s.rl_steps:
                self.command(stage, "resume", "--run", str(run_dir))
        else:
            shutil.rmtree(run_dir, ignore_errors=True)  # a run that died before its first checkpoint starts over
            self.command(stage, "train", *self.config_args(), *self.common_overrides(), *self.rl_overrides(seed))
        steps = self.checkpoint_steps(seed)
        if not steps or steps[-1] != s.rl_steps:
            raise StageFailed(f"stage {stage}: {run_dir} ends at checkpoint {steps[-1] if steps else None}, "
                              f"not step {s.rl_steps}")
        return {"run_dir": str(run_dir), "checkpoints": steps, "training": training_history(run_dir)}

    def rl_overrides(self, seed: int) -> list[str]:
        s = self.sizes
        sets = [f"trainer.init_from={self.warm_start}", f"trainer.steps={s.rl_steps}",
                f"trainer.batch_size={s.rl_batch}", f"trainer.seed={seed}",
                f"trainer.checkpoint_every={s.checkpoint_every}", f"trainer.run_name=rl-seed{seed}", f"trainer.output_dir={self.out / 'runs'}",
                "tracking.sample_grid_every=0", *s.rl_set]
        return [arg for value in sets for arg in ("--set", value)]

    def checkpoints(self, seed: int) -> dict[int, Path]:
        """Step → directory of every complete checkpoint of the seed's run."""
        from rollout.checkpoint import verify_checkpoint

        found = {}
        for path in sorted((self.rl_run_dir(seed) / "checkpoints").glob("step_*")):
            try:
                found[verify_checkpoint(path).step] = path
            except (ValueError, OSError):
                continue  # a checkpoint cut short by a crash is not one
        return dict(sorted(found.items()))

    def checkpoint_steps(self, seed: int) -> list[int]:
        return list(self.checkpoints(seed))

    def model_label(self, seed: int, step: int) -> str:
        return f"SFT+RL-seed{seed}" if step == self.sizes.rl_steps else f"SFT+RL-seed{seed}@{step}"

    def run_exports(self, seed: int) -> dict:
        exported = {}
        for step, checkpoint in self.checkpoints(seed).items():
            label = self.model_label(seed, step)
            final = self.out / "models" / label

            def make(partial: Path, checkpoint=checkpoint) -> None:
                self.command(f"export-seed{seed}", "export", str(checkpoint), "--out", str(partial))
            self.build_dir(final, make)
            exported[label] = {"step": step, "dir": str(final)}
        return {"models": exported}

    def control_batches(self) -> tuple[int, int, int]:
        """(steps, critic batch, artist batch) of the SFT control: RL's optimiser steps and samples per step."""
        from rollout.config import load_config

        s = self.sizes
        config = load_config(s.config, [*s.common_set, *s.rl_set])
        group, edits = config.critic.group_size, config.artist.edits_per_critique
        return s.control_steps or s.rl_steps, s.rl_batch * group, s.rl_batch * group * edits

    def run_control(self) -> dict:
        s = self.sizes
        steps, critic_batch, artist_batch = self.control_batches()
        final = self.out / "models" / "SFT-control"

        def make(partial: Path) -> None:
            # Both models continue from the warm start: the critic first, then the warm start's artist conditioned
            # on the continued critic (sft writes no model into the folder it loads it from, hence `pair`).
            common = [*self.config_args(), *self.common_overrides(), "--out", str(partial), "--seed", "1"]
            self.command("sft-control", "sft", "--stage", "critic", "--init-from", str(self.warm_start),
                         "--steps", str(steps), "--batch-size", str(critic_batch), "--lr", str(s.critic_sft_lr),
                         *common)
            pair = partial.with_name(partial.name + "-pair")
            shutil.rmtree(pair, ignore_errors=True)
            shutil.copytree(partial / "critic", pair / "critic")
            shutil.copytree(self.warm_start / "artist", pair / "artist")
            self.command("sft-control", "sft", "--stage", "adapt", "--init-from", str(pair), "--steps", str(steps),
                         "--batch-size", str(artist_batch), "--lr", str(s.artist_sft_lr), *common)
            shutil.rmtree(pair)

        self.build_dir(final, make)
        return {"steps": steps, "critic_batch": critic_batch, "artist_batch": artist_batch,
                "warmstart": json.loads((final / "warmstart.json").read_text())}

    def run_evaluation(self, label: str, model_dir: Path, pairs: int | None) -> dict:
        s = self.sizes
        final = self.out / "eval" / label

        def make(partial: Path) -> None:
            limit = ["--max-pairs", str(pairs)] if pairs else []
            self.command(f"eval-{label}", "evaluate", *self.config_args(), *self.common_overrides(),
                         "--checkpoint", f"{label}={model_dir}", "--out", str(partial), "--no-mlflow",
                         "--seed", str(s.eval_seed), "--samples", str(s.samples), *limit)

        self.build_dir(final, make)
        return {"results": str(final / "results.json"), "model": str(model_dir), "pairs": pairs}

    def run(self, *, docs: Path | None) -> Path:
        """Every stage in order; returns the report folder."""
        s = self.sizes
        self.stage("warmstart", self.run_warm_start)
        self.stage("eval-SFT-only", lambda: self.run_evaluation("SFT-only", self.warm_start, s.eval_pairs))
        for seed in range(s.seeds):
            self.stage(f"rl-seed{seed}", lambda seed=seed: self.run_rl(seed))
            exports = self.stage(f"export-seed{seed}", lambda seed=seed: self.run_exports(seed))["models"]
            for label, model in exports.items():
                pairs = s.eval_pairs if model["step"] == s.rl_steps else (s.curve_pairs or s.eval_pairs)
                self.stage(f"eval-{label}", lambda label=label, model=model, pairs=pairs:
                           self.run_evaluation(label, Path(model["dir"]), pairs))
        self.stage("sft-control", self.run_control)
        self.stage("eval-SFT-control", lambda: self.run_evaluation("SFT-control", self.out / "models" / "SFT-control",
                                                                    s.eval_pairs))
        from bench.learning_report import write_report

        began = time.perf_counter()
        report = write_report(self.out, docs=docs)
        self.log(f"[bench.learning] report: {report} in {time.perf_counter() - began:.0f}s; whole run {self.elapsed()}")
        return report


def training_history(run_dir: Path) -> dict[str, dict[int, float]]:
    """The run's per-step :data:`TRAINING_METRICS` from its MLflow database (the newest value of a step logged
    twice, as a resumed run does)."""
    import mlflow

    database = run_dir.parent / "mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{database}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if r.info.run_name == run_dir.name]
    if not runs:
        raise StageFailed(f"{database}: no MLflow run named {run_dir.name}")
    # A run restarted from scratch leaves its first attempt behind; a resumed run keeps its MLflow run.
    latest = max(runs, key=lambda r: r.info.start_time)
    history = {}
    for key in TRAINING_METRICS:
        points = sorted(client.get_metric_history(latest.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        if points:
            history[key] = {int(m.step): float(m.value) for m in points}
    return history


def _worth_showing(line: str) -> bool:
    """Progress lines of the commands (steps, losses, rows), not their start-up chatter."""
    text = line.strip()
    return text.startswith(("step ", "sft ", "exported", "[photocrafter] checkpoint", "[photocrafter] run ")) or (
        re.match(r"^[^|\s]\S*: r_photo \d", text) is not None)


def _write_json(path: Path, record: dict) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(record, indent=1, default=str) + "\n")
    os.replace(partial, path)


def parse_args(argv: list[str] | None = None) -> tuple[Path, Sizes, Path | None]:
    defaults = Sizes()
    parser = argparse.ArgumentParser(prog="python -m bench.learning", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/learning", help="measurement folder (runs/learning); re-run to resume")
    parser.add_argument("--docs", default=str(PROJECT_ROOT / "docs" / "results.md"),
                        help="markdown to write the results into (its figures go to <folder>/results/)")
    parser.add_argument("--no-docs", action="store_true", help="write the report under OUT only")
    for name, value in asdict(defaults).items():
        if name in ("common_set", "rl_set"):
            continue
        flag = "--" + name.replace("_", "-")
        kind = type(value) if value is not None else int
        parser.add_argument(flag, type=str if name == "config" else kind, default=value, help=f"(default {value})")
    parser.add_argument("--set", dest="common_set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every command")
    parser.add_argument("--rl-set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the RL runs only")
    args = parser.parse_args(argv)
    sizes = Sizes(**{name: getattr(args, name) for name in asdict(defaults)})
    if sizes.seeds < 1 or sizes.rl_steps < 1 or sizes.checkpoint_every < 0:
        parser.error("--seeds and --rl-steps must be ≥ 1, --checkpoint-every ≥ 0")
    return Path(args.out), sizes, None if args.no_docs else Path(args.docs)


def main(argv: list[str] | None = None) -> int:
    from rollout.env import apply_runtime_defaults

    apply_runtime_defaults()
    out, sizes, docs = parse_args(argv)
    Bench(out, sizes).run(docs=docs)
    return 0


if __name__ == "__main__":
    from rollout.commands.entry import run_main

    run_main(main, "bench.learning")
