"""LoRA adapters (default / old / reference) on a tiny real QwenImage DiT, and the EMA copy."""

from __future__ import annotations

import pytest
import torch

from learner.config import LoraConfig
from learner.ema import AdapterEMA, ema_decay
from learner.lora import (DIT_ATTENTION_PROJECTIONS, SAMPLING_ADAPTER, TRAINED_ADAPTER, active_adapter,
                          adapter_parameters, adapter_state, adapters_disabled, attach_nft_adapters,
                          load_adapter_state, merged_state_dict, soft_update_adapter)

GRID = (2, 2)  # latent tokens of the target image: 2 × 2


def _tiny_dit(seed: int = 0):
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    return QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                       attention_head_dim=32, num_attention_heads=2, joint_attention_dim=24,
                                       axes_dims_rope=(8, 12, 12)).eval()


def _inputs(batch: int = 2):
    generator = torch.Generator().manual_seed(1)
    tokens = GRID[0] * GRID[1]
    return dict(hidden_states=torch.randn(batch, tokens, 16, generator=generator),
                encoder_hidden_states=torch.randn(batch, 5, 24, generator=generator),
                encoder_hidden_states_mask=torch.ones(batch, 5, dtype=torch.long),
                timestep=torch.full((batch,), 0.5), img_shapes=[[(1, *GRID)]] * batch, return_dict=False)


def _forward(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**_inputs())[0]


@pytest.fixture()
def dit():
    return attach_nft_adapters(_tiny_dit(), LoraConfig(rank=4, alpha=8.0))


def _perturb_trained(model, scale: float = 0.5) -> None:
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in adapter_parameters(model, TRAINED_ADAPTER).values():
            param.add_(scale * torch.randn(param.shape, generator=generator))


def test_adapters_cover_the_eight_attention_projections_and_only_default_trains(dit):
    trained = adapter_parameters(dit, TRAINED_ADAPTER)
    # 2 blocks × 8 projections × (lora_A, lora_B)
    assert len(trained) == 2 * len(DIT_ATTENTION_PROJECTIONS) * 2
    assert all(".default." not in name for name in trained)
    trainable = {name for name, p in dit.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name and ".default." in name for name in trainable)
    assert "transformer_blocks.0.attn.to_out.0.lora_B.weight" in trained


def test_fresh_adapters_leave_the_base_model_unchanged(dit):
    base = _forward(_tiny_dit())
    assert torch.allclose(_forward(dit), base)
    with active_adapter(dit, SAMPLING_ADAPTER):
        assert torch.allclose(_forward(dit), base)


def test_old_and_reference_forwards_differ_from_trained_after_an_update(dit):
    base = _forward(_tiny_dit())
    _perturb_trained(dit)
    trained = _forward(dit)
    assert not torch.allclose(trained, base, atol=1e-4)
    with active_adapter(dit, SAMPLING_ADAPTER):
        assert torch.allclose(_forward(dit), base)  # old is still the initial (zero) update
    with adapters_disabled(dit):
        assert torch.allclose(_forward(dit), base)
    # Back to the trained adapter, trainable again; old stays frozen.
    assert torch.allclose(_forward(dit), trained)
    assert all(p.requires_grad for p in adapter_parameters(dit, TRAINED_ADAPTER).values())
    assert not any(p.requires_grad for p in adapter_parameters(dit, SAMPLING_ADAPTER).values())


def test_soft_update_mixes_old_toward_trained(dit):
    _perturb_trained(dit)
    old_before = adapter_state(dit, SAMPLING_ADAPTER)
    trained = adapter_state(dit, TRAINED_ADAPTER)
    soft_update_adapter(dit, source=TRAINED_ADAPTER, target=SAMPLING_ADAPTER, decay=0.25)
    old_after = adapter_state(dit, SAMPLING_ADAPTER)
    for name in trained:
        assert torch.allclose(old_after[name], 0.25 * old_before[name] + 0.75 * trained[name])
    soft_update_adapter(dit, source=TRAINED_ADAPTER, target=SAMPLING_ADAPTER, decay=0.0)
    with active_adapter(dit, SAMPLING_ADAPTER):
        assert torch.allclose(_forward(dit), _forward_trained(dit))
    with pytest.raises(ValueError, match="decay"):
        soft_update_adapter(dit, source=TRAINED_ADAPTER, target=SAMPLING_ADAPTER, decay=1.5)


