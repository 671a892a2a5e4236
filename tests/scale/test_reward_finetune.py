"""Reward fine-tuning (GRPO over the masked-diffusion sampler): group advantages, the likelihood
surrogate's gradient, the KL to the starting weights, a reward that rises on a tiny model, the
shipped debug recipe, checkpoints and exact resume."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from unigen.rewards import REWARDS, RewardOutput
from unigen.training.reward_finetune import (
    RewardFinetuneModule, Rollout, group_advantages, k3_kl, row_means,
)

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red circle", "two blue squares", "a small green triangle", "three circles"]


class Brightness:
    """A test reward the tiny model can learn: each image's mean pixel value."""

    def __call__(self, images, prompts):
        return RewardOutput(images.float().mean((1, 2, 3)).cpu(), {"brightness": 0.0})


if "test_brightness" not in REWARDS:
    REWARDS.register("test_brightness")(Brightness)


def _fit(module, steps: int, batch_size: int = 2, **trainer) -> L.Trainer:
    from unigen.data.shapes_datamodule import ShapesDataModule

    data = ShapesDataModule(image_size=32, batch_size=batch_size, num_train=100, num_val=4, seed=0)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False,
                        **{"enable_checkpointing": False, **trainer})
    trainer.fit(module, data)
    return trainer


def test_group_advantages_centre_and_scale_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards, 4)
    expected = 0.5 / torch.tensor([1.0, 0.0, 0.0, 1.0]).std()
    assert torch.allclose(adv[:4], torch.tensor([1, -1, -1, 1]) * expected)
    assert torch.equal(adv[4:], torch.zeros(4))  # all alike: nothing to learn from the group
    assert torch.allclose(group_advantages(rewards, 4, scale=False)[:4],
                          torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # groups are neighbours: [a a b b] with group 2 has no spread, with group 4 it has
    assert torch.equal(group_advantages(torch.tensor([1.0, 1.0, 0.0, 0.0]), 2), torch.zeros(4))
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        group_advantages(rewards, 1)
    with pytest.raises(ValueError, match="multiple of 3"):
        group_advantages(rewards, 3)


def test_row_means_average_each_rows_values():
    values = torch.tensor([1.0, 3.0, 5.0, 7.0])
    assert torch.equal(row_means(values, torch.tensor([0, 0, 2, 2]), 4),
                       torch.tensor([2.0, 0.0, 6.0, 0.0]))


def test_k3_kl_is_zero_at_equality_never_negative_and_clamped():
    logp = torch.tensor([-1.0, -2.0, -30.0, -0.5])
    ref = torch.tensor([-1.0, -1.0, -0.1, -3.0])
    kl = k3_kl(logp, ref)
    r = ref - logp
    assert kl[0] == 0 and (kl >= 0).all()
    assert torch.allclose(kl[[1, 3]], (r.exp() - r - 1)[[1, 3]])
    # a token the guided decode drew that the policy rates e^-30: exp(29.9) would swamp the loss
    assert kl[2] == 10.0


@pytest.fixture()
def module(pipeline_dir):
    module = RewardFinetuneModule(str(pipeline_dir), image_size=32, reward="test_brightness",
                                  group_size=2, num_steps=2, guidance_scale=1.0, kl_coef=0.1)
    module.configure_model()
    return module


def _rollout(module, generator_seed: int = 0) -> Rollout:
    return module.rollout(PROMPTS[:2], torch.Generator().manual_seed(generator_seed))


def test_rollout_draws_group_size_images_per_prompt_reproducibly(module):
    a, b = _rollout(module), _rollout(module)
    assert a.prompts == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    assert a.codes.shape == (4, *module.space.sequence.grid) and torch.equal(a.codes, b.codes)
    assert torch.equal(a.rewards, b.rewards) and a.rewards.shape == (4,)
    assert not torch.equal(a.codes, _rollout(module, 1).codes)
    assert module.net.training  # the rollout's eval mode is undone


def test_the_policy_gradient_raises_the_better_images_likelihood_and_lowers_the_worse(module):
    rollout = _rollout(module)
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0])

    def logp() -> torch.Tensor:
        with torch.no_grad():
            return module.policy_loss(rollout, advantages, torch.Generator().manual_seed(5))[1]["logp"]

    before = logp()
    loss, _ = module.policy_loss(rollout, advantages, torch.Generator().manual_seed(5))
    loss.backward()
    with torch.no_grad():
        for p in module.net.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad
    change = logp() - before
    assert (change[advantages > 0] > 0).all() and (change[advantages < 0] < 0).all(), change


