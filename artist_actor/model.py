"""Loading the Photographic Artist (tiny embedded or real Qwen-Image-Edit checkpoint) and building the tiny one.

Owns the artist directory layout and the one loading path every consumer uses (sampler actors, the
DiffusionNFT learner, ``enhance``): ``load_artist(path)`` reads a diffusers-layout directory —
``transformer/`` (``QwenImageTransformer2DModel``), ``vae/`` (``AutoencoderKLQwenImage``), ``scheduler/``
(the flow-matching scheduler config) — and picks the latent codec and the edit prediction. A real checkpoint uses
its VAE and predicts velocity; the embedded tiny artist carries ``photocrafter_artist.json`` naming the lossless
pixel-unshuffle codec, its downscale (see ``artist_actor.codec`` for why a tiny random VAE cannot be used for
photos) and the input-residual prediction (see ``artist_actor.conditioning.predict_velocity``).

It must not know about Ray, rewards or training: adapters are added by the learner (peft) and by the sampler
actor when weights arrive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from artist_actor.codec import LatentCodec, PixelUnshuffleCodec, VaeCodec
from artist_actor.conditioning import EDIT_PREDICTIONS, PREDICTION_ATTRIBUTE, EditPrediction

DIT_ATTENTION_PROJECTIONS: tuple[str, ...] = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
)
"""QwenImageTransformer2DModel's joint-attention projections (image stream, then text stream): the modules
DiffusionNFT's LoRA adapts on a real checkpoint."""

PROJECT_FILE = "photocrafter_artist.json"
"""File in an artist directory written by :func:`build_tiny_artist`: which codec the directory's DiT expects."""

QWEN_IMAGE_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
}
"""The Qwen-Image flow-matching scheduler config (ALGORITHMS.md §4.3): dynamic exponential shift, terminal 0.02."""

TINY_CODEC_DOWNSCALE = 2
"""The embedded artist's pixel-unshuffle downscale: 12 channels at 1/2, packed 2×2 → 48 features per token."""

TINY_ARTIST_RECIPE: dict[str, Any] = {
    "codec": "pixel_unshuffle",
    "codec_downscale": TINY_CODEC_DOWNSCALE,
    # The DiT predicts the edited photo as the condition photo plus a correction: a 2-layer DiT cannot carry a
    # photo's detail through its own output, and with this prediction it does not have to (docs/results.md).
    "prediction": "input_residual",
    # The output projection starts at zero, so the fresh DiT's edit is exactly its input (the identity edit)
    # whatever the noise and conditioning: training starts from "leave the photo alone", the edit that already
    # collects r_photo's credit on every attribute the target did not change, not from random noise 57 grey
    # levels away (DiT's adaLN-Zero initialisation does the same for its final layer).
    "zero_output": True,
    # ... which also means no gradient reaches anything before the output projection until it moves, so the
    # DiffusionNFT LoRA adapts it too (rank 8 of its 128 → 48 map); real checkpoints keep the 8 attention
    # projections DiffusionNFT adapts.
    "lora_targets": [*DIT_ATTENTION_PROJECTIONS, "proj_out"],
    "transformer": {
        "patch_size": 2,
        # 48 features per token (4×4 RGB pixels) into an inner width of 4 × 32 = 128: no bottleneck.
        "in_channels": 4 * 3 * TINY_CODEC_DOWNSCALE ** 2,
        "out_channels": 3 * TINY_CODEC_DOWNSCALE ** 2,
        "num_layers": 2,
        "attention_head_dim": 32,
        "num_attention_heads": 4,
        "axes_dims_rope": [8, 12, 12],  # sums to the head dim, as (16, 56, 56) does for 128
    },
    "vae": {
        "base_dim": 16,
        "z_dim": 16,
        "dim_mult": [1, 2, 2, 2],
        "num_res_blocks": 1,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
    },
    "scheduler": QWEN_IMAGE_SCHEDULER_CONFIG,
}
"""Everything that determines the embedded artist's weights besides the seed and the critic hidden size.
``rollout.models`` hashes it: any change here builds a new cached model."""

