"""Partial and LoRA fine-tuning: freeze presets freeze exactly what they say, FinetuneModule starts
from a pipeline, trains only what it should, and its outputs (merged export, adapter, checkpoint)
agree with each other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unigen.modules.lora import lora_layers
from unigen.training.finetune import TRAIN_PRESETS, FinetuneModule, freeze

ROOT = Path(__file__).resolve().parents[2]
NORMS = {"norm", "norm1", "norm2", "q_norm", "k_norm"}

# what each preset must train, written as rules on the name's parts (not as the presets' patterns)
EXPECTED = {
    "all": lambda parts: True,
    "head": lambda parts: parts[0] == "head",
    "image_head": lambda parts: parts[:2] == ["head", "image"],
    "text_head": lambda parts: parts[:2] == ["head", "text"],
    "attention": lambda parts: parts[0] == "blocks" and parts[2] == "attn",
    "mlp": lambda parts: parts[0] == "blocks" and parts[2] == "mlp",
    "norms": lambda parts: bool(NORMS & set(parts)),
    "embeddings": lambda parts: parts[0] in ("token_emb", "modality_emb", "learned_pos"),
}


@pytest.fixture()
def net(pipeline_dir):
    from unigen.pipeline import UnifiedPipeline

    return UnifiedPipeline.from_pretrained(pipeline_dir).transformer


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_each_preset_trains_exactly_its_parameters(net, preset):
    expected = {n for n, _ in net.named_parameters() if EXPECTED[preset](n.split("."))}
    assert expected  # the rule is not vacuous on this model
    assert set(freeze(net, [preset])) == expected == _trainable(net)


def test_presets_combine_with_patterns(net):
    chosen = freeze(net, ["image_head", "blocks.1.*"])
    assert set(chosen) == {"head.image.weight"} | {n for n, _ in net.named_parameters()
                                                   if n.startswith("blocks.1.")}
    assert set(TRAIN_PRESETS.names()) == {*EXPECTED, "lora"}


def test_an_entry_that_matches_nothing_is_an_error(net, pipeline_dir):
    with pytest.raises(ValueError, match="'blocks.*.atention.*'.*matches no parameter"):
        freeze(net, ["blocks.*.atention.*"])
    with pytest.raises(ValueError, match="'lora'.*matches no parameter"):
        freeze(net, ["lora"])  # no adapters were added
    with pytest.raises(ValueError, match="at least one"):
        freeze(net, [])


def test_finetune_module_starts_from_the_pipeline(pipeline_dir):
    from unigen.io import load_safetensors
    from unigen.training.optim import param_groups

    module = FinetuneModule(str(pipeline_dir), image_size=32,
                            lora={"rank": 2, "targets": ["attention"]},
                            train_only=["lora", "image_head"])
    module.configure_model()
    saved = load_safetensors(pipeline_dir / "transformer" / "model.safetensors")
    state = module.merged_network().state_dict()  # B = 0: merging changes nothing yet
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    lora = {f"{name}.{p}" for name in lora_layers(module.net) for p in ("lora_a", "lora_b")}
    assert _trainable(module.net) == lora | {"head.image.weight"}
    optimised = {id(p) for g in param_groups(module.net, 0.1) for p in g["params"]}
    assert optimised == {id(p) for p in module.net.parameters() if p.requires_grad}
    assert module.image_tokenizer is not None and not any(
        p.requires_grad for p in module.image_tokenizer.parameters())


def test_a_finetuned_pipeline_records_the_tasks_of_both_runs(pipeline_dir, tmp_path):
    from unigen.pipeline import UnifiedPipeline

    base = UnifiedPipeline.from_pretrained(pipeline_dir).trained_tasks
    assert base  # the unified module's export records its mixture
    module = FinetuneModule(str(pipeline_dir), image_size=32, tasks={"inpaint": 1.0})
    module.configure_model()
    module.to_pipeline().save_pretrained(tmp_path / "tuned")
    assert UnifiedPipeline.from_pretrained(tmp_path / "tuned").trained_tasks == sorted({*base, "inpaint"})


def test_a_finetune_refuses_another_attention_than_its_pipeline_trained_with(tokenizer_dirs, tmp_path):
    from unigen.training.unified_module import UnifiedModule

    UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4,
                  prefix_attention=False).export(tmp_path / "full")
    with pytest.raises(ValueError, match="was trained without prefix attention; set "
                                         "model.init_args.prefix_attention: false"):
        FinetuneModule(str(tmp_path / "full"), image_size=32).configure_model()
    FinetuneModule(str(tmp_path / "full"), image_size=32, prefix_attention=False).configure_model()


def test_finetune_module_checks_image_size_and_options(pipeline_dir):
    with pytest.raises(ValueError, match="image_size: 32"):
        FinetuneModule(str(pipeline_dir), image_size=64).configure_model()
    with pytest.raises(ValueError, match="adapter_dir needs lora"):
        FinetuneModule(str(pipeline_dir), adapter_dir="x")
    with pytest.raises(ValueError, match="LoRA rank"):
        FinetuneModule(str(pipeline_dir), lora={"rank": 0})


def test_an_adapter_dir_with_other_trained_parts_is_refused(pipeline_dir):
    # the adapter keeps LoRA weights only: a trained head would be lost and merge-lora would refuse
    # the adapter as made for other base weights, so this is refused before any training
    lora = {"rank": 2, "targets": ["attention"]}
    for train_only in (["lora", "head"], ["blocks.1.*"]):
        with pytest.raises(ValueError, match=r"adapter_dir holds LoRA weights only.*train only "
                                             r"\[lora\].*--export_dir") as err:
            FinetuneModule(str(pipeline_dir), image_size=32, lora=lora, train_only=train_only,
                           adapter_dir="x")
        assert repr(train_only[-1]) in str(err.value)
    for train_only in (None, ["lora"], ["blocks.1.*.lora_a", "*.lora_b"]):  # adapters only: fine
        FinetuneModule(str(pipeline_dir), image_size=32, lora=lora, train_only=train_only,
                       adapter_dir="x")
    # without adapter_dir the head may train alongside (exported whole with --export_dir)
    FinetuneModule(str(pipeline_dir), image_size=32, lora=lora, train_only=["lora", "head"])


def test_lora_fit_trains_adapters_only_and_its_outputs_agree(pipeline_dir, shard_dir, tmp_path,
                                                            monkeypatch):
    from unigen.cli import main
    from unigen.io import load_safetensors
    from unigen.training.checkpoint import load_module_from_checkpoint

    monkeypatch.chdir(tmp_path)
    # the recipe as shipped (only paths changed): its adapter must merge into its base below
    main(["fit", "--config", str(ROOT / "recipes" / "debug" / "finetune_lora_debug.yaml"),
          "--model.init_args.init_from", str(pipeline_dir),
          "--model.init_args.adapter_dir", str(tmp_path / "adapter"),
          "--data.init_args.path", str(shard_dir), "--trainer.max_steps", "4",
          "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
          "--export_dir", str(tmp_path / "merged")])
    base = load_safetensors(pipeline_dir / "transformer" / "model.safetensors")
    merged = load_safetensors(tmp_path / "merged" / "transformer" / "model.safetensors")
    adapter = load_safetensors(tmp_path / "adapter" / "adapter_model.safetensors")
    assert set(merged) == set(base)  # a plain pipeline
    assert all(adapter[k].abs().max() > 0 for k in adapter if k.endswith("lora_b"))  # trained
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed == {f"blocks.{i}.attn.{p}.weight" for i in range(2) for p in ("qkv", "proj")}

    # the checkpoint rebuilds the module from its own arguments: base untouched, same adapters
    ckpt = next(tmp_path.rglob("last.ckpt"))
    module = load_module_from_checkpoint(ckpt)
    assert isinstance(module, FinetuneModule)
    state = module.net.state_dict()
    assert all(torch.equal(state[k.replace("attn.qkv.", "attn.qkv.base.")
                                 .replace("attn.proj.", "attn.proj.base.")], v)
               for k, v in base.items())
    assert all(torch.equal(state[k], v) for k, v in adapter.items())

    # merging the adapter file into the base pipeline gives the exported model
    assert main(["merge-lora", "--model", str(pipeline_dir), "--adapter", str(tmp_path / "adapter"),
                 "--out", str(tmp_path / "remerged")]) == 0
    remerged = load_safetensors(tmp_path / "remerged" / "transformer" / "model.safetensors")
    assert all(torch.equal(remerged[k], merged[k]) for k in merged)
    tasks = [json.loads((tmp_path / d / "pipeline.json").read_text())["trained_tasks"] for d in ("merged", "remerged")]
    assert tasks[0] == tasks[1]  # the adapter carries what it learned


def test_activation_checkpointing_recomputes_the_blocks_for_the_same_adapter_gradients(
        pipeline_dir):
    from unigen.data.shapes import ShapesDataset

    data = ShapesDataset("train", 4, 32, seed=0)
    items = [data[i] for i in range(4)]
    batch = {"image": torch.stack([x["image"] for x in items]),
             **{k: [x[k] for x in items] for k in ("caption", "question", "answer")}}

    def adapter_grads(on: bool) -> tuple[dict[str, torch.Tensor], int]:
        module = FinetuneModule(str(pipeline_dir), image_size=32, lora={"rank": 2, "seed": 0},
                                activation_checkpointing=on)
        module.configure_model()
        assert module.net.activation_checkpointing is on
        calls = []
        hooks = [b.register_forward_pre_hook(lambda *_: calls.append(1)) for b in module.net.blocks]
        gen = torch.Generator().manual_seed(0)
        tb, assignment = module.mixture.build(module.task_inputs(batch), module.space, gen)
        module.diffusion_loss(tb, gen, assignment)[0].backward()
        for hook in hooks:
            hook.remove()
        return ({n: p.grad for n, p in module.net.named_parameters() if p.requires_grad},
                len(calls))

    off, calls_off = adapter_grads(False)
    on, calls_on = adapter_grads(True)
    assert off.keys() == on.keys() and all(k.endswith(("lora_a", "lora_b")) for k in on)
    assert all(torch.allclose(on[k], off[k], atol=1e-6) for k in on)
    assert any(bool(g.abs().sum() > 0) for g in on.values())
    assert (calls_off, calls_on) == (2, 4)  # two blocks, each run again in backward