@pytest.mark.parametrize("scale", [1.0, 2.0, 0.0])
def test_the_surrogate_reads_the_samplers_guided_distribution(module, scale):
    from unigen.sampling.guidance import ClassifierFreeGuidance

    module.hparams.surrogate_guidance = scale
    mb = module.masked_batch(_rollout(module), torch.Generator().manual_seed(3))
    assert mb.cond.any() and not (mb.cond & (mb.inputs == module.space.mask_id)).any()
    rows_read = []
    hook = module.net.token_emb.register_forward_pre_hook(lambda m, args: rows_read.append(len(args[0])))
    with torch.no_grad():
        got = module.token_logprobs(module.net, mb)
    hook.remove()
    # the passes the sampler runs: the unconditional one alone at 0, the conditional alone at 1
    assert sum(rows_read) == len(mb.inputs) * (1 if scale in (0.0, 1.0) else 2)
    with torch.no_grad():
        # what the sampler's guidance combines: the same rows, the prompt masked in the second pass
        cfg = ClassifierFreeGuidance(scale)
        batch = cfg.prepare(mb.inputs, mb.cond, module.space.mask_id, 0.0)
        prefix = None if mb.prefix is None else mb.prefix.repeat(len(batch.inputs) // len(mb.inputs), 1)
        net = module.net
        raw = net.logits(net.hidden_states(batch.inputs, prefix), net.modality)
        want = cfg.combine(raw, batch).log_softmax(-1)[mb.rows, mb.cols].gather(
            -1, mb.tokens[mb.rows, mb.cols, None]).squeeze(-1)
    assert got.shape == (len(mb.rows),) and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        if scale != 1.0:  # and it is not the conditional pass alone
            module.hparams.surrogate_guidance = 1.0
            assert (module.token_logprobs(module.net, mb) - got).abs().max() > 1e-3
        # unset, it is the rollouts' guidance
        module.hparams.surrogate_guidance, module.hparams.guidance_scale = None, scale
        torch.testing.assert_close(module.token_logprobs(module.net, mb), got)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_coupled_masks_score_every_drawn_token_exactly_once(module, scale):
    rollout = _rollout(module)
    single = module.masked_batch(rollout, torch.Generator().manual_seed(5))
    module.hparams.coupled_masks, module.hparams.surrogate_guidance = True, scale
    mb = module.masked_batch(rollout, torch.Generator().manual_seed(5))
    images, grid = mb.images, rollout.codes[0].numel()
    assert images == single.images == len(rollout.codes) and len(mb.inputs) == 2 * images
    # the first copy is the single-mask batch; the second masks exactly what it left visible
    assert torch.equal(mb.inputs[:images], single.inputs) and torch.equal(mb.tokens[images:], single.tokens)
    hits = torch.zeros(images, mb.inputs.shape[1], dtype=torch.long)
    hits.index_put_((mb.image_of, mb.cols), torch.ones_like(mb.cols), accumulate=True)
    assert (hits.sum(1) == grid).all() and hits.max() == 1
    with torch.no_grad():
        logp = module.token_logprobs(module.net, mb)
    assert torch.isfinite(logp).all()
    # each image's surrogate is the mean over all its tokens, pooled from both copies
    _, parts = module.policy_loss(rollout, torch.tensor([1.0, -1.0, -1.0, 1.0]),
                                  torch.Generator().manual_seed(5))
    expected = torch.stack([logp[mb.image_of == i].mean() for i in range(images)])
    torch.testing.assert_close(parts["logp"], expected)


def test_the_kl_to_the_starting_weights_is_zero_until_they_move(module):
    rollout = _rollout(module)
    adv = torch.zeros(4)
    assert module.policy_loss(rollout, adv, torch.Generator().manual_seed(0))[1]["kl"] == 0
    with torch.no_grad():
        module.net.head.image.weight.add_(0.5 * torch.randn_like(module.net.head.image.weight))
    kl = module.policy_loss(rollout, adv, torch.Generator().manual_seed(0))[1]["kl"]
    assert kl > 1e-3
    assert "_reference" not in "".join(module.state_dict())  # not checkpointed: made from init_from


def test_with_dropout_the_surrogate_reads_the_distribution_the_rollout_drew_from(tokenizer_dirs, tmp_path):
    """Dropout off for the policy's log-probs, as for the rollout and the reference: the KL to
    the starting weights is exactly 0 before any update, and the module is back in train mode."""
    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(0)
    UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=2, heads=4, dropout=0.2,
                  tasks={"t2i": 1}).export(tmp_path / "dropout")
    module = RewardFinetuneModule(str(tmp_path / "dropout"), image_size=32, reward="test_brightness",
                                  group_size=2, num_steps=2, guidance_scale=1.0, kl_coef=0.1)
    module.configure_model()
    module.net.train()
    _, parts = module.policy_loss(_rollout(module), torch.zeros(4), torch.Generator().manual_seed(0))
    assert parts["kl"] == 0 and module.net.training


