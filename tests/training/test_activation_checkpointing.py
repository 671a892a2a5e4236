"""Activation checkpointing of the unified transformer (``activation_checkpointing: true``): the
same loss and gradients, a fraction of the memory kept for backward, every block recomputed in
backward, nothing changed at inference or in the saved config, and refused next to FSDP's own
policy."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy

from unigen.data.shapes import ShapesDataset
from unigen.modules.transformer import Block
from unigen.training.ar_module import AutoregressiveModule
from unigen.training.unified_module import UnifiedModule

TASKS = {"t2i": 1.0, "caption": 1.0, "vqa": 1.0, "joint": 0.5}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def batch_of(n=6, size=32):
    ds = ShapesDataset("train", n, size, seed=0)
    items = [ds[i] for i in range(n)]
    return {"image": torch.stack([x["image"] for x in items]),
            **{k: [x[k] for x in items] for k in ("caption", "question", "answer")}}


def make(tokenizer_dirs, cls=UnifiedModule, **kw):
    args = dict(image_size=32, max_text_len=24, dim=64, depth=2, heads=4, cond_dropout=0.0,
                **tokenizer_dirs)
    if cls is UnifiedModule:
        args["tasks"] = TASKS
    args.update(kw)
    torch.manual_seed(0)  # the same weights with the option on and off
    module = cls(**args)
    module.configure_model()
    return module


def with_codes(module, batch):
    return {**batch, "codes": module.image_tokenizer.encode(batch["image"])}


def training_loss(module, batch, step=0, dropout_seed=None):
    """The loss of a training step (the task, mask and dropout draws fixed by ``step``)."""
    torch.manual_seed(1000 + step if dropout_seed is None else dropout_seed)  # dropout's generator
    gen = torch.Generator().manual_seed(step)
    if isinstance(module, AutoregressiveModule):
        tb = module.task.build(module.task_inputs(batch), module.space, gen)
        return module.next_token_loss(tb, gen)
    tb, assignment = module.mixture.build(module.task_inputs(batch), module.space, gen)
    return module.diffusion_loss(tb, gen, assignment)[0]


def train_steps(module, batch, steps=2):
    """Losses and the last step's gradients of ``steps`` SGD steps, and the global RNG after."""
    opt = torch.optim.SGD(module.net.parameters(), lr=0.1)
    losses = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = training_loss(module, batch, step)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.net.named_parameters() if p.grad is not None}
        opt.step()
        losses.append(loss.detach())
    return losses, grads, torch.rand(4)


class BlockCalls:
    """Calls of the blocks, recomputations included (a pre-hook: checkpoint's recomputation stops
    once it has remade what backward needs, before the block returns)."""

    def __init__(self, net):
        self.count = 0
        self.handles = [b.register_forward_pre_hook(self.hook) for b in net.blocks]

    def hook(self, module, args):
        self.count += 1

    def close(self):
        for h in self.handles:
            h.remove()


def saved_bytes(net, fn):
    """``fn()`` and the bytes autograd saved for backward meanwhile (each storage once, parameters
    excluded; a checkpoint's kept inputs are saved through autograd, so they count)."""
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