CodecChoice = Literal["auto", "vae", "pixel_unshuffle"]


@dataclass(slots=True)
class ArtistModel:
    """A loaded artist: the DiT, the latent codec its tokens come from, and its scheduler config."""

    transformer: torch.nn.Module
    """``QwenImageTransformer2DModel`` in eval mode (no adapters)."""
    codec: LatentCodec
    """Photos ⇄ latents ``[B, C, H/8, W/8]``; C · 4 equals the DiT's ``in_channels``."""
    scheduler_config: dict[str, Any]
    """Flow-matching scheduler config (``scheduler/scheduler_config.json``)."""
    path: Path
    """The directory it was loaded from."""
    lora_targets: tuple[str, ...] = DIT_ATTENTION_PROJECTIONS
    """Modules a LoRA adapts when the config names none (:func:`artist_lora_targets`)."""
    prediction: EditPrediction = "velocity"
    """What the DiT's output means (``velocity`` for real checkpoints; see ``predict_velocity``); also set on
    ``transformer`` so every caller of ``predict_velocity`` reads it from the network it runs."""

    @property
    def hidden_size(self) -> int:
        """D of the H_c the DiT accepts (its ``joint_attention_dim`` = the critic's hidden size)."""
        return int(self.transformer.config.joint_attention_dim)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` → bfloat16 on CUDA, float32 elsewhere; names map to torch dtypes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"artist dtype {dtype!r} is not one of auto, {', '.join(table)}")
    return table[dtype]


def artist_codec_choice(path: str | Path) -> tuple[str, int]:
    """(codec name, pixel-unshuffle downscale) an artist directory's DiT was built for.

    The project file's choice, else ``("vae", 8)`` (a real checkpoint). Project files written before the
    downscale was recorded used 8.
    """
    project = Path(path) / PROJECT_FILE
    if project.is_file():
        recorded = json.loads(project.read_text())
        return str(recorded["codec"]), int(recorded.get("recipe", {}).get("codec_downscale", 8))
    return "vae", 8


def artist_prediction(path: str | Path) -> EditPrediction:
    """What an artist directory's DiT predicts: the project file's choice, else ``velocity`` (real checkpoints
    and tiny artists built before the choice was recorded)."""
    project = Path(path) / PROJECT_FILE
    if project.is_file():
        prediction = json.loads(project.read_text()).get("recipe", {}).get("prediction", "velocity")
        if prediction not in EDIT_PREDICTIONS:
            raise ValueError(f"{project}: unknown prediction {prediction!r}; expected one of {EDIT_PREDICTIONS}")
        return prediction
    return "velocity"


def artist_lora_targets(path: str | Path) -> tuple[str, ...]:
    """The modules a LoRA of this artist adapts by default: the project file's list (the embedded artist adds
    its zero-initialised output projection), else the 8 attention projections (real checkpoints)."""
    project = Path(path) / PROJECT_FILE
    if project.is_file():
        targets = json.loads(project.read_text()).get("recipe", {}).get("lora_targets")
        if targets:
            return tuple(targets)
    return DIT_ATTENTION_PROJECTIONS


def load_artist(
    path: str | Path,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    codec: CodecChoice = "auto",
) -> ArtistModel:
    """Load an artist directory (tiny or real) through the diffusers ``from_pretrained`` paths.

    ``codec="auto"`` uses the directory's own choice (pixel-unshuffle for the embedded artist, the VAE for real
    checkpoints). Raises ``FileNotFoundError`` naming the missing part, and ``ValueError`` when the chosen
    codec's features per token do not match the DiT's ``in_channels``.
    """
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    root = Path(path).expanduser()
    for part in ("transformer", "scheduler"):
        if not (root / part).is_dir():
            raise FileNotFoundError(f"artist directory {root} has no {part}/ (expected the diffusers layout: "
                                    f"transformer/, vae/, scheduler/)")
    target_device = torch.device(device) if device is not None else torch.device("cpu")
    torch_dtype = resolve_dtype(dtype, target_device)
    transformer = QwenImageTransformer2DModel.from_pretrained(root / "transformer", torch_dtype=torch_dtype)
    transformer.to(target_device).eval().requires_grad_(False)

    recorded_codec, downscale = artist_codec_choice(root)
    codec_name = recorded_codec if codec == "auto" else codec
    if codec_name == "pixel_unshuffle":
        latent_codec: LatentCodec = PixelUnshuffleCodec(downscale)
    elif codec_name == "vae":
        if not (root / "vae").is_dir():
            raise FileNotFoundError(f"artist directory {root} has no vae/ but its codec is 'vae'")
        # The VAE stays float32: it runs twice per edit and bf16 VAE decoding visibly bands photos.
        vae = AutoencoderKLQwenImage.from_pretrained(root / "vae", torch_dtype=torch.float32)
        latent_codec = VaeCodec(vae.to(target_device).eval().requires_grad_(False))
    else:
        raise ValueError(f"unknown artist codec {codec_name!r}; use vae or pixel_unshuffle")

    in_channels = int(transformer.config.in_channels)
    if 4 * latent_codec.latent_channels != in_channels:
        raise ValueError(
            f"codec {codec_name!r} gives {4 * latent_codec.latent_channels} features per token but the DiT in "
            f"{root / 'transformer'} expects in_channels={in_channels}; use artist.codec: auto")
    scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    prediction = artist_prediction(root)
    setattr(transformer, PREDICTION_ATTRIBUTE, prediction)
    return ArtistModel(transformer=transformer, codec=latent_codec, scheduler_config=scheduler_config, path=root,
                       lora_targets=artist_lora_targets(root), prediction=prediction)


def build_tiny_artist(
    out_dir: Path, critic_hidden_size: int, seed: int = 0, codec: Literal["pixel_unshuffle", "vae"] | None = None
) -> Path:
    """Build the tiny random artist offline and deterministically in the diffusers layout; return ``out_dir``.

    ``critic_hidden_size`` becomes the DiT's ``joint_attention_dim``. ``codec`` overrides the recipe's codec
    (``vae`` builds a DiT with 64 input features so the tiny random VAE's path can be exercised end to end).
    """
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    if critic_hidden_size <= 0:
        raise ValueError(f"critic_hidden_size must be positive; got {critic_hidden_size}")
    codec_name = codec or TINY_ARTIST_RECIPE["codec"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    transformer_config = dict(TINY_ARTIST_RECIPE["transformer"], joint_attention_dim=int(critic_hidden_size))
    transformer_config["axes_dims_rope"] = tuple(transformer_config["axes_dims_rope"])
    vae_config = TINY_ARTIST_RECIPE["vae"]
    if codec_name == "vae":
        transformer_config.update(in_channels=4 * vae_config["z_dim"], out_channels=vae_config["z_dim"])

    # Separate seeded generators per part: the DiT's weights do not depend on the VAE's recipe and vice versa.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = QwenImageTransformer2DModel(**transformer_config)
        if TINY_ARTIST_RECIPE.get("zero_output"):
            with torch.no_grad():
                transformer.proj_out.weight.zero_()
                transformer.proj_out.bias.zero_()
        torch.manual_seed(seed + 1)
        vae = AutoencoderKLQwenImage(**vae_config)
    transformer.save_pretrained(out / "transformer")
    vae.save_pretrained(out / "vae")
    FlowMatchEulerDiscreteScheduler(**TINY_ARTIST_RECIPE["scheduler"]).save_pretrained(out / "scheduler")
    (out / PROJECT_FILE).write_text(json.dumps({
        "codec": codec_name,
        "critic_hidden_size": int(critic_hidden_size),
        "seed": seed,
        "recipe": TINY_ARTIST_RECIPE,
    }, indent=2, sort_keys=True))
    return out
