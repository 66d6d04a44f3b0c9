"""``photocrafter evaluate``: every method's metrics on a held-out set, in tables, on disk and in MLflow.

Owns the command-line surface and the loop over methods. Rows: ``identity`` (the input unchanged),
``auto-retouch`` (grey-pixel white balance, auto contrast and exposure on L*), ``oracle`` (the known inverse of
each synthetic degradation: the upper bound) and one row per ``--checkpoint LABEL=DIR`` (a directory holding
``critic/`` and ``artist/``, e.g. a warm start as ``SFT-only`` and an RL result as ``SFT+RL``; a bare ``DIR`` is
labelled by its name). For each model row and held-out pair (``rollout.pipeline``):

* the critic's greedy critique, scored on its own (format, score, r_sugg: no artist involved);
* the artist's edit conditioned on that critique (end to end);
* the artist's edit conditioned on the pair's annotated, correct critique (teacher-forced through the same
  critic: the artist measured apart from what the critic wrote).

The artist is the deterministic sampler (no exploration). ``--samples 1`` (the default) is one stated noise draw
per pair, seed ``--seed`` + pair index; ``--samples N`` takes N distinct seeds per pair (seed + pair index +
draw × pairs), averages them per pair (a pair counts once in every statistic) and reports how far apart the
draws' edits are. Intervals are bootstrapped over scenes (the pairs' source photos), never over pairs.
Metrics and tables come from ``rollout.evaluation``. Writes ``results.json`` (every method's per-pair records),
``table.md``, ``metrics.png`` and ``samples.png`` under ``--out`` and logs them to MLflow. ``--compare
PREFIX=LABEL`` treats the rows whose label starts with PREFIX (e.g. one per RL seed) as repeats of one recipe
and adds ``comparison.md``: their mean ± std and the paired difference of their per-pair mean against row LABEL.
Photos are read with ``rollout.records.images`` (the rules of docs/data.md); a held-out record whose photo cannot be
read is skipped with one line naming the file and what is wrong, and listed in ``results.json``.
Exit status: 0 evaluated, 1 no held-out photo could be read, 2 unusable arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", action="append", default=[], metavar="[LABEL=]DIR",
                        help="model directory with critic/ and artist/ (repeatable)")
    parser.add_argument("--data", metavar="MANIFEST", help="held-out manifest (default: the config's eval split)")
    parser.add_argument("--max-pairs", type=int, metavar="N", help="only the manifest's first N pairs")
    parser.add_argument("--config", metavar="YAML", help="run config (default: configs/embedded.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--out", default="runs/evaluation", metavar="DIR", help="output folder (runs/evaluation)")
    parser.add_argument("--seed", type=int, default=0,
                        help="artist noise seed (pair i, draw j: seed + i + j·pairs)")
    parser.add_argument("--samples", type=int, default=1, metavar="N",
                        help="artist noise draws per pair, averaged per pair (1: one stated deterministic draw)")
    parser.add_argument("--compare", action="append", default=[], metavar="PREFIX=LABEL",
                        help="rows whose label starts with PREFIX (e.g. RL seeds) against row LABEL: mean ± std "
                             "and the paired difference with its interval over scenes (repeatable)")
    parser.add_argument("--no-mlflow", action="store_true", help="write files only")


def _parse_checkpoint(value: str) -> tuple[str, Path]:
    from rollout.models import checkpoint_model_dirs

    label, _, path = value.rpartition("=")
    path_obj = Path(path)
    checkpoint_model_dirs(path_obj, "--checkpoint")
    return label or path_obj.name, path_obj


def _parse_comparison(value: str) -> tuple[str, str]:
    prefix, separator, reference = value.partition("=")
    if not separator or not prefix or not reference:
        raise ValueError(f"--compare {value}: expected PREFIX=LABEL, e.g. SFT+RL=SFT-only")
    return prefix, reference


def noise_seeds(base: int, pair: int, pairs: int, samples: int) -> list[int]:
    """The artist noise seeds of pair ``pair``: distinct across every (pair, draw) of one evaluation."""
    return [base + pair + draw * pairs for draw in range(samples)]


class _Measurer:
    """Turns outputs of one method on every pair into :class:`PairResult` records (LPIPS batched)."""

    def __init__(self, tasks, lpips, attribute_resolution: int):
        from learner.sft import degradation_severity
        from rollout.evaluation import scene_of

        self.tasks, self.lpips, self.resolution = tasks, lpips, attribute_resolution
        self.scenes = [scene_of(task) for task in tasks]
        self.severities = [float(degradation_severity(task)) for task in tasks]

    def edits(self, produced: list[list], suggestions: list | None = None) -> list[list]:
        """``produced[i]``: pair i's outputs (its draws) → their :class:`EditMeasurement` lists."""
        from rollout.evaluation import measure_edit

        flat = [(i, output) for i, outputs in enumerate(produced) for output in outputs]
        distances = self.lpips.distances([(output, self.tasks[i].target) for i, output in flat])
        measured: list[list] = [[] for _ in produced]
        for (i, output), distance in zip(flat, distances):
            task = self.tasks[i]
            measured[i].append(measure_edit(
                task.input, output, task.target, lpips_distance=distance, attribute_resolution=self.resolution,
                suggestions=None if suggestions is None else suggestions[i]))
        return measured

    def pairs(self, produced: list[list], *, suggestions: list | None = None, critiques: list | None = None,
              annotated: list[list] | None = None) -> list:
        from rollout.evaluation import PairResult, draw_spread, mean_edit

        measured = self.edits(produced, suggestions)
        annotated_measured = self.edits(annotated) if annotated is not None else None
        return [PairResult(task_id=task.task_id, scene=self.scenes[i], kind=task.kind, severity=self.severities[i],
                           edit=mean_edit(measured[i]), draws=len(produced[i]), spread=draw_spread(produced[i]),
                           critique=None if critiques is None else critiques[i],
                           annotated_edit=None if annotated_measured is None else mean_edit(annotated_measured[i]))
                for i, task in enumerate(self.tasks)]


