"""``photocrafter score``: the full reward breakdown for one input / edit / target triple.

The tool to reach for when a reward looks wrong: it measures the three photos, shows each attribute, each
per-attribute photometric score, each compliance check against the critique's tone suggestions, the LPIPS
distance (and whether its backbone is real), the weighted total, and — with ``--critique`` — the critic's
format, rank and suggestion rewards. It owns only the command-line surface: numbers come from the same
:class:`rewards.worker.RewardWorker` the training pool runs, the critique text from the critic's grammar; the
photos are read with ``rollout.records.images``, as training data is (the rules of docs/data.md).
Exit status: 0 scored, 1 the triple could not be scored (one line names the photo and the reason: unreadable,
truncated, sizes that differ), 2 unusable arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from rewards.config import RewardsConfig

_DEFAULTS = RewardsConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="IMAGE", help="the photo before editing")
    parser.add_argument("--edit", required=True, metavar="IMAGE", help="the edited photo (same size as the target)")
    parser.add_argument("--target", required=True, metavar="IMAGE", help="the reference photo")
    parser.add_argument("--critique", metavar="TEXT|FILE",
                        help="critic response (text, or a file holding it): its tone suggestions feed the "
                             "compliance gate and it gets the critic reward")
    parser.add_argument("--edit-score", type=float, action="append", default=[], metavar="S",
                        help="the critic's re-score of the edit, for the rank reward (repeatable)")
    parser.add_argument("--kind", choices=("retouch", "restoration"), default="retouch",
                        help="task kind for the suggestion reward (retouch)")
    parser.add_argument("--degradation", action="append", default=[], metavar="LABEL",
                        help="restoration label of the input (blur, noise, haze, lowlight, rain, jpeg; repeatable)")
    parser.add_argument("--config", metavar="YAML",
                        help="take the rewards section from this run config (default: built-in defaults)")
    parser.add_argument("--lpips-weights", metavar="FILE", help="AlexNet weights file for LPIPS")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _rewards_config(args: argparse.Namespace) -> RewardsConfig:
    config = _DEFAULTS
    if args.config:
        from rollout.config import load_config

        config = load_config(args.config).rewards
    if args.lpips_weights:
        config = config.model_copy(update={"lpips_weights": args.lpips_weights})
    return config


def _critique_text(value: str) -> str:
    path = Path(value)
    try:
        if len(value) < 4096 and path.is_file():
            return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        pass
    return value


def run(args: argparse.Namespace) -> int:
    import logging

    from rewards.artist import compliance_checks
    from rewards.attributes import NEGLIGIBLE_CHANGE, compute_attributes
    from rewards.perceptual import LPIPSWeightsError
    from rewards.worker import CritiqueScoringRequest, EditScoringRequest, RewardWorker
    from rollout.records.images import ImageRejected, read_image
    from rollout.records.types import DEGRADATIONS, TONE_ATTRIBUTES

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    bad_labels = [label for label in args.degradation if label not in DEGRADATIONS]
    if bad_labels:
        print(f"photocrafter score: unknown degradation {bad_labels}; choose from {', '.join(DEGRADATIONS)}",
              file=sys.stderr)
        return 2
    try:
        config = _rewards_config(args)
        images = {}
        for name in ("input", "edit", "target"):
            try:
                images[name] = read_image(getattr(args, name))
            except ImageRejected as exc:
                raise ImageRejected(f"--{name} {exc.reason}") from None
        worker = RewardWorker(config)
    except (ImageRejected, LPIPSWeightsError) as exc:
        print(f"photocrafter score: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # config errors carry their own one-line-per-problem message
        print(f"photocrafter score: {exc}", file=sys.stderr)
        return 2

    parsed = None
    if args.critique is not None:
        from critic_actor.grammar import parse_critique

        parsed = parse_critique(_critique_text(args.critique))
    suggestions = tuple(parsed.suggestions) if parsed else ()
    reward = worker.score_edits([EditScoringRequest(
        task_id="score", critique_index=0, edit_index=0, input=images["input"], edit=images["edit"],
        target=images["target"], suggestions=suggestions)])[0]
    critic = None
    if parsed is not None:
        critic = worker.score_critiques([CritiqueScoringRequest(
            task_id="score", critique_index=0, parsed=parsed, input=images["input"], target=images["target"],
            kind=args.kind, degradations=tuple(args.degradation), edit_scores=tuple(args.edit_score))])[0]
    if reward.error:
        print(f"photocrafter score: the triple cannot be scored: {reward.error}", file=sys.stderr)
        return 1

    attrs = {name: compute_attributes(image, config.attribute_resolution) for name, image in images.items()}
    checks = compliance_checks(suggestions, attrs["input"], attrs["edit"], config.compliance_margin)
    lpips_distance = 1.0 - reward.perceptual
    report = {
        "images": {name: {"path": getattr(args, name), "width": int(image.shape[1]),
                          "height": int(image.shape[0]), "attributes": attrs[name].as_dict()}
                   for name, image in images.items()},
        "artist": asdict(reward),
        "compliance_checks": [{"attribute": c.op.attribute, "direction": c.op.direction, "level": c.op.level,
                               "change": c.change, "required": c.required, "followed": c.followed}
                              for c in checks],
        "lpips": {"distance": lpips_distance, "backbone_is_random": worker.lpips.backbone_is_random,
                  "backbone_source": worker.lpips.backbone_source},
        "weights": {"photometric": config.photometric_weight, "perceptual": config.perceptual_weight},
        "critic": asdict(critic) if critic else None,
        "critique": ({"format_ok": parsed.format_ok, "score": parsed.score, "error": parsed.error,
                      "suggestions": [s.text for s in parsed.suggestions], "unrecognised": parsed.unrecognised}
                     if parsed else None),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0

    units = {"exposure": "L*", "contrast": "L*", "saturation": "C*", "warmth": "mired"}
    print(f"{'attribute':<11} {'input':>8} {'edit':>8} {'target':>8} {'tau':>5}  score   (unit)")
    for k in TONE_ATTRIBUTES:
        print(f"{k:<11} {attrs['input'][k]:8.2f} {attrs['edit'][k]:8.2f} {attrs['target'][k]:8.2f} "
              f"{NEGLIGIBLE_CHANGE[k]:5.1f}  {reward.attribute_scores[k]:.3f}   ({units[k]})")
    print(f"\nphotometric r_photo = {reward.photometric:.4f}  (mean of the per-attribute scores)")
    if checks:
        print(f"compliance  r_comp  = {reward.compliance:.4f}  "
              f"({sum(c.followed for c in checks)} of {len(checks)} tone suggestions followed)")
        for c in checks:
            print(f"  {'ok  ' if c.followed else 'MISS'} {c.op.attribute} {'+' if c.op.direction > 0 else '-'}"
                  f"{c.op.level}: moved {c.change:+.2f}, needed beyond {c.required:+.2f}")
    else:
        print(f"compliance  r_comp  = {reward.compliance:.4f}  (no tone suggestion: the gate is neutral)")
    backbone = "RANDOM backbone: not a perceptual metric" if worker.lpips.backbone_is_random else "AlexNet"
    print(f"perceptual  r_perc  = {reward.perceptual:.4f}  (LPIPS {lpips_distance:.4f}, {backbone})")
    print(f"total       r_PA    = {reward.total:.4f}  = {reward.compliance:.3f} x ({config.photometric_weight:g} x "
          f"{reward.photometric:.3f} + {config.perceptual_weight:g} x {reward.perceptual:.3f})")
    if parsed is not None and critic is not None:
        print(f"\ncritique: format {'ok' if parsed.format_ok else 'BAD (' + parsed.error + ')'}, "
              f"score {parsed.score}, {len(parsed.suggestions)} suggestions, "
              f"{len(parsed.unrecognised)} unrecognised")
        if critic.error:
            print(f"critic reward: not scored: {critic.error}")
        else:
            print(f"critic      r_C     = {critic.total:.4f}  (format {critic.format:.0f}, rank {critic.rank:.0f}, "
                  f"suggestion {critic.suggestion:.0f})")
            for component, reason in critic.reasons.items():
                print(f"  {component}: {reason}")
    return 0
