"""The report of ``bench.learning``: every table, figure and verdict from the files the measurement wrote.

Reads ``OUT/stages/*.json`` (sizes, stage times, warm-start losses, each RL run's per-step training metrics,
the SFT control's batches) and ``OUT/eval/<label>/results.json`` (per-pair held-out results), and writes
``OUT/report/`` (``results.md``, ``summary.json``, figures); with ``docs`` set, the same markdown to that file and
the figures beside it under ``results/``. Nothing here measures: every number printed is read from those files
or computed from them (means, scene-clustered intervals), so the report can be rebuilt at any time with
``python -m bench.learning_report OUT``.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.evaluation import PAIR_METRICS, HeldOutResults  # noqa: E402
from rollout.evaluation.statistics import clustered_mean  # noqa: E402
from rollout.evaluation.tables import (artist_table, compare, comparison_table, critic_table,  # noqa: E402
                                       gap_table, method_table)

FIGURES = ("learning-curves.png", "training.png", "heldout-metrics.png")
CURVE_METRICS = (("r_photo", "held-out r_photo (critic → artist)"),
                 ("annotated_r_photo", "held-out r_photo (annotated critique → artist)"),
                 ("critic_suggestion", "held-out critic r_sugg (greedy)"),
                 ("critic_format", "held-out critic format rate (greedy)"))
INTRO = """# Does the loop learn? Warm start, coordinated RL and held-out evaluation on the embedded default

This page is written by `python -m bench.learning` from the files it measured; only this introduction is
prose. The measurement builds the warm start once (critic SFT, then artist SFT), runs the coordinated RL loop from
it for several seeds with checkpoints along the way, runs a compute-matched control that continues SFT from the
warm start for as many optimiser steps as RL took (with as many samples per step as an RL update trains on), and
evaluates every model on held-out pairs cropped from photos of scenes the training split never sees (docs/data.md).

How to read the numbers:

- **A pair counts once.** Model rows use the deterministic artist (no exploration) with one stated noise draw per
  pair unless the table says otherwise; with several draws they are averaged per pair first.
- **Intervals are clustered by scene.** Pairs cropped from one photo share its content, so every 95 % interval
  resamples the scenes, not the pairs. With a handful of scenes a percentile interval is a little optimistic;
  the "scenes better" column shows how many scenes moved the better way.
- **Seeds are repeats of one recipe.** `SFT+RL` is the mean over the seeds on each pair; the comparisons give each
  seed's mean, their spread, and the paired difference of the seed-mean against the reference.
- **End to end, the critic alone, the artist alone.** The end-to-end rows chain the critic's greedy critique into
  the artist. The critic's format rate and r_sugg come from its greedy critiques alone; the artist's "annotated
  critique" rows condition it on each pair's correct critique (teacher-forced through its critic), so each model
  is measured apart from the other.
- **Gain over the identity and gap closed.** Leaving the photo alone scores well on r_photo (an attribute the
  degradation did not touch earns full credit only when left alone), so each row is also given as its gain over
  the identity and as the share of the identity → oracle gap it closes (0 = the identity, 1 = the oracle,
  negative = worse than doing nothing), separately for retouch and restoration pairs.