def evaluate_model(directory: Path, tasks, config, measurer: _Measurer, *, seed: int, samples: int):
    """(per-pair results, first-draw edits) of the model pair in ``directory`` on ``tasks`` (images loaded)."""
    from learner.sft import annotate_task
    from rollout.evaluation import measure_critique
    from rollout.pipeline import PhotoPipeline

    pipeline = PhotoPipeline(directory / "critic", directory / "artist", min_pixels=config.critic.min_pixels,
                             max_pixels=config.critic.max_pixels, max_new_tokens=config.critic.max_new_tokens,
                             resolution=config.artist.resolution, num_steps=config.artist.num_steps,
                             solver=config.artist.solver)
    greedy = [pipeline.critic.critique(task.input) for task in tasks]
    annotated = [pipeline.critic.teacher_forced(task.input, annotate_task(task)) for task in tasks]
    seeds = [noise_seeds(seed, i, len(tasks), samples) for i in range(len(tasks))]
    end_to_end = pipeline.edit_many([(task.input, c, s) for task, c, s in zip(tasks, greedy, seeds)])
    under_annotation = pipeline.edit_many([(task.input, c, s) for task, c, s in zip(tasks, annotated, seeds)])
    critiques = [measure_critique(task, task.input, task.target, c.parsed, c.text,
                                  attribute_resolution=measurer.resolution) for task, c in zip(tasks, greedy)]
    produced = [[edit.edited for edit in edits] for edits in end_to_end]
    pairs = measurer.pairs(produced, suggestions=[c.parsed.suggestions for c in greedy], critiques=critiques,
                           annotated=[[edit.edited for edit in edits] for edits in under_annotation])
    return pairs, [outputs[0] for outputs in produced]


