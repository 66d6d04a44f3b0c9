"""``photocrafter evaluate``: every method's metrics on a held-out set, in one table, on disk and in MLflow.

Owns the command-line surface and the per-method loop. Rows: ``identity`` (the input unchanged),
``auto-retouch`` (grey-pixel white balance, auto contrast and exposure on L*), ``oracle`` (the known inverse of
each synthetic degradation: the upper bound) and one row per ``--checkpoint LABEL=DIR`` (a
directory holding ``critic/`` and ``artist/``, e.g. a warm start as ``SFT-only`` and an RL result as
``SFT+RL``; a bare ``DIR`` is labelled by its name). Each model row runs the critic then the artist on every
held-out photo (``rollout.pipeline``): one greedy critique, then ``--samples`` edits from different artist noise
seeds, so that a model row averages over the artist's sampling noise rather than reporting one draw of it.
Metrics come from ``rollout.evaluation``. Writes ``table.md``,
``results.json`` (with every row's per-photo r_photo and mean |Δattr|) and ``metrics.png`` under ``--out`` and
logs them with the table's numbers to MLflow. ``--compare PREFIX=LABEL`` adds ``comparison.md``: the rows
whose label starts with PREFIX (e.g. one per RL seed) as mean ± std, and the paired per-photo bootstrap
interval of their mean against row LABEL.
Photos are read with ``rollout.records.images`` (the rules of docs/data.md); a held-out record whose photo cannot be
read is skipped with one line naming the file and what is wrong, and listed in ``results.json``.
Exit status: 0 evaluated, 1 no held-out photo could be read, 2 unusable arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", action="append", default=[], metavar="[LABEL=]DIR",
                        help="model directory with critic/ and artist/ (repeatable)")
    parser.add_argument("--data", metavar="MANIFEST", help="held-out manifest (default: the config's eval split)")
    parser.add_argument("--config", metavar="YAML", help="run config (default: configs/embedded.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--out", default="runs/evaluation", metavar="DIR", help="output folder (runs/evaluation)")
    parser.add_argument("--seed", type=int, default=0,
                        help="artist noise seed (photo i, sample j: seed + i + j·photos)")
    parser.add_argument("--samples", type=int, default=1, metavar="N",
                        help="artist edits per photo from different noise seeds, averaged in each row (1)")
    parser.add_argument("--compare", action="append", default=[], metavar="PREFIX=LABEL",
                        help="rows whose label starts with PREFIX (e.g. RL seeds) against row LABEL: mean ± std "
                             "and a paired per-photo bootstrap interval (repeatable)")
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


def run(args: argparse.Namespace) -> int:
    from learner.sft import annotate_task, degradation_severity
    from rewards.perceptual import LPIPSScorer
    from rollout.config import ConfigError, load_config
    from rollout.data.manifest import read_manifest
    from rollout.data.sources import image_limits, manifest_paths
    from rollout.data.stream import readable_tasks
    from rollout.evaluation import (auto_retouch, compare_to_reference, markdown_table, measure, oracle_output,
                                    per_photo, summarise)
    from rollout.pipeline import PhotoPipeline

    try:
        if args.samples < 1:
            raise ValueError(f"--samples {args.samples}: need at least one edit per photo")
        config = load_config(args.config, args.set)
        checkpoints = [_parse_checkpoint(value) for value in args.checkpoint]
        comparisons = [_parse_comparison(value) for value in args.compare]
        manifest = Path(args.data) if args.data else manifest_paths(config.data)[1]
        if manifest is None or not manifest.is_file():
            raise FileNotFoundError(f"held-out manifest {manifest}: no such file")
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"photocrafter evaluate: {error}", file=sys.stderr)
        return 2
    contents = read_manifest(manifest)
    tasks, refused = readable_tasks(contents.tasks, image_limits(config.data))
    skipped = [*contents.rejected, *refused]
    for record in skipped:
        print(f"photocrafter evaluate: skipped {record.record_id}: {record.reason}", file=sys.stderr)
    if not tasks:
        print(f"photocrafter evaluate: no photo of {manifest} can be read", file=sys.stderr)
        return 1
    photos = [(task, task.input, task.target) for task in tasks]
    for task in tasks:
        annotate_task(task)  # refuses tasks with nothing known to fix before any model runs
    lpips = LPIPSScorer(config.rewards.lpips_weights, resolution=config.rewards.lpips_resolution)
    resolution = config.rewards.attribute_resolution
    rows, outputs, photo_values = [], {}, {}

    def score_outputs(name, produced, critiques=None):
        """``produced[j][i]``: sample j of photo i; ``critiques[i]``: the critique of photo i (model rows)."""
        pairs = [(j, i) for j in range(len(produced)) for i in range(len(photos))]
        distances = lpips.distances([(produced[j][i], photos[i][2]) for j, i in pairs])
        samples = []
        for (j, i), distance in zip(pairs, distances):
            (task, source, target), output = photos[i], produced[j][i]
            parsed = critiques[i] if critiques else None
            samples.append(measure(
                source, output, target, lpips_distance=distance, attribute_resolution=resolution,
                suggestions=parsed.suggestions if parsed else None, format_ok=parsed.format_ok if parsed else None,
                score=parsed.score if parsed else None, severity=float(degradation_severity(task))))
        rows.append(summarise(name, samples))
        photo_values[name] = per_photo(samples, len(photos))
        outputs[name] = produced[0]
        print(f"{name}: r_photo {rows[-1].photometric:.3f}, mean |Δattr| {rows[-1].mean_attribute_error:.2f}")

    # The baselines are deterministic: one sample each.
    score_outputs("identity", [[source for _, source, _ in photos]])
    score_outputs("auto-retouch", [[auto_retouch(source) for _, source, _ in photos]])
    score_outputs("oracle", [[oracle_output(source, target, task.known_ops, task.kind)
                              for task, source, target in photos]])
    critique_texts = {}
    for label, directory in checkpoints:
        pipeline = PhotoPipeline(directory / "critic", directory / "artist", min_pixels=config.critic.min_pixels,
                                 max_pixels=config.critic.max_pixels, max_new_tokens=config.critic.max_new_tokens,
                                 resolution=config.artist.resolution, num_steps=config.artist.num_steps,
                                 solver=config.artist.solver)
        results = [pipeline.enhance_with_seeds(source, [args.seed + i + j * len(photos) for j in range(args.samples)])
                   for i, (_, source, _) in enumerate(photos)]
        critique_texts[label] = [edits[0].critique.text for edits in results]
        score_outputs(label, [[edits[j].edited for edits in results] for j in range(args.samples)],
                      [edits[0].critique.parsed for edits in results])

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    unread = f", {len(skipped)} skipped as unreadable" if skipped else ""
    (out / "table.md").write_text(f"Held-out set: {manifest} ({len(tasks)} photos{unread}, {args.samples} artist "
                                  f"sample(s) per photo, noise seed {args.seed})\n\n" + table)
    (out / "results.json").write_text(json.dumps({
        "manifest": str(manifest), "seed": args.seed, "samples": args.samples,
        "skipped": [{"record_id": r.record_id, "reason": r.reason} for r in skipped],
        "checkpoints": {k: str(v) for k, v in checkpoints},
        "rows": [asdict(row) for row in rows], "per_photo": photo_values, "tasks": [task.task_id for task in tasks],
        "critiques": critique_texts}, indent=2, default=float) + "\n")
    (out / "comparison.md").unlink(missing_ok=True)
    for prefix, reference in comparisons:
        try:
            comparison = compare_to_reference(rows, photo_values, prefix, reference)
        except ValueError as error:
            print(f"photocrafter evaluate: {error}", file=sys.stderr)
            return 2
        with open(out / "comparison.md", "a") as handle:
            handle.write(comparison + "\n")
        print(comparison)
    _plot(rows, out / "metrics.png")
    _sample_grid(photos, outputs, out / "samples.png")
    print(table)
    if not args.no_mlflow:
        from rollout.tracking.run_tracker import RunTracker

        with RunTracker(config, out, run_name=f"evaluate-{out.name}") as tracker:
            metrics = {}
            for row in rows:
                key = row.method.replace("+", "_plus_").replace(" ", "_")
                for name in ("psnr", "ssim", "lpips", "mean_attribute_error", "photometric", "compliance_rate",
                             "format_rate", "score_severity_spearman"):
                    value = getattr(row, name)
                    if value is not None:
                        metrics[f"eval/{key}/{name}"] = float(value)
            tracker.log_metrics(metrics, step=0)
            for name in ("table.md", "results.json", "metrics.png", "samples.png"):
                tracker.log_artifact(out / name, "evaluation")
    print("wrote", out)
    return 0


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row.method for row in rows]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for axis, (title, values) in zip(axes, (
            ("r_photo ↑", [row.photometric for row in rows]),
            ("mean |Δ attribute| ↓", [row.mean_attribute_error for row in rows]),
            ("PSNR (dB) ↑", [row.psnr for row in rows]))):
        axis.bar(names, values, color="tab:blue")
        axis.set_title(title)
        axis.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _sample_grid(photos, outputs: dict, path: Path, count: int = 4) -> None:
    """Rows: held-out photos; columns: input, each method's output, target."""
    import numpy as np

    from rollout.records.images import write_png

    rows = []
    for i, (_, source, target) in enumerate(photos[:count]):
        cells = [source, *(outputs[name][i] for name in outputs if name != "identity"), target]
        rows.append(np.concatenate(cells, axis=1))
    write_png(path, np.concatenate(rows, axis=0))