"""


def load_stage(out: Path, name: str) -> dict:
    path = out / "stages" / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: stage {name} has not finished; run bench.learning to complete it")
    return json.loads(path.read_text())


def final_results(out: Path, seeds: int) -> HeldOutResults:
    """The final models on the same held-out pairs: SFT-only, SFT-control and one row per RL seed (group
    ``SFT+RL``), with the baselines."""
    labels = ["SFT-only", "SFT-control", *(f"SFT+RL-seed{s}" for s in range(seeds))]
    results = HeldOutResults.read(out / "eval" / labels[0] / "results.json")
    for label in labels[1:]:
        results = results.merged(HeldOutResults.read(out / "eval" / label / "results.json"))
    results.add_group("SFT+RL", [f"SFT+RL-seed{s}" for s in range(seeds)])
    return results


def _first_pairs(results: HeldOutResults, count: int) -> HeldOutResults:
    subset = HeldOutResults(results.task_ids[:count], results.scenes[:count], results.kinds[:count], info=results.info)
    for method, pairs in results.methods.items():
        subset.add(method, pairs[:count])
    return subset


def learning_curves(out: Path, seeds: int, sizes: dict) -> dict:
    """Per seed: (step, held-out metric with its interval over scenes) at step 0 (the warm start), every
    checkpoint and the end, all on the curve pairs."""
    steps_of = {s: load_stage(out, f"rl-seed{s}")["checkpoints"] for s in range(seeds)}
    count = sizes.get("curve_pairs") or sizes.get("eval_pairs")
    curves: dict = {key: {} for key, _ in CURVE_METRICS}
    warm = HeldOutResults.read(out / "eval" / "SFT-only" / "results.json")
    count = min(count or len(warm.task_ids), len(warm.task_ids))
    for seed in range(seeds):
        points = [(0, warm)]
        for step in steps_of[seed]:
            label = f"SFT+RL-seed{seed}" if step == sizes["rl_steps"] else f"SFT+RL-seed{seed}@{step}"
            points.append((step, HeldOutResults.read(out / "eval" / label / "results.json")))
        for key, _ in CURVE_METRICS:
            series = []
            for step, results in points:
                subset = _first_pairs(results, count)
                model = [m for m in subset.methods if m not in ("identity", "auto-retouch", "oracle")][0]
                series.append({"step": step, **clustered_mean(subset.values(model, key), subset.scenes,
                                                              resamples=2_000).to_json()})
            curves[key][f"seed{seed}"] = series
    identity = _first_pairs(warm, count)
    return {"pairs": count, "curves": curves,
            "identity_r_photo": float(identity.values("identity", "r_photo").mean()),
            "oracle_r_photo": float(identity.values("oracle", "r_photo").mean())}


def training_summary(out: Path, seeds: int) -> dict:
    """Per seed and metric: per-step values, the first-5 and last-5 step means, min and max."""
    summary = {}
    for seed in range(seeds):
        history = load_stage(out, f"rl-seed{seed}")["training"]
        per_metric = {}
        for key, points in history.items():
            steps = sorted(points, key=int)
            values = [points[s] for s in steps]
            window = min(5, len(values))
            per_metric[key] = {"steps": [int(s) for s in steps], "values": values,
                               "first": float(np.mean(values[:window])), "last": float(np.mean(values[-window:])),
                               "min": float(np.min(values)), "max": float(np.max(values)),
                               "mean": float(np.mean(values))}
        summary[f"seed{seed}"] = per_metric
    return summary


def verdicts(results: HeldOutResults, comparisons: dict, training: dict, curves: dict) -> list[dict]:
    """The done-when criteria of the measurement, each with what was measured and whether it is met."""
    rows = []

    def by_metric(name: str) -> dict:
        return {c.metric: c for c in comparisons[name]}

    for reference in ("SFT-only", "SFT-control"):
        found = by_metric(f"SFT+RL vs {reference}")
        for key, better in (("r_photo", 1), ("mean_attribute_error", -1), ("critic_suggestion", 1)):
            c = found[key]
            rows.append({"criterion": f"{PAIR_METRICS[key].label} improves after RL against {reference} (95 % CI "
                                      f"over scenes excludes zero)", "measured": c.difference.format(4),
                         "met": bool(c.difference.excludes_zero and better * c.difference.estimate > 0)})
        c = found["critic_format"]
        rows.append({"criterion": f"critic format rate does not fall against {reference}",
                     "measured": c.difference.format(4), "met": bool(c.difference.estimate >= 0)})
    for baseline in ("identity", "auto-retouch"):
        for key, better in (("r_photo", 1), ("mean_attribute_error", -1)):
            c = {x.metric: x for x in compare(results, "SFT+RL", baseline, (key,))}[key]
            rows.append({"criterion": f"SFT+RL beats {baseline} on {PAIR_METRICS[key].label} (95 % CI excludes "
                                      f"zero)", "measured": c.difference.format(4),
                         "met": bool(better * c.difference.estimate > 0 and c.difference.excludes_zero)})
    seeds = results.groups["SFT+RL"]
    ssim = float(np.mean([results.summary(m).ssim for m in seeds]))
    rows.append({"criterion": "SSIM ≥ 0.75 (content kept)", "measured": f"{ssim:.3f}", "met": ssim >= 0.75})
    rho = float(np.mean([results.summary(m).score_severity_spearman for m in seeds]))
    rows.append({"criterion": "−ρ(score, severity) > 0.3", "measured": f"{rho:.3f}", "met": rho > 0.3})
    low_std = [training[s].get("groups/artist/low_std_frac", {}).get("mean", math.nan) for s in training]
    rows.append({"criterion": "artist groups with reward std ≤ 0.05 below 30 % (mean over steps, per seed)",
                 "measured": ", ".join(f"{v:.2f}" for v in low_std), "met": all(v < 0.3 for v in low_std)})
    kl = [training[s].get("learner/grpo/kl", {}).get("last", math.nan) for s in training]
    rows.append({"criterion": "critic KL to its start between 1e-3 and 1e-2 (mean of the last 5 steps, per seed)",
                 "measured": ", ".join(f"{v:.1e}" for v in kl), "met": all(1e-3 <= v <= 1e-2 for v in kl)})
    for key, label in (("r_photo", "held-out r_photo"), ("critic_suggestion", "held-out critic r_sugg")):
        ends = [(series[0]["estimate"], series[-1]["estimate"]) for series in curves["curves"][key].values()]
        rows.append({"criterion": f"learning curve rises: {label}, step 0 → last (mean over seeds)",
                     "measured": f"{np.mean([a for a, _ in ends]):.3f} → {np.mean([b for _, b in ends]):.3f}",
                     "met": bool(np.mean([b - a for a, b in ends]) > 0)})
    rewards = [(training[s]["reward/artist/total/mean"]["first"], training[s]["reward/artist/total/mean"]["last"])
               for s in training if "reward/artist/total/mean" in training[s]]
    if rewards:
        rows.append({"criterion": "training r_artist rises (first 5 → last 5 steps, mean over seeds)",
                     "measured": f"{np.mean([a for a, _ in rewards]):.3f} → {np.mean([b for _, b in rewards]):.3f}",
                     "met": bool(np.mean([b - a for a, b in rewards]) > 0)})
    return rows


def plot_curves(curves: dict, training: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4.4 * len(CURVE_METRICS), 3.6))
    for axis, (key, title) in zip(axes, CURVE_METRICS):
        for seed, series in curves["curves"][key].items():
            steps = [p["step"] for p in series]
            below = [p["estimate"] - p["low"] for p in series]
            above = [p["high"] - p["estimate"] for p in series]
            axis.errorbar(steps, [p["estimate"] for p in series], yerr=[below, above], capsize=2, marker="o",
                          label=seed)
        if key in ("r_photo", "annotated_r_photo"):
            axis.axhline(curves["identity_r_photo"], color="grey", linestyle="--", label="identity")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("RL step")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(folder / "learning-curves.png", dpi=100)
    plt.close(figure)

    panels = (("reward/artist/total/mean", "training r_artist"), ("reward/critic/total/mean", "training r_critic"),
              ("learner/grpo/kl", "critic KL to its start"),
              ("groups/artist/low_std_frac", "artist groups std ≤ 0.05"))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6))
    for axis, (key, title) in zip(axes, panels):
        for seed, metrics in training.items():
            if key in metrics:
                axis.plot(metrics[key]["steps"], metrics[key]["values"], marker=".", label=seed)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("RL step")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(folder / "training.png", dpi=100)
    plt.close(figure)


def _training_table(training: dict) -> str:
    keys = (("reward/artist/total/mean", "r_artist (r_PA)"), ("reward/artist/photometric/mean", "r_photo of the edits"),
            ("reward/critic/total/mean", "r_critic"), ("reward/critic/format/mean", "critic format rate (sampling)"),
            ("reward/critic/suggestion/mean", "critic r_sugg (sampling)"))
    seeds = list(training)
    lines = ["| mean of the first 5 → last 5 steps | " + " | ".join(seeds) + " |", "|---|" + "---|" * len(seeds)]
    for key, label in keys:
        cells = [f"{training[s][key]['first']:.3f} → {training[s][key]['last']:.3f}" if key in training[s] else "—"
                 for s in seeds]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for key, label in (("learner/grpo/kl", "critic KL to its start (min–max)"),
                       ("groups/artist/low_std_frac", "artist groups with std ≤ 0.05 (mean, min–max)"),
                       ("groups/critic/zero_variance_frac", "critic groups with equal rewards (mean, min–max)")):
        cells = []
        for s in seeds:
            m = training[s].get(key)
            if m is None:
                cells.append("—")
            elif key == "learner/grpo/kl":
                cells.append(f"{m['min']:.1e}–{m['max']:.1e}")
            else:
                cells.append(f"{m['mean']:.2f} ({m['min']:.2f}–{m['max']:.2f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _stage_table(out: Path) -> tuple[str, float]:
    records = sorted(((p.stem, json.loads(p.read_text())) for p in (out / "stages").glob("*.json")
                      if p.stem not in ("sizes", "command")), key=lambda item: item[1].get("finished", ""))
    total = sum(r.get("seconds", 0.0) for _, r in records)
    lines = ["| stage | seconds | finished |", "|---|---|---|"]
    lines += [f"| {name} | {r.get('seconds', 0.0):.0f} | {r.get('finished', '')} |" for name, r in records]
    return "\n".join(lines) + f"\n| **all stages** | **{total:.0f}** ({total / 60:.1f} min) | |\n", total


def write_report(out: Path, docs: Path | None = None) -> Path:
    """Write ``OUT/report`` (and ``docs`` with its figures) from the measurement in ``out``; returns the folder."""
    out = Path(out).resolve()
    sizes = json.loads((out / "stages" / "sizes.json").read_text())
    seeds = sizes["seeds"]
    results = final_results(out, seeds)
    comparisons = {f"SFT+RL vs {ref}": compare(results, "SFT+RL", ref) for ref in ("SFT-only", "SFT-control")}
    comparisons["SFT-control vs SFT-only"] = compare(results, "SFT-control", "SFT-only")
    curves = learning_curves(out, seeds, sizes)
    training = training_summary(out, seeds)
    checks = verdicts(results, comparisons, training, curves)
    report = out / "report"
    report.mkdir(exist_ok=True)
    plot_curves(curves, training, report)
    from rollout.evaluation.figures import metric_bars

    metric_bars(results, report / "heldout-metrics.png")
    stage_table, total = _stage_table(out)
    warm, control = load_stage(out, "warmstart")["warmstart"], load_stage(out, "sft-control")
    info = results.info
    figures = "results" if docs is not None else "."
    rows = [m for m in results.methods if m not in ("identity", "oracle")] + ["SFT+RL"]
    parts = [INTRO, "## The measurement\n",
             "```\n" + json.loads((out / "stages" / "command.json").read_text())["command"] + "\n```\n",
             f"Held-out set: {len(results.task_ids)} pairs of {len(set(results.scenes))} scenes "
             f"({int(results.subset('retouch').sum())} retouch, {int(results.subset('restoration').sum())} "
             f"restoration); {info.get('samples', 1)} noise draw(s) per pair (seed {info.get('seed', 0)} + pair "
             f"index). Warm start: critic SFT {warm['critic_sft']['steps']} steps (loss "
             f"{warm['critic_sft']['loss_first']:.3f} → {warm['critic_sft']['loss_last']:.3f}), artist SFT "
             f"{warm['adapt_sft']['steps']} steps (loss {warm['adapt_sft']['loss_first']:.4f} → "
             f"{warm['adapt_sft']['loss_last']:.4f}). RL: {sizes['rl_steps']} steps of {sizes['rl_batch']} photos × "
             f"{seeds} seeds. SFT control: {control['steps']} steps, critic batch {control['critic_batch']}, "
             f"artist batch {control['artist_batch']}.\n",
             "Wall time per stage (a quiet machine only if nothing else ran; see the stage records):\n", stage_table,
             "## What was met\n", _verdict_table(checks),
             "## Held-out results of the final models\n", method_table(results),
             f"![held-out metrics]({figures}/heldout-metrics.png)\n",
             "### Gain over the identity and share of the identity → oracle gap closed: r_photo\n",
             gap_table(results, "r_photo", rows),
             "### The same for mean |Δattr| (a negative gain is better)\n",
             gap_table(results, "mean_attribute_error", rows),
             "### The critic alone (greedy critiques; no artist involved)\n",
             critic_table(results, ["SFT-only", "SFT-control", *results.groups["SFT+RL"], "SFT+RL"]),
             "### The artist alone (conditioned on each pair's annotated critique)\n",
             artist_table(results, ["SFT-only", "SFT-control", *results.groups["SFT+RL"], "SFT+RL"]),
             "## Paired comparisons\n"]
    for name, group in comparisons.items():
        parts += [f"### {name}\n", comparison_table(group)]
    parts += ["## Learning curves\n",
              f"Held-out metrics of each seed's checkpoints (step 0 is the warm start) on the first "
              f"{curves['pairs']} held-out pairs, 95 % intervals over scenes; the dashed line is the identity.\n",
              f"![learning curves]({figures}/learning-curves.png)\n",
              "Training metrics of the same runs, per step, from their MLflow history:\n",
              f"![training]({figures}/training.png)\n", _training_table(training)]
    markdown = "\n".join(parts)
    (report / "results.md").write_text(markdown.replace(f"({figures}/", "(./"))
    (report / "summary.json").write_text(json.dumps({
        "sizes": sizes, "verdicts": checks, "curves": curves, "training": training, "stage_seconds": total,
        "comparisons": {k: [c.to_json() for c in v] for k, v in comparisons.items()},
        "summaries": {m: asdict(results.summary(m)) for m in results.methods}}, indent=1, default=float) + "\n")
    if docs is not None:
        docs = Path(docs)
        (docs.parent / "results").mkdir(parents=True, exist_ok=True)
        for name in FIGURES:
            shutil.copyfile(report / name, docs.parent / "results" / name)
        docs.write_text(markdown)
    return report


def _verdict_table(checks: list[dict]) -> str:
    lines = ["| criterion | measured | met |", "|---|---|---|"]
    lines += [f"| {c['criterion'].replace('|', chr(92) + '|')} | {c['measured']} | {'yes' if c['met'] else '**no**'} |"
              for c in checks]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.learning_report", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the measurement folder bench.learning wrote")
    parser.add_argument("--docs", help="also write this markdown file and its figures")
    arguments = parser.parse_args(argv)
    print(write_report(Path(arguments.out), Path(arguments.docs) if arguments.docs else None))
    return 0


if __name__ == "__main__":
    from rollout.commands.entry import run_main

    run_main(main, "bench.learning_report")