CASES = {
    "sdpa": dict(cls=UnifiedModule),
    "sdpa-dropout": dict(cls=UnifiedModule, dropout=0.1),
    "split-dropout": dict(cls=UnifiedModule, dropout=0.1, attention="split"),
    "rope-complementary": dict(cls=UnifiedModule, position="rope", complementary_masking=True,
                               cond_dropout=0.2),
    "ar-causal-dropout": dict(cls=AutoregressiveModule, dropout=0.1, cond_dropout=0.2),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_same_losses_and_gradients_with_and_without(tokenizer_dirs, case):
    off, on = make(tokenizer_dirs, **CASES[case]), make(tokenizer_dirs, activation_checkpointing=True,
                                                        **CASES[case])
    assert (off.net.activation_checkpointing, on.net.activation_checkpointing) == (False, True)
    batch = with_codes(off, batch_of())
    calls = BlockCalls(on.net)
    losses_off, grads_off, rng_off = train_steps(off, batch)
    losses_on, grads_on, rng_on = train_steps(on, batch)
    calls.close()
    assert calls.count == 2 * 2 * on.net.depth  # the option did something: every block twice a step
    for a, b in zip(losses_off, losses_on):
        assert torch.equal(a, b), (a, b)
    assert grads_off.keys() == grads_on.keys() and len(grads_off) == len(list(off.net.parameters()))
    for name, g in grads_off.items():
        torch.testing.assert_close(grads_on[name], g, rtol=0, atol=1e-6, msg=name)
    assert torch.equal(rng_off, rng_on)  # the recomputation left the global RNG where it was
    if off.hparams.dropout > 0:  # dropout is live: the same step with other dropout draws differs
        fresh = make(tokenizer_dirs, **CASES[case])
        assert torch.equal(training_loss(fresh, batch), losses_off[0])
        assert not torch.equal(training_loss(fresh, batch, dropout_seed=7), losses_off[0])


@pytest.mark.parametrize("cls", [UnifiedModule, AutoregressiveModule], ids=["masked", "ar"])
def test_keeps_a_fraction_of_the_activations_and_recomputes_every_block(tokenizer_dirs, cls):
    off, on = (make(tokenizer_dirs, cls, depth=4, activation_checkpointing=flag) for flag in (False, True))
    batch = with_codes(off, batch_of())
    result = {}
    for name, module in (("off", off), ("on", on)):
        calls = BlockCalls(module.net)
        loss, saved = saved_bytes(module.net, lambda: training_loss(module, batch))
        forward_calls = calls.count
        loss.backward()
        result[name] = (saved, forward_calls, calls.count)
        calls.close()
    (saved_off, fwd_off, all_off), (saved_on, fwd_on, all_on) = result["off"], result["on"]
    assert saved_on < 0.5 * saved_off, (saved_on, saved_off)
    assert (fwd_off, all_off) == (4, 4)  # without: each block once
    assert (fwd_on, all_on) == (4, 8)  # with: once forward, once more in backward
    # what it keeps per block: its input, one hidden state [B, S, D] (float32)
    hidden = len(batch["caption"]) * on.space.sequence.length * on.net.dim * 4
    on_deep = make(tokenizer_dirs, cls, depth=6, activation_checkpointing=True)
    _, saved_deep = saved_bytes(on_deep.net, lambda: training_loss(on_deep, batch))
    assert saved_deep - saved_on == 2 * hidden


def test_eval_and_no_grad_are_unchanged_and_recompute_nothing(tokenizer_dirs):
    off, on = make(tokenizer_dirs), make(tokenizer_dirs, activation_checkpointing=True)
    batch = with_codes(off, batch_of())
    tb, _ = off.mixture.build(off.task_inputs(batch), off.space, torch.Generator().manual_seed(0))
    outs = []
    for module in (off, on):
        module.net.eval()
        calls = BlockCalls(module.net)
        with torch.no_grad():
            logits = module.net(tb.tokens, tb.prefix)
            cache = module.net.prefill(tb.tokens, tb.prefix[0])
            cached = module.net.forward_cached(tb.tokens, cache)
        outs.append((logits, cached))
        assert calls.count == 3 * module.net.depth  # forward, prefill, cached forward: once each
        calls.close()
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_not_in_the_exported_config_and_off_after_reloading(tokenizer_dirs, tmp_path):
    from unigen.pipeline import UnifiedPipeline

    make(tokenizer_dirs).export(tmp_path / "off")
    on = make(tokenizer_dirs, activation_checkpointing=True)
    assert "activation_checkpointing" not in on.net.config
    on.export(tmp_path / "on")
    configs = [json.loads((tmp_path / d / "transformer" / "config.json").read_text()) for d in ("off", "on")]
    assert configs[0] == configs[1]
    pipe = UnifiedPipeline.from_pretrained(tmp_path / "on")
    assert pipe.transformer.activation_checkpointing is False
    for k, v in on.net.state_dict().items():
        assert torch.equal(pipe.transformer.state_dict()[k], v), k


def test_hparams_saved_before_the_option_build_without_it(tokenizer_dirs):
    for cls in (UnifiedModule, AutoregressiveModule):
        module = cls(image_size=32, dim=32, depth=1, heads=4, **tokenizer_dirs)
        assert module.hparams.activation_checkpointing is False
        del module.hparams["activation_checkpointing"]  # a checkpoint from before the option
        module.configure_model()
        assert module.net.activation_checkpointing is False


def policy_strategy():
    """recipes/presets/fsdp.yaml's strategy (an FSDPStrategy is built on a CPU; only a Trainer
    refuses to run it there)."""
    return FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing_policy={Block})


