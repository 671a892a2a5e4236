"""LoRA adapters: exact start, changed outputs, save/load round trip, merge equivalence, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from unigen.modules.lora import (
    CONFIG_NAME, WEIGHTS_NAME, LoRAConfig, LoRALinear, apply_lora, load_lora, lora_layers,
    lora_state_dict, merge_lora, save_lora,
)


@pytest.fixture()
def net(pipeline_dir):
    from unigen.pipeline import UnifiedPipeline

    return UnifiedPipeline.from_pretrained(pipeline_dir).transformer.eval()


@pytest.fixture()
def tokens(net):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, net.vocab.total_size, (3, net.sequence.length), generator=g)


def _train_adapters(model: nn.Module, seed: int = 1) -> None:
    """Stand-in for training: give every B matrix non-zero values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_b.copy_(torch.randn(layer.lora_b.shape, generator=g) * 0.05)


def test_lora_linear_starts_as_its_base_and_merges_exactly():
    base = nn.Linear(6, 5)
    layer = LoRALinear(copy.deepcopy(base), rank=2, alpha=4.0,
                       generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 6)
    assert torch.equal(layer(x), base(x))  # B = 0: no change before training
    with torch.no_grad():
        layer.lora_b.normal_()
    assert not torch.allclose(layer(x), base(x))
    expected = base(x) + x @ layer.lora_a.T @ layer.lora_b.T * 2.0  # alpha / rank = 2
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.merged()(x), layer(x), atol=1e-6, rtol=1e-5)
    assert not layer.base.weight.requires_grad and layer.lora_a.requires_grad


def test_apply_lora_wraps_exactly_the_targets(net):
    names = apply_lora(net, LoRAConfig(rank=2, targets=["attention"]))
    assert names == [f"blocks.{i}.attn.{p}" for i in range(2) for p in ("qkv", "proj")]
    assert sorted(lora_layers(net)) == sorted(names)
    assert all(isinstance(net.get_submodule(n), LoRALinear) for n in names)
    assert not isinstance(net.blocks[0].mlp.down, LoRALinear)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(net, LoRAConfig())


def test_patterns_presets_and_bad_targets(net):
    assert apply_lora(copy.deepcopy(net), LoRAConfig(targets=["head"])) == ["head.text", "head.image"]
    assert apply_lora(copy.deepcopy(net), LoRAConfig(targets=["*.mlp.down"])) == [
        "blocks.0.mlp.down", "blocks.1.mlp.down"]
    with pytest.raises(ValueError, match="matches no linear layer"):
        apply_lora(net, LoRAConfig(targets=["blocks.*.attention.q"]))
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)


def test_initialisation_depends_only_on_the_seed(net):
    a, b, c = (copy.deepcopy(net) for _ in range(3))
    for model, seed in ((a, 7), (b, 7), (c, 8)):
        apply_lora(model, LoRAConfig(targets=["attention", "mlp"], seed=seed))
    sa, sb, sc = (lora_state_dict(m) for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["blocks.0.attn.qkv.lora_a"], sc["blocks.0.attn.qkv.lora_a"])


def test_adapters_change_outputs_and_round_trip_through_files(net, tokens, tmp_path):
    base_out = net(tokens)
    adapted = copy.deepcopy(net)
    config = LoRAConfig(rank=4, alpha=8.0, targets=["attention", "mlp", "head"])
    apply_lora(adapted, config)
    torch.testing.assert_close(adapted(tokens), base_out)  # untrained adapters: no change
    _train_adapters(adapted)
    out = adapted(tokens)
    legal = torch.isfinite(base_out)  # illegal ids of a position's modality are -inf in both
    assert (out - base_out)[legal].abs().max() > 1e-3
    save_lora(adapted, config, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    reloaded = copy.deepcopy(net)
    assert load_lora(reloaded, tmp_path / "adapter") == config
    assert torch.equal(reloaded(tokens), out)
    saved, own = lora_state_dict(adapted), lora_state_dict(reloaded)
    assert saved.keys() == own.keys() and all(torch.equal(saved[k], own[k]) for k in saved)
    base_keys = set(net.state_dict())
    assert not base_keys & set(saved)  # the adapter file holds adapters only


def test_merged_weights_give_the_adapter_outputs(net, tokens):
    adapted = copy.deepcopy(net)
    apply_lora(adapted, LoRAConfig(rank=4, targets=["all_linear"]))
    _train_adapters(adapted)
    expected = adapted(tokens)
    merged = merge_lora(adapted)
    assert len(merged) == 10 and not lora_layers(adapted)  # 2 blocks x 4 linear + 2 heads
    assert set(adapted.state_dict()) == set(net.state_dict())  # a plain network again
    torch.testing.assert_close(adapted(tokens), expected, atol=2e-5, rtol=1e-4)


def test_adapters_take_the_mode_of_the_layer_they_wrap(net, tokens):
    """A model in eval() draws no LoRA dropout: two passes agree, and equal the merged model."""
    adapted = copy.deepcopy(net)  # in eval()
    apply_lora(adapted, LoRAConfig(rank=4, dropout=0.5, targets=["all_linear"]))
    assert not any(layer.training for layer in lora_layers(adapted).values())
    _train_adapters(adapted)
    first = adapted(tokens)
    assert torch.equal(adapted(tokens), first)
    merged = copy.deepcopy(adapted)
    merge_lora(merged)
    torch.testing.assert_close(merged(tokens), first, atol=2e-5, rtol=1e-4)
    training = copy.deepcopy(net).train()
    apply_lora(training, LoRAConfig(rank=4, dropout=0.5))
    assert all(layer.training for layer in lora_layers(training).values())


def test_loading_onto_other_base_weights_is_refused(net, tmp_path):
    adapted = copy.deepcopy(net)
    config = LoRAConfig(rank=2)
    apply_lora(adapted, config)
    save_lora(adapted, config, tmp_path / "adapter")
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.token_emb.weight.add_(0.01)
    with pytest.raises(ValueError, match="other base weights"):
        load_lora(copy.deepcopy(other), tmp_path / "adapter")
    load_lora(other, tmp_path / "adapter", check_base=False)  # explicitly allowed
    assert len(lora_layers(other)) == 4


def test_a_damaged_adapter_names_the_file(net, tmp_path):
    from unigen import io

    adapted = copy.deepcopy(net)
    apply_lora(adapted, LoRAConfig(rank=2))
    save_lora(adapted, LoRAConfig(rank=2), tmp_path / "adapter")
    state = io.load_safetensors(tmp_path / "adapter" / WEIGHTS_NAME)
    state.pop("blocks.0.attn.qkv.lora_b")
    io.save_safetensors(state, tmp_path / "adapter" / WEIGHTS_NAME)
    with pytest.raises(ValueError, match=rf"{WEIGHTS_NAME}.*missing.*lora_b"):
        load_lora(copy.deepcopy(net), tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match="adapter directory not found"):
        load_lora(net, tmp_path / "nowhere")