def _forward_trained(model) -> torch.Tensor:
    with active_adapter(model, TRAINED_ADAPTER):
        return _forward(model)


def test_adapter_state_loads_through_peft_into_a_fresh_model(dit):
    """The published names are peft's saved-adapter names: set_peft_model_state_dict accepts them as they are."""
    from peft import set_peft_model_state_dict

    _perturb_trained(dit)
    state = adapter_state(dit, TRAINED_ADAPTER)
    receiver = attach_nft_adapters(_tiny_dit(), LoraConfig(rank=4, alpha=8.0))
    result = set_peft_model_state_dict(receiver, state, adapter_name=TRAINED_ADAPTER)
    assert not result.unexpected_keys
    assert torch.allclose(_forward(receiver), _forward(dit))
    # And through this module: into the other adapter, checked by name and shape.
    load_adapter_state(receiver, SAMPLING_ADAPTER, state)
    with active_adapter(receiver, SAMPLING_ADAPTER):
        assert torch.allclose(_forward(receiver), _forward(dit))
    with pytest.raises(KeyError, match="missing"):
        load_adapter_state(receiver, SAMPLING_ADAPTER, dict(list(state.items())[1:]))


def test_merged_weights_reproduce_each_adapter_without_peft(dit):
    _perturb_trained(dit)
    with torch.no_grad():
        for param in adapter_parameters(dit, SAMPLING_ADAPTER).values():
            param.normal_(0, 0.3)
    for adapter in (TRAINED_ADAPTER, SAMPLING_ADAPTER):
        with active_adapter(dit, adapter):
            expected = _forward(dit)
        plain = _tiny_dit(seed=3)  # other base weights: everything must come from the merged state
        plain.load_state_dict(merged_state_dict(dit, adapter), strict=True)
        torch.testing.assert_close(_forward(plain), expected, atol=1e-5, rtol=1e-4)
    with adapters_disabled(dit):
        base = _forward(dit)
    assert (expected - base).abs().max() > 1e-3  # the adapters changed the output, so the check above bites


def test_bf16_model_gets_float32_adapters_that_train():
    model = attach_nft_adapters(_tiny_dit().to(torch.bfloat16), LoraConfig(rank=4, alpha=8.0))
    params = adapter_parameters(model, TRAINED_ADAPTER)
    assert {p.dtype for p in params.values()} == {torch.float32}
    inputs = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v
              for k, v in _inputs().items()}
    model(**inputs)[0].float().square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())


def test_attach_refuses_disabled_lora_and_unknown_targets():
    with pytest.raises(ValueError, match="enabled"):
        attach_nft_adapters(_tiny_dit(), LoraConfig(enabled=False))
    with pytest.raises(ValueError, match="target modules"):
        attach_nft_adapters(_tiny_dit(), LoraConfig(rank=4, target_modules=["no_such_projection"]))


def test_ema_decay_schedule_and_update():
    assert ema_decay(0) == pytest.approx(0.1)
    assert ema_decay(5) == pytest.approx(6 / 15)
    assert ema_decay(1000) == pytest.approx(0.9)
    ema = AdapterEMA({"w": torch.zeros(2)}, cap=0.9)
    assert ema.step({"w": torch.ones(2)}, step=0) == pytest.approx(0.1)
    assert ema.state_dict()["w"].tolist() == pytest.approx([0.9, 0.9])  # 0.1·0 + 0.9·1
    ema.step({"w": torch.zeros(2)}, step=1000)
    assert ema.state_dict()["w"].tolist() == pytest.approx([0.81, 0.81])  # 0.9·0.9 + 0.1·0
    with pytest.raises(KeyError):
        ema.step({"v": torch.zeros(2)}, step=1)
