"""Resolving model sources: the embedded tiny models (built once, cached by recipe) or real checkpoints.

Owns the cache of the embedded default. ``critic.model: embedded`` / ``artist.model: embedded`` resolve to
directories built by ``critic_actor.model.build_tiny_critic`` and ``artist_actor.model.build_tiny_artist``;
the directory name carries a hash of the recipe, so a changed recipe builds a new model and an unchanged one is
reused. Builds go to a temporary directory renamed into place, so a crash never leaves a half-written model
that later runs would load. Actors never see the word "embedded": they receive concrete paths.
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


def resolve_model_paths(config: TrainConfig) -> tuple[Path, Path]:
    """Concrete (critic_dir, artist_dir) for a config; checks that real checkpoint directories exist.

    ``trainer.init_from: DIR`` (a warm start written by ``photocrafter sft``) takes precedence: its ``critic/``
    (transformers layout) and ``artist/`` (diffusers layout) directories are the models the run starts from.
    """
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
