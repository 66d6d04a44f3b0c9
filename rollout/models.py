"""Resolving model sources: the embedded tiny models (built once, cached by recipe) or real checkpoints.

Owns the cache of the embedded default. ``critic.model: embedded`` / ``artist.model: embedded`` resolve to
directories built by ``critic_actor.model.build_tiny_critic`` and ``artist_actor.model.build_tiny_artist``;
``trainer.init_from: embedded`` resolves to a small warm start of those two models (critic SFT, then artist
SFT on the critic's own critiques; :data:`EMBEDDED_WARM_START_RECIPE`) trained once on the embedded training
split, so the embedded default's RL starts from a critic that speaks the grammar. Each directory name carries a
hash of its recipe, so a changed recipe builds anew and an unchanged one is reused. Builds go to a temporary
directory renamed into place, so a crash never leaves a half-written model that later runs would load. Actors never see the word "embedded": they receive concrete paths.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rollout.config import TrainConfig, default_cache_dir


EMBEDDED = "embedded"
"""The value of ``critic.model`` / ``artist.model`` / ``trainer.init_from`` that names the cached tiny models."""

EMBEDDED_WARM_START_RECIPE: dict = {
    "version": 1,
    # The embedded default's own training split (configs/embedded.yaml's data section): built once, shared with
    # the run. 256 pairs: on 32, 1000 critic steps memorise the critiques (loss 0.002) and the G samples of a
    # prompt come out identical, so GRPO has no reward spread to learn from.
    "data": {"image_size": 64, "num_train": 256, "num_eval": 8, "restoration_fraction": 0.25, "seed": 0},
    # 1000 critic steps: below ~500 the tiny critic learns the grammar's marginal, not the photo (its loss sits
    # at ~0.3 and every photo gets one template); 64 vision tokens as in configs/embedded.yaml.
    "critic": {"steps": 1000, "batch_size": 4, "lr": 3e-3},
    "artist": {"steps": 100, "batch_size": 8, "lr": 1e-3},
    "resolution": 64, "max_new_tokens": 96, "min_pixels": 224 * 224, "max_pixels": 224 * 224,
    "seed": 0, "torch_threads": 2,
}
"""What the embedded warm start trains. Sized to build in a few minutes on a 2-core machine (the critic learns
the grammar; the artist learns to keep the photo and follow the tone suggestions roughly); docs/results.md
measures it and RL from it. Changing it builds a new cached warm start."""


@dataclass(frozen=True, slots=True)
class EmbeddedModels:
    critic: Path
    """Directory of the tiny critic (transformers layout)."""
    artist: Path
    """Directory of the tiny artist (diffusers layout)."""


def _recipe_hash(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def ensure_embedded_models(cache_dir: Path | None = None, seed: int = 0) -> EmbeddedModels:
    """Build the tiny critic and artist if their recipe changed; return their directories."""
    from artist_actor.model import TINY_ARTIST_RECIPE, build_tiny_artist
    from critic_actor.model import TINY_CRITIC_RECIPE, build_tiny_critic

    root = Path(cache_dir or default_cache_dir()) / "models"
    root.mkdir(parents=True, exist_ok=True)
    critic_dir = root / f"critic-{_recipe_hash({**TINY_CRITIC_RECIPE, 'seed': seed})}"

    def artist_dir_and_hidden_size() -> tuple[Path, int]:
        hidden = json.loads((critic_dir / "config.json").read_text())
        hidden_size = int(hidden.get("text_config", hidden).get("hidden_size", hidden.get("hidden_size")))
        artist_recipe = {**TINY_ARTIST_RECIPE, "seed": seed, "critic_hidden_size": hidden_size}
        return root / f"artist-{_recipe_hash(artist_recipe)}", hidden_size

    # Built models are renamed into place whole, so when both exist they are complete: no need to wait for the
    # lock, which another process may hold for as long as its own build takes.
    if critic_dir.exists() and artist_dir_and_hidden_size()[0].exists():
        return EmbeddedModels(critic=critic_dir, artist=artist_dir_and_hidden_size()[0])
    with _locked(root / ".lock"):
        if not critic_dir.exists():
            _build_atomically(critic_dir, lambda out: build_tiny_critic(out, seed=seed))
        artist_dir, hidden_size = artist_dir_and_hidden_size()
        if not artist_dir.exists():
            _build_atomically(
                artist_dir, lambda out: build_tiny_artist(out, critic_hidden_size=hidden_size, seed=seed))
    return EmbeddedModels(critic=critic_dir, artist=artist_dir)


def _print_now(line: str) -> None:
    print(line, flush=True)


def ensure_embedded_warm_start(cache_dir: Path | None = None, log=_print_now) -> Path:
    """Build the embedded warm start if its recipe changed; return its directory (``critic/``, ``artist/``).

    Deterministic and offline: the tiny models, the embedded training split (photos the packages ship) and
    seeded SFT with a fixed thread count. The first call trains it (a few minutes on 2 cores; the progress
    is printed); later calls return the cached directory.
    """
    import torch

    from rollout.data.synthesis import ensure_embedded_dataset

    cache = Path(cache_dir or default_cache_dir())
    recipe = EMBEDDED_WARM_START_RECIPE
    models = ensure_embedded_models(cache)
    train_manifest, _ = ensure_embedded_dataset(**recipe["data"], cache_dir=cache / "data")
    key = {**recipe, "critic_model": models.critic.name, "artist_model": models.artist.name,
           "dataset": train_manifest.parent.parent.name}
    root = cache / "models"
    out = root / f"warmstart-{_recipe_hash(key)}"
    with _locked(root / ".lock"):
        if out.exists():
            return out
        from learner.sft import build_warm_start
        from rollout.data.manifest import read_manifest

        log(f"[photocrafter] building the embedded warm start once (cached in {out}): critic SFT "
            f"{recipe['critic']['steps']} steps, artist SFT {recipe['artist']['steps']} steps")
        tasks = read_manifest(train_manifest).tasks
        threads = torch.get_num_threads()
        torch.set_num_threads(recipe["torch_threads"])
        try:
            _build_atomically(out, lambda tmp: build_warm_start(
                models.critic, models.artist, tasks, tmp,
                critic_steps=recipe["critic"]["steps"], critic_batch_size=recipe["critic"]["batch_size"],
                critic_lr=recipe["critic"]["lr"], artist_steps=recipe["artist"]["steps"],
                artist_batch_size=recipe["artist"]["batch_size"], artist_lr=recipe["artist"]["lr"],
                resolution=recipe["resolution"], max_new_tokens=recipe["max_new_tokens"],
                min_pixels=recipe["min_pixels"], max_pixels=recipe["max_pixels"], seed=recipe["seed"],
                log=lambda line: log(f"[photocrafter] warm start: {line}")))
        finally:
            torch.set_num_threads(threads)
    return out


def resolve_model_paths(config: TrainConfig) -> tuple[Path, Path]:
    """Concrete (critic_dir, artist_dir) for a config; checks that real checkpoint directories exist.

    ``trainer.init_from: DIR`` (a warm start written by ``photocrafter sft``) takes precedence: its ``critic/``
    (transformers layout) and ``artist/`` (diffusers layout) directories are the models the run starts from;
    ``trainer.init_from: embedded`` is the cached embedded warm start (built on first use).
    """
    if config.trainer.init_from == EMBEDDED:
        root = ensure_embedded_warm_start()
        return root / "critic", root / "artist"
    if config.trainer.init_from:
        return checkpoint_model_dirs(config.trainer.init_from, "trainer.init_from")
    embedded = None
    if "embedded" in (config.critic.model, config.artist.model):
        embedded = ensure_embedded_models(seed=0)
    paths = []
    for section, value in (("critic", config.critic.model), ("artist", config.artist.model)):
        if value == "embedded":
            paths.append(getattr(embedded, section))
            continue
        path = Path(value).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{section}.model: {value!r} is not a directory; give a local checkpoint "
                                    f"directory or 'embedded'")
        paths.append(path)
    return paths[0], paths[1]


def critic_dir_problems(directory: Path) -> list[str]:
    """What a critic directory (transformers layout) lacks to be loaded; empty when it looks complete."""
    if not directory.is_dir():
        return [f"{directory.name}/"]
    problems = [f"{directory.name}/{name}" for name in ("config.json", "tokenizer_config.json")
                if not (directory / name).is_file()]
    if not any(directory.glob("*.safetensors")) and not any(directory.glob("pytorch_model*.bin")):
        problems.append(f"{directory.name}/ weights (*.safetensors)")
    return problems


def artist_dir_problems(directory: Path) -> list[str]:
    """What an artist directory (diffusers layout) lacks to be loaded; empty when it looks complete."""
    from artist_actor.model import PROJECT_FILE

    if not directory.is_dir():
        return [f"{directory.name}/"]
    problems = []
    transformer = directory / "transformer"
    if not (transformer / "config.json").is_file():
        problems.append(f"{directory.name}/transformer/config.json")
    if not any(transformer.glob("*.safetensors")):
        problems.append(f"{directory.name}/transformer/ weights (*.safetensors)")
    if not (directory / "scheduler" / "scheduler_config.json").is_file():
        problems.append(f"{directory.name}/scheduler/scheduler_config.json")
    # Without the project file the directory is a real checkpoint, whose latents come from its VAE.
    if not (directory / PROJECT_FILE).is_file() and not (directory / "vae" / "config.json").is_file():
        problems.append(f"{directory.name}/vae/config.json")
    return problems


def checkpoint_model_dirs(root: str | Path, option: str, *, partial: bool = False) -> tuple[Path | None, Path | None]:
    """(critic_dir, artist_dir) of a model directory written by ``photocrafter sft`` or ``photocrafter export``.

    ``option`` names where the directory came from (``--checkpoint DIR``) in the error. Both models must be
    there and complete; with ``partial`` either may be absent (``None``: the caller keeps its own), but one that
    is present must be complete and at least one must be present. Raises ``FileNotFoundError`` naming every
    missing part: a directory that was asked for is never silently replaced by other models.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{option} {root}: no such directory")
    critic, artist = root / "critic", root / "artist"
    present = {"critic": critic.is_dir(), "artist": artist.is_dir()}
    problems = []
    if present["critic"] or not partial:
        problems += critic_dir_problems(critic)
    if present["artist"] or not partial:
        problems += artist_dir_problems(artist)
    if partial and not any(present.values()):
        problems = ["critic/", "artist/"]
    if problems:
        hint = ("it is a training run: write its models with `photocrafter export " f"{root} --out DIR` first"
                if (root / "run.json").is_file() else
                "give a directory written by `photocrafter sft --out DIR` or `photocrafter export`")
        raise FileNotFoundError(f"{option} {root} cannot be used: missing {', '.join(problems)}; {hint}")
    return (critic if present["critic"] else None), (artist if present["artist"] else None)


class _locked:
    """An exclusive file lock, so parallel test workers or jobs build each model once."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.handle = open(self.path, "w")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _build_atomically(final_dir: Path, build) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-", dir=final_dir.parent))
    try:
        build(tmp)
        tmp.rename(final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