def run(args: argparse.Namespace) -> int:
    from learner.sft import annotate_task
    from rewards.perceptual import LPIPSScorer
    from rollout.config import ConfigError, load_config
    from rollout.data.manifest import read_manifest
    from rollout.data.sources import image_limits, manifest_paths
    from rollout.data.stream import readable_tasks
    from rollout.evaluation import HeldOutResults, auto_retouch, oracle_output
    from rollout.evaluation.figures import metric_bars, sample_grid
    from rollout.evaluation.tables import compare, comparison_table, evaluation_report

    try:
        if args.samples < 1:
            raise ValueError(f"--samples {args.samples}: need at least one edit per pair")
        if args.max_pairs is not None and args.max_pairs < 2:
            raise ValueError(f"--max-pairs {args.max_pairs}: need at least two pairs")
        config = load_config(args.config, args.set)
        checkpoints = [_parse_checkpoint(value) for value in args.checkpoint]
        comparisons = [_parse_comparison(value) for value in args.compare]
        labels = ["identity", "auto-retouch", "oracle", *(label for label, _ in checkpoints)]
        if len(set(labels)) != len(labels):
            raise ValueError(f"--checkpoint labels must be unique and differ from the baselines; got {labels[3:]}")
        manifest = Path(args.data) if args.data else manifest_paths(config.data)[1]
        if manifest is None or not manifest.is_file():
            raise FileNotFoundError(f"held-out manifest {manifest}: no such file")
        contents = read_manifest(manifest)
        records = contents.tasks[:args.max_pairs] if args.max_pairs else contents.tasks
        for task in records:
            annotate_task(task)  # refuses a pair with nothing known to fix before any model runs
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"photocrafter evaluate: {error}", file=sys.stderr)
        return 2
    tasks, refused = readable_tasks(records, image_limits(config.data))
    skipped = [*contents.rejected, *refused]
    for record in skipped:
        print(f"photocrafter evaluate: skipped {record.record_id}: {record.reason}", file=sys.stderr)
    if not tasks:
        print(f"photocrafter evaluate: no photo of {manifest} can be read", file=sys.stderr)
        return 1
    lpips = LPIPSScorer(config.rewards.lpips_weights, resolution=config.rewards.lpips_resolution)
    measurer = _Measurer(tasks, lpips, config.rewards.attribute_resolution)
    results = HeldOutResults(task_ids=[t.task_id for t in tasks], scenes=measurer.scenes, kinds=[t.kind for t in tasks],
                             info={"manifest": str(manifest), "seed": args.seed, "samples": args.samples,
                                   "checkpoints": {label: str(path) for label, path in checkpoints},
                                   "skipped": [{"record_id": r.record_id, "reason": r.reason} for r in skipped]})
    outputs = {}

    def add(name: str, pairs, first_draws) -> None:
        results.add(name, pairs)
        outputs[name] = first_draws
        row = results.summary(name)
        print(f"{name}: r_photo {row.photometric:.3f}, mean |Δattr| {row.mean_attribute_error:.2f}, SSIM "
              f"{row.ssim:.3f} ({time.perf_counter() - started:.0f}s)", flush=True)

    started = time.perf_counter()
    # The baselines are deterministic: one output each.
    for name, make in (("identity", lambda t: t.input), ("auto-retouch", lambda t: auto_retouch(t.input)),
                       ("oracle", lambda t: oracle_output(t.input, t.target, t.known_ops, t.kind))):
        produced = [[make(task)] for task in tasks]
        add(name, measurer.pairs(produced), [p[0] for p in produced])
    for label, directory in checkpoints:
        pairs, first_draws = evaluate_model(directory, tasks, config, measurer, seed=args.seed, samples=args.samples)
        add(label, pairs, first_draws)

    groups = []
    try:
        for prefix, reference in comparisons:
            members = [m for m in results.methods if m.startswith(prefix) and m != reference]
            results.add_group(prefix, members)
            groups.append(compare(results, prefix, reference))
    except (KeyError, ValueError) as error:
        print(f"photocrafter evaluate: --compare: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    results.info["comparisons"] = [[c.to_json() for c in group] for group in groups]
    results.write(out / "results.json")
    report = evaluation_report(results, groups)
    (out / "table.md").write_text(report)
    (out / "comparison.md").unlink(missing_ok=True)
    if groups:
        (out / "comparison.md").write_text("\n".join(comparison_table(group) for group in groups))
    metric_bars(results, out / "metrics.png")
    sample_grid([t.input for t in tasks], [t.target for t in tasks], outputs, out / "samples.png")
    print(report)
    if not args.no_mlflow:
        _log_to_mlflow(config, out, results)
    print("wrote", out)
    return 0


def _log_to_mlflow(config, out: Path, results) -> None:
    from rollout.tracking.run_tracker import RunTracker

    with RunTracker(config, out, run_name=f"evaluate-{out.name}") as tracker:
        metrics = {}
        for method in results.methods:
            row = results.summary(method)
            key = method.replace("+", "_plus_").replace(" ", "_")
            for name in ("psnr", "ssim", "lpips", "mean_attribute_error", "photometric", "compliance_rate",
                         "format_rate", "suggestion_rate", "score_severity_spearman", "annotated_photometric",
                         "annotated_mean_attribute_error"):
                value = getattr(row, name)
                if value is not None:
                    metrics[f"eval/{key}/{name}"] = float(value)
        tracker.log_metrics(metrics, step=0)
        for name in ("table.md", "results.json", "metrics.png", "samples.png"):
            tracker.log_artifact(out / name, "evaluation")
