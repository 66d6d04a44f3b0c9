"""Activation bytes per token of the real-size blocks, counted on the CPU: the coefficients of learner/memory.py.

The memory plan (``learner.memory``) needs how many bytes autograd keeps per token for one block of each model
when it is trained through: a Qwen2.5-VL-7B decoder layer (full fine-tune, and LoRA r64 on every linear layer with
a frozen base), a vision block of its tower, a Qwen-Image DiT block (LoRA r32 on the 8 attention projections),
and the critic's logits tail per response token and vocabulary entry. This script builds each block at its real
width in bf16, runs the learner's forward on T tokens under ``torch.autograd.graph.saved_tensors_hooks`` and
counts the distinct storages autograd saves (parameters excluded). Two token counts separate the part linear in
T (what a GPU's flash attention keeps) from the part quadratic in T (attention matrices the CPU's math attention
keeps, which flash attention never stores); the linear part per token and per unit of width is printed next to
the constant the plan uses.

    python -m bench.learner_memory            # ~1-3 min on 2 cores; needs ~8 GiB of RAM
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch


class SavedBytes:
    """Bytes of the distinct non-parameter storages autograd saves inside the context."""

    def __init__(self, params):
        self.params = {p.untyped_storage().data_ptr() for p in params}
        self.storages: dict[int, int] = {}

    def __enter__(self):
        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in self.params:
                self.storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def linear_and_quadratic(measure, tokens: tuple[int, int]) -> tuple[float, float]:
    """Fit bytes(T) = a·T + b·T² through two measurements; returns (a, b)."""
    (t1, t2) = tokens
    y1, y2 = measure(t1), measure(t2)
    b = (y2 / t2 - y1 / t1) / (t2 - t1)
    return y1 / t1 - b * t1, b


def llm_layer(lora: bool):
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLTextModel

    from learner.memory import NOMINAL_CRITIC_CONFIG

    config = Qwen2_5_VLConfig(**NOMINAL_CRITIC_CONFIG).text_config
    config.num_hidden_layers = 1
    config.vocab_size = 16  # the embedding is not part of a layer
    model = Qwen2_5_VLTextModel(config).to(torch.bfloat16)
    if lora:
        inject_adapter_in_model(LoraConfig(r=64, lora_alpha=32, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]), model)
        for name, param in model.named_parameters():
            param.requires_grad_(".lora_" in name)

    def measure(tokens: int) -> int:
        embeds = torch.randn(1, tokens, config.hidden_size, dtype=torch.bfloat16, requires_grad=not lora)
        with SavedBytes(model.parameters()) as saved:
            model(inputs_embeds=embeds, use_cache=False)
        return saved.total

    return measure, config.hidden_size


def vision_block():
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    from learner.memory import NOMINAL_CRITIC_CONFIG

    def tower(depth: int):
        config = Qwen2_5_VLConfig(**NOMINAL_CRITIC_CONFIG).vision_config
        config.depth, config.fullatt_block_indexes = depth, []
        return Qwen2_5_VisionTransformerPretrainedModel(config).to(torch.bfloat16), config

    (one, config), (two, _) = tower(1), tower(2)
    patch = 3 * config.temporal_patch_size * config.patch_size ** 2

    def saved_by(model, grid) -> int:
        pixels = torch.randn(int(grid.prod()), patch, dtype=torch.bfloat16)
        with SavedBytes(model.parameters()) as saved:
            model(pixels, grid_thw=grid)
        return saved.total

    def measure(patches: int) -> int:
        # One block = a two-block tower minus a one-block tower (patch embedding and merger cancel out).
        side = 2 * int(round((patches / 4) ** 0.5))
        grid = torch.tensor([[1, side, side]])
        return saved_by(two, grid) - saved_by(one, grid)

    return measure, config.hidden_size


def dit_block():
    from diffusers import QwenImageTransformer2DModel
    from peft import LoraConfig, inject_adapter_in_model

    from learner.lora import DIT_ATTENTION_PROJECTIONS
    from learner.memory import NOMINAL_DIT_CONFIG

    model = QwenImageTransformer2DModel(**{**NOMINAL_DIT_CONFIG, "num_layers": 1}).to(torch.bfloat16)
    inject_adapter_in_model(LoraConfig(r=32, lora_alpha=64, target_modules=list(DIT_ATTENTION_PROJECTIONS)), model)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name)
    text_tokens = 64

    def measure(image_tokens: int) -> int:
        side = int(round(image_tokens ** 0.5))
        latents = torch.randn(1, side * side, NOMINAL_DIT_CONFIG["in_channels"], dtype=torch.bfloat16)
        text = torch.randn(1, text_tokens, NOMINAL_DIT_CONFIG["joint_attention_dim"], dtype=torch.bfloat16)
        with SavedBytes(model.parameters()) as saved:
            model(hidden_states=latents, encoder_hidden_states=text,
                  encoder_hidden_states_mask=torch.ones(1, text_tokens, dtype=torch.bool),
                  timestep=torch.tensor([0.5], dtype=torch.bfloat16), img_shapes=[[(1, side, side)]],
                  return_dict=False)
        return saved.total

    width = NOMINAL_DIT_CONFIG["num_attention_heads"] * NOMINAL_DIT_CONFIG["attention_head_dim"]
    return measure, width, text_tokens


def logits_tail(vocab: int = 4096, hidden: int = 256):
    from learner.grpo import token_entropy, token_log_probs

    head = torch.nn.Linear(hidden, vocab, bias=False).to(torch.bfloat16)

    def measure(tokens: int) -> int:
        states = torch.randn(1, tokens, hidden, dtype=torch.bfloat16, requires_grad=True)
        targets = torch.randint(0, vocab, (1, tokens))
        with SavedBytes(head.parameters()) as saved:
            logits = head(states).float() / 1.0  # as CriticLearner._forward
            token_log_probs(logits, targets)
            with torch.no_grad():
                token_entropy(logits.detach())
        return saved.total

    return measure, vocab


def main(argv: list[str] | None = None) -> int:
    from learner import memory

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs=2, default=(64, 128), help="two token counts to fit")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = {}
    for name, lora in (("llm_layer_full", False), ("llm_layer_lora", True)):
        measure, width = llm_layer(lora)
        linear, quadratic = linear_and_quadratic(measure, args.tokens)
        rows[name] = {"bytes_per_token": linear, "per_token_per_width": linear / width, "quadratic": quadratic}
    measure, width = vision_block()
    linear, quadratic = linear_and_quadratic(measure, (args.tokens[0] * 4, args.tokens[1] * 4))
    rows["vision_block_full"] = {"bytes_per_token": linear, "per_token_per_width": linear / width,
                                 "quadratic": quadratic}
    measure, width, text_tokens = dit_block()
    # The text stream's share (64 tokens) is constant across the two image sizes: it lands in the fit's offset,
    # so measure per image token and report it for image and text tokens alike (both streams are equally wide).
    y1, y2 = measure(args.tokens[0]), measure(args.tokens[1] * 2)
    per_token = (y2 - y1) / (args.tokens[1] * 2 - args.tokens[0])
    rows["dit_block_lora"] = {"bytes_per_token": per_token, "per_token_per_width": per_token / width,
                              "quadratic": float("nan")}
    measure, vocab = logits_tail()
    linear, _ = linear_and_quadratic(measure, args.tokens)
    rows["logits_tail"] = {"bytes_per_token": linear, "per_token_per_vocab": linear / vocab}
    constants = {"llm_layer_full": memory.LLM_LAYER_BYTES_PER_TOKEN_PER_WIDTH["full"],
                 "llm_layer_lora": memory.LLM_LAYER_BYTES_PER_TOKEN_PER_WIDTH["lora"],
                 "vision_block_full": memory.VISION_BLOCK_BYTES_PER_TOKEN_PER_WIDTH,
                 "dit_block_lora": memory.DIT_BLOCK_BYTES_PER_TOKEN_PER_WIDTH,
                 "logits_tail": memory.LOGITS_BYTES_PER_TOKEN_PER_VOCAB}
    for name, row in rows.items():
        measured = row.get("per_token_per_width", row.get("per_token_per_vocab"))
        print(json.dumps({"block": name, **{k: round(v, 3) for k, v in row.items()},
                          "plan_constant": constants[name], "plan_over_measured": round(constants[name] / measured, 3)}))
    return 0


if __name__ == "__main__":
    from rollout.commands.entry import run_main

    run_main(main, "bench.learner_memory", supervise=True)
