"""The multi-process presets build the strategies they describe (FSDP is only parsed: it needs GPUs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ROOT / "recipes" / "presets"


def test_ddp_cpu_preset_makes_two_gloo_processes(tmp_path, monkeypatch):
    from lightning.pytorch.strategies import DDPStrategy

    from unigen.cli import instantiate_recipe

    monkeypatch.chdir(tmp_path)
    cli = instantiate_recipe(ROOT / "recipes" / "debug" / "unified_shards_debug.yaml",
                             ["--config", str(PRESETS / "ddp_cpu.yaml")])
    strategy = cli.trainer.strategy
    assert isinstance(strategy, DDPStrategy) and cli.trainer.num_devices == 2
    assert strategy._get_process_group_backend() == "gloo"


def test_ddp_preset_uses_every_gpu_of_every_node():
    trainer = yaml.safe_load((PRESETS / "ddp.yaml").read_text())["trainer"]
    assert trainer == {"accelerator": "gpu", "devices": "auto", "num_nodes": 1, "strategy": "ddp"}


def test_fsdp_preset_parses_into_a_block_wrapped_strategy():
    from jsonargparse import ArgumentError, ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy

    from unigen.modules.transformer import Block

    spec = yaml.safe_load((PRESETS / "fsdp.yaml").read_text())["trainer"]["strategy"]
    assert spec["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(FSDPStrategy, "strategy")
    config = parser.parse_object({"strategy": spec["init_args"]})
    strategy = parser.instantiate(config).strategy
    assert strategy.sharding_strategy.name == "FULL_SHARD"
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {Block}
    assert strategy.kwargs["use_orig_params"] is True  # frozen tokenizer / LoRA base weights
    assert strategy._state_dict_type == "full"
    # a misspelt key is caught by the same parse, and the error names it
    with pytest.raises(ArgumentError, match=r"\bsharding(?!_strategy)"):
        parser.parse_object({"strategy": {**spec["init_args"], "sharding": "FULL_SHARD"}})
