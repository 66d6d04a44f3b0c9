"""Standalone model directories: writing a trained critic or artist in its library's own layout.

Owns the two directory writers every producer of models uses (warm-start SFT and checkpoint export), and
:func:`export_checkpoint`, which materialises a coordinated-RL checkpoint (``runs/<run>/checkpoints/step_N``)
into ``critic/`` (transformers layout) and ``artist/`` (diffusers layout) that ``evaluate``, ``enhance``,
``sft --init-from`` and ``trainer.init_from`` load like any other model. LoRA adapters are merged into the base
weights (W + α/r · B·A), so the exported directories carry no adapters and need no peft to load.

Which artist weights are exported is a choice: ``ema`` (the default; ALGORITHMS.md §2: the EMA of the trained
adapter is the one meant for evaluation and saving), ``trained`` (the adapter the optimizer steps) or
``sampling`` (the slow copy the samplers ran).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import torch

ArtistWeights = Literal["ema", "trained", "sampling"]

_CRITIC_EXTRA_FILES = ("generation_config.json",)


def write_critic_dir(model: torch.nn.Module, processor, source: str | Path, out_dir: str | Path) -> Path:
    """Save a critic (weights, config, processor, tokenizer) into ``out_dir``; files the model does not write
    itself (its generation config) are copied from the ``source`` directory it was loaded from."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    for name in _CRITIC_EXTRA_FILES:
        if (Path(source) / name).is_file() and not (out / name).is_file():
            shutil.copy2(Path(source) / name, out / name)
    return out


def write_artist_dir(transformer: torch.nn.Module, source: str | Path, out_dir: str | Path) -> Path:
    """A complete artist directory in ``out_dir``: ``transformer`` plus the source's VAE, scheduler and codec
    file. ``out_dir`` is replaced; it may not be ``source`` itself."""
    out, source = Path(out_dir), Path(source)
    if out.resolve() == source.resolve():
        raise ValueError(f"artist output {out} is the directory it was loaded from; write elsewhere")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("transformer"))
    transformer.eval()
    transformer.save_pretrained(out / "transformer")
    return out


def export_checkpoint(checkpoint_dir: str | Path, config, base_models: tuple[Path, Path], out_dir: str | Path,
                      artist_weights: ArtistWeights = "ema") -> dict:
    """Write ``out_dir/critic``, ``out_dir/artist`` and ``out_dir/export.json`` from an RL checkpoint.

    ``config`` is the run's own config (``runs/<run>/config.yaml``): the learner and LoRA settings the checkpoint
    was written with. ``base_models`` are the (critic, artist) directories the run started from, as
    ``rollout.models.resolve_model_paths`` resolves that config. Returns what ``export.json`` records. Raises
    ``FileNotFoundError`` naming a missing file.
    """
    from artist_actor.model import load_artist
    from critic_actor.model import load_critic
    from learner.artist_learner import CHECKPOINT_NAME as ARTIST_CHECKPOINT
    from learner.artist_learner import ArtistLearner
    from learner.critic_learner import CHECKPOINT_NAME as CRITIC_CHECKPOINT
    from learner.critic_learner import CriticLearner
    from learner.lora import SAMPLING_ADAPTER, TRAINED_ADAPTER, load_adapter_state, merged_state_dict

    if artist_weights not in ("ema", "trained", "sampling"):
        raise ValueError(f"artist weights must be ema, trained or sampling; got {artist_weights!r}")
    checkpoint = Path(checkpoint_dir)
    for name in ("manifest.json", f"{CRITIC_CHECKPOINT}.json", f"{ARTIST_CHECKPOINT}.json"):
        if not (checkpoint / name).is_file():
            raise FileNotFoundError(f"{checkpoint} has no {name}; give a step directory written by train "
                                    f"(runs/<run>/checkpoints/step_N)")
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    critic_base, artist_base = base_models
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    critic_learner = CriticLearner(critic_base, config.learner.critic, min_pixels=config.critic.min_pixels,
                                   max_pixels=config.critic.max_pixels, device="cpu")
    critic_learner.load_state(checkpoint)
    critic, processor = load_critic(critic_base, dtype="float32", device="cpu")
    critic.load_state_dict(critic_learner.get_weights(), strict=True)
    write_critic_dir(critic, processor, critic_base, out / "critic")
    critic_version = critic_learner.policy_version
    del critic_learner, critic

    artist_config = config.artist.model_copy(update={"dtype": "float32"})
    artist_learner = ArtistLearner(artist_base, config.learner.artist, artist_config, device="cpu")
    artist_learner.load_state(checkpoint)
    adapter = TRAINED_ADAPTER
    if artist_weights == "ema":
        load_adapter_state(artist_learner.transformer, TRAINED_ADAPTER, artist_learner.ema.state_dict())
    elif artist_weights == "sampling":
        adapter = SAMPLING_ADAPTER
    merged = merged_state_dict(artist_learner.transformer, adapter)
    transformer = load_artist(artist_base, dtype="float32", device="cpu").transformer
    transformer.load_state_dict(merged, strict=True)
    write_artist_dir(transformer, artist_base, out / "artist")

    record = {"checkpoint": str(checkpoint), "step": int(manifest["step"]), "run_name": manifest.get("run_name"),
              "critic_base": str(critic_base), "artist_base": str(artist_base), "artist_weights": artist_weights,
              "critic_version": critic_version, "artist_version": artist_learner.version}
    (out / "export.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record