@pytest.mark.parametrize("cls", [UnifiedModule, AutoregressiveModule], ids=["masked", "ar"])
def test_refused_next_to_fsdp_activation_checkpointing_policy(tokenizer_dirs, cls):
    kwargs = dict(image_size=32, dim=32, depth=1, heads=4, **tokenizer_dirs)
    both = cls(activation_checkpointing=True, **kwargs)
    both._trainer = SimpleNamespace(strategy=policy_strategy())  # as Trainer.fit attaches it
    with pytest.raises(ValueError, match="activation_checkpointing: true and the FSDP strategy's "
                                         "activation_checkpointing_policy"):
        both.configure_model()
    # built before the strategy arrived (export, an earlier fit): refused all the same
    built = cls(activation_checkpointing=True, **kwargs)
    built.configure_model()
    built._trainer = SimpleNamespace(strategy=policy_strategy())
    with pytest.raises(ValueError, match="activation_checkpointing_policy"):
        built.configure_model()
    # either one alone is fine
    fsdp_only = cls(**kwargs)
    fsdp_only._trainer = SimpleNamespace(strategy=policy_strategy())
    fsdp_only.configure_model()
    assert fsdp_only.net.activation_checkpointing is False
    no_policy = cls(activation_checkpointing=True, **kwargs)
    no_policy._trainer = SimpleNamespace(strategy=FSDPStrategy(auto_wrap_policy={Block}))
    no_policy.configure_model()
    assert no_policy.net.activation_checkpointing is True
    for module in (both, built, fsdp_only, no_policy):
        module._trainer = None


def test_the_unified_debug_recipe_fits_with_it(tokenizer_dirs, tmp_path, monkeypatch):
    from pathlib import Path

    import unigen.modules.transformer as transformer
    from unigen.cli import main

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "debug" / "unified_debug.yaml"
    calls = []
    real = transformer.checkpoint
    monkeypatch.setattr(transformer, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))

    def fit(name, *extra):
        monkeypatch.chdir(tmp_path)
        main(["fit", "--config", str(recipe),
              "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
              "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"],
              "--trainer.max_steps", "2", "--trainer.num_sanity_val_steps", "0",
              "--trainer.default_root_dir", str(tmp_path / name), *extra])
        metrics = next((tmp_path / name).rglob("metrics.csv")).read_text().splitlines()
        header = metrics[0].split(",")
        column = header.index("train/loss")
        return [row.split(",")[column] for row in metrics[1:] if row.split(",")[column]]

    with_it = fit("on", "--model.init_args.activation_checkpointing", "true")
    assert len(calls) == 2 * 2  # two steps of the recipe's two blocks, through the checkpoint
    saved = next((tmp_path / "on").rglob("config.yaml")).read_text()
    assert "activation_checkpointing: true" in saved
    # the run's checkpoint keeps the option (hparams), and the network gets it back on loading
    loaded = UnifiedModule.load_from_checkpoint(next((tmp_path / "on").rglob("*.ckpt")))
    assert loaded.hparams.activation_checkpointing is True and loaded.net.activation_checkpointing
    calls.clear()
    without = fit("off")
    assert not calls
    assert with_it == without and len(with_it) == 2  # the same run, loss for loss