def test_the_surrogate_reads_the_likelihood_at_the_rollouts_temperature(pipeline_dir):
    hot = RewardFinetuneModule(str(pipeline_dir), image_size=32, reward="test_brightness", group_size=2,
                               num_steps=2, guidance_scale=1.0, sampler_kwargs={"temperature": 0.5})
    hot.configure_model()
    mb = hot.masked_batch(_rollout(hot), torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = hot.net.hidden_states(mb.inputs, mb.prefix)
        logits = hot.net.logits(hidden[mb.rows, mb.cols], hot.net.modality[mb.cols]).float()
        expected = (logits / 0.5).log_softmax(-1).gather(-1, mb.tokens[mb.rows, mb.cols, None]).squeeze(-1)
        torch.testing.assert_close(hot.token_logprobs(hot.net, mb), expected)
    for kwargs, message in (({"temperature": 0.0}, "needs rollouts drawn at a temperature > 0"),
                            ({"temprature": 1.0}, "does not take this option")):
        greedy = RewardFinetuneModule(str(pipeline_dir), image_size=32, reward="test_brightness",
                                      group_size=2, num_steps=2, sampler_kwargs=kwargs)
        with pytest.raises(ValueError, match=message):
            greedy.configure_model()  # before any step


def test_reward_fine_tuning_raises_the_reward_of_a_tiny_model(pipeline_dir, tmp_path):
    from unigen.pipeline import UnifiedPipeline

    prompts, seeds = PROMPTS * 4, list(range(100, 116))

    def brightness(path) -> float:
        pipe = UnifiedPipeline.from_pretrained(path)
        return float(pipe.text_to_image(prompts, num_steps=4, seed=seeds, output="tensor").mean())

    pipe = UnifiedPipeline.from_pretrained(pipeline_dir)
    grid = pipe.space.sequence.grid
    with torch.no_grad():  # the brightest image this tokenizer can draw: one code everywhere
        codes = torch.arange(pipe.image_tokenizer.codebook_size)[:, None, None].expand(-1, *grid)
        best = float(pipe.decode_images(codes).mean((1, 2, 3)).max())
    before = brightness(pipeline_dir)
    torch.manual_seed(0)
    module = RewardFinetuneModule(str(pipeline_dir), image_size=32, reward="test_brightness",
                                  group_size=8, num_steps=4, guidance_scale=1.0, lr=3e-2)
    _fit(module, 20)
    module.export(tmp_path / "after")
    after = brightness(tmp_path / "after")
    # 20 updates of 16 images each close at least 40% of the gap to the brightest possible image
    assert after - before > 0.4 * (best - before), (before, after, best)


def test_the_debug_recipe_fits_exports_reloads_and_resumes_exactly(pipeline_dir, tmp_path,
                                                                  monkeypatch):
    from unigen.cli import main
    from unigen.io import load_safetensors
    from unigen.training.checkpoint import load_module_from_checkpoint

    monkeypatch.chdir(tmp_path)
    recipe = str(ROOT / "recipes" / "debug" / "reward_debug.yaml")

    def fit(root: str, steps: int, *extra: str) -> None:
        main(["fit", "--config", recipe, "--model.init_args.init_from", str(pipeline_dir),
              "--trainer.max_steps", str(steps), "--trainer.default_root_dir", root,
              "--trainer.enable_progress_bar", "false", *extra])

    fit("whole", 4, "--export_dir", "whole_model")
    metrics = (tmp_path / "whole" / "logs" / "version_0" / "metrics.csv").read_text()
    for name in ("train/reward", "train/pass_rate", "train/fact_share", "train/kl",
                 "train/informative_groups", "val/compositional_accuracy/overall"):
        assert name in metrics, name
    base = load_safetensors(pipeline_dir / "transformer" / "model.safetensors")
    whole = load_safetensors(tmp_path / "whole_model" / "transformer" / "model.safetensors")
    assert set(whole) == set(base) and any(not torch.equal(base[k], whole[k]) for k in base)

    # the checkpoint rebuilds the module from its own arguments (reward options included)
    ckpt = tmp_path / "whole" / "checkpoints" / "last.ckpt"
    module = load_module_from_checkpoint(ckpt)
    assert isinstance(module, RewardFinetuneModule)
    assert module.hparams.group_size == 4 and module.hparams.reward == "shapes_checker"
    assert module.reward.pass_weight == 0.5
    assert all(torch.equal(module.net.state_dict()[k], v) for k, v in whole.items())

    # 2 steps, then 2 more from the checkpoint: the same weights as 4 in one go
    fit("halves", 2)
    fit("halves", 4, "--ckpt_path", "halves/checkpoints/last.ckpt",
        "--export_dir", "halves_model")
    halves = load_safetensors(tmp_path / "halves_model" / "transformer" / "model.safetensors")
    assert all(torch.equal(whole[k], halves[k]) for k in whole)


def test_bad_options_are_one_clear_error(pipeline_dir):
    args = {"init_from": str(pipeline_dir), "image_size": 32}
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        RewardFinetuneModule(**args, group_size=1)
    with pytest.raises(ValueError, match="surrogate_guidance must be a finite number"):
        RewardFinetuneModule(**args, surrogate_guidance=float("nan"))
    with pytest.raises(ValueError, match="kl_coef must be >= 0"):
        RewardFinetuneModule(**args, kl_coef=-1.0)
    with pytest.raises(ValueError, match="reward 'shapes_checker'.*unexpected keyword.*pass_wieght"):
        RewardFinetuneModule(**args, reward_kwargs={"pass_wieght": 1.0})
    with pytest.raises(KeyError, match="reward 'no_such'"):
        RewardFinetuneModule(**args, reward="no_such")
    module = RewardFinetuneModule(**args)
    module.configure_model()
    with pytest.raises(ValueError, match="non-empty 'caption'"):
        module.training_step({"caption": ["a red circle", " "]}, 0)
