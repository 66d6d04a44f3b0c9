"""The tiny critic: built offline, loaded through the real Auto classes, generates; its inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage import data

from critic_actor.grammar import render_critique
from critic_actor.inputs import build_critic_inputs, fit_to_pixel_bounds, pixel_bounded_size, resolve_image
from critic_actor.model import TINY_CRITIC_RECIPE, load_critic, load_critic_processor, vision_special_token_ids
from rollout.records.types import EditOp


@pytest.fixture(scope="module")
def critic(embedded_models):
    model, processor = load_critic(embedded_models.critic, dtype="float32", device="cpu")
    return model, processor


def test_recipe_is_json_and_vllm_compatible():
    json.dumps(TINY_CRITIC_RECIPE)
    text = TINY_CRITIC_RECIPE["text"]
    assert text["hidden_size"] // text["num_attention_heads"] >= 32
    assert sum(text["mrope_section"]) * 2 == text["hidden_size"] // text["num_attention_heads"]


def test_tiny_critic_loads_through_auto_classes_with_a_small_grammar_vocabulary(critic, embedded_models):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, processor = critic
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(AutoModelForImageTextToText.from_pretrained(embedded_models.critic)) is type(model)
    assert type(AutoProcessor.from_pretrained(embedded_models.critic)).__name__ == "Qwen2_5_VLProcessor"
    tokenizer = processor.tokenizer
    assert 500 <= len(tokenizer) <= 4096
    assert model.config.text_config.vocab_size == len(tokenizer)
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    target = render_critique("The photo is too dark.", [EditOp(attribute="exposure", direction=1, level=1)], 40)
    ids = tokenizer(target)["input_ids"]
    assert tokenizer.decode(ids) == target
    assert len(ids) < len(target) / 2  # the grammar's words were learned as whole tokens
    suppressed = vision_special_token_ids(tokenizer)
    assert model.config.image_token_id in suppressed and model.config.vision_start_token_id in suppressed
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") not in suppressed


def test_tiny_critic_generates_from_an_image_without_vision_tokens(critic):
    import torch

    model, processor = critic
    image = fit_to_pixel_bounds(data.astronaut(), 3136, 12544)
    inputs = build_critic_inputs(processor, image)
    assert int(inputs["image_grid_thw"].prod()) // 4 == int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert inputs["mm_token_type_ids"].shape == inputs["input_ids"].shape
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=True, top_k=0,
                             suppress_tokens=vision_special_token_ids(processor.tokenizer))
    generated = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert 1 <= len(generated) <= 12
    assert not set(generated) & set(vision_special_token_ids(processor.tokenizer))


def test_build_is_deterministic_from_the_seed(tmp_path, embedded_models):
    from safetensors.numpy import load_file

    from critic_actor.model import build_tiny_critic

    rebuilt = build_tiny_critic(tmp_path / "again", seed=0)
    a, b = load_file(embedded_models.critic / "model.safetensors"), load_file(rebuilt / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert (rebuilt / "tokenizer.json").read_text() == (embedded_models.critic / "tokenizer.json").read_text()


@pytest.mark.parametrize("height, width", [(512, 512), (40, 300), (1000, 30), (100, 100), (28, 28)])
def test_pixel_bounds_are_respected_and_kept_by_the_processor(height, width, critic):
    h, w = pixel_bounded_size(height, width, 3136, 12544)
    assert h % 28 == 0 and w % 28 == 0 and 3136 <= h * w <= 12544
    image = fit_to_pixel_bounds(np.zeros((height, width, 3), np.uint8), 3136, 12544)
    assert image.shape == (h, w, 3)
    grid = critic[1].image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0].tolist()
    assert grid == [1, h // 14, w // 14]


def test_processor_bounds_can_be_overridden(embedded_models):
    processor = load_critic_processor(embedded_models.critic, min_pixels=28 * 28, max_pixels=56 * 56)
    grid = processor.image_processor(images=[np.zeros((512, 512, 3), np.uint8)], return_tensors="pt")["image_grid_thw"]
    assert grid[0].tolist() == [1, 4, 4]
    with pytest.raises(ValueError, match="exceeds"):
        load_critic_processor(embedded_models.critic, min_pixels=10_000, max_pixels=5_000)


def test_bad_images_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        resolve_image(np.zeros((8, 8, 3), np.uint16), "task 't1' input")
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        resolve_image(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="no file"):
        resolve_image(str(tmp_path / "missing.png"))
    from PIL import Image

    Image.fromarray(data.chelsea()).save(tmp_path / "cat.png")
    assert resolve_image(str(tmp_path / "cat.png")).shape == data.chelsea().shape


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_critic(tmp_path)
