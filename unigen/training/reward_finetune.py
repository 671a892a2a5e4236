"""Reward fine-tuning of text to image: GRPO over the masked-diffusion sampler.

Each training step draws ``group_size`` images for every prompt of the batch with the pipeline's
own sampler (the policy, exactly as it will be used: sampler, steps, guidance), scores them with a
registered reward (:mod:`unigen.rewards`: the shapes checker, CLIP score, ...), and turns the
scores into advantages relative to the prompt's group (GRPO, Shao et al. 2024: no value network).
The images' likelihood under the model is the masked-diffusion surrogate of MMaDA's UniGRPO
(Yang et al. 2025) and d1 (Zhao et al. 2025): mask a random share of each drawn image's tokens
with the training schedule and read the log-probabilities of the drawn tokens there.  The loss

    - mean_i  A_i * mean_{masked j} log p(x_ij | prompt, unmasked x_i)  +  kl_coef * KL(p || p_ref)

raises the likelihood of the better images of each group and lowers the worse.  Under guidance the
drawn tokens come from ``uncond + scale * (cond - uncond)`` log-probabilities, not from the network's
conditional pass; the surrogate's log-probabilities are read at the same scale (both passes, the
unconditional one with the prompt masked as the sampler does; ``surrogate_guidance``), so the
update moves the distribution that drew the images.  Every step
samples afresh (on-policy, one update per rollout), so the PPO ratio is 1 and needs no clipping;
the KL term (k3 estimator, Schulman 2020) against the starting weights is optional.

The prompts come from the data module's ``caption`` field: for the shapes world the training
split's captions, so the held-out compositions of ``eval_shapes.yaml`` stay unseen, as Flow-GRPO
(Liu et al. 2025) trains on GenEval-style prompts and evaluates on GenEval's own.  It starts from a
pipeline directory like :class:`~unigen.training.finetune.FinetuneModule` (LoRA and freezing
included) and exports a plain pipeline.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from unigen.diffusion.tasks import TASKS, TaskInputs
from unigen.rewards import build_reward
from unigen.sampling.guidance import ClassifierFreeGuidance, check_scale, guided_logits
from unigen.tokenizers.base import eval_mode
from unigen.training.finetune import FinetuneModule
from unigen.training.unified_module import UnifiedModule
from unigen.transfer import to_device


def check_group_size(group_size: int) -> None:
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (advantages compare images of one prompt), "
                         f"got {group_size}")


def group_advantages(rewards: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
                     ) -> Tensor:
    """GRPO's advantages: each reward minus its group's mean (groups are ``group_size`` neighbours),
    divided by the group's standard deviation when ``scale`` (Shao et al. 2024; Dr. GRPO, Liu et
    al. 2025, argues for ``scale=False``).  A group whose images all scored the same teaches
    nothing: its advantages are 0."""
    check_group_size(group_size)
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [prompts * group_size] = a multiple of {group_size}, got "
                         f"{list(rewards.shape)}")
    groups = rearrange(rewards.float(), "(p g) -> p g", g=group_size)
    centred = groups - groups.mean(1, keepdim=True)
    if scale:
        std = groups.std(1, keepdim=True)
        centred = torch.where(std > eps, centred / std.clamp_min(eps), torch.zeros_like(centred))
    return rearrange(centred, "p g -> (p g)")


def k3_kl(logp: Tensor, ref_logp: Tensor, max_value: float = 10.0) -> Tensor:
    """Per-token estimate of KL(policy || reference) from the drawn tokens' log-probabilities:
    Schulman's k3, ``exp(r) - r - 1`` with ``r = ref_logp - logp`` (unbiased, never negative),
    clamped at ``max_value`` (as verl's ``low_var_kl``).  Without the clamp one token the reference
    finds far likelier than the policy does makes ``exp(r)`` overflow the loss: guided decoding
    draws tokens the unguided policy rates low, and a CPU run's KL reached 1e20 in 80 steps."""
    r = ref_logp - logp
    return (r.exp() - r - 1).clamp(max=max_value)


def row_means(values: Tensor, rows: Tensor, num_rows: int) -> Tensor:
    """Mean of ``values`` [N] per row index ``rows`` [N] (0 for a row with none)."""
    sums = values.new_zeros(num_rows).index_add(0, rows, values)
    counts = torch.bincount(rows, minlength=num_rows).clamp_min(1)
    return sums / counts.to(sums)


#: FinetuneModule settings that reward fine-tuning fixes: the drawn images are text-to-image rows;
#: the validation loss is the plain masked-token loss on the data, no condition dropout
FIXED_SETTINGS: dict[str, Any] = {"tasks": {"t2i": 1.0}, "task_kwargs": None, "loss": "ce",
                                  "complementary_masking": False, "cond_dropout": 0.0,
                                  "per_sample_noise": False}


@dataclass
class MaskedBatch:
    """Drawn images as masked text-to-image rows: the network's ``inputs`` [R, S], the attention
    ``prefix`` (or None), the masked positions ``rows``/``cols`` [N], the drawn ``tokens`` and the
    prompt positions ``cond`` [R, S] (masked in the unconditional pass of guidance).  With coupled
    masks ``R = 2B``: row ``B + i`` masks the complement of row ``i``'s mask (``images`` = B)."""

    inputs: Tensor
    prefix: Tensor | None
    rows: Tensor
    cols: Tensor
    tokens: Tensor
    cond: Tensor
    images: int

    @property
    def image_of(self) -> Tensor:
        """The drawn image each masked position belongs to [N]."""
        return self.rows % self.images


@dataclass
class Rollout:
    """One step's drawn images: ``prompts`` (each repeated ``group_size`` times), their image
    ``codes`` [B, h, w], ``rewards`` [B] and the reward's metrics."""

    prompts: list[str]
    codes: Tensor
    rewards: Tensor
    metrics: dict[str, float]


class RewardFinetuneModule(FinetuneModule):
    """GRPO on text to image from a trained pipeline (see the module docstring).

    Args:
        init_from: pipeline directory (``--export_dir`` of a unified recipe).
        reward, reward_kwargs: a :data:`unigen.rewards.REWARDS` name and its options, e.g.
            ``shapes_checker`` with ``{pass_weight: 0.5}``, ``clip_score`` with ``{clip: DIR}``.
        group_size: images drawn per prompt; advantages compare them (GRPO's G).
        num_steps, guidance_scale, sampler, sampler_kwargs: how the images are drawn: the
            decoding the fine-tuned model will be used with (the policy).
        surrogate_guidance: the guidance scale the surrogate's log-probabilities are read at;
            None (default): the rollouts' ``guidance_scale``, the distribution the images were
            drawn from (a second, unconditional pass when it is not 1).  1.0 reads the
            conditional pass alone, as the sessions 23-27 measurements did: with guided rollouts
            that update moves a distribution the images did not come from, and held-out accuracy
            fell (docs/reward_finetuning.md, "Guidance and the surrogate").
        coupled_masks: read each image's likelihood under a random mask and its complement, so
            every drawn token is scored exactly once (DiffuCoder's coupled-GRPO, Gong et al.
            2025): a lower-variance surrogate, for twice its rows.
        scale_rewards: divide each group's centred rewards by its standard deviation.
        kl_coef: weight of the KL penalty to the starting weights (0: none, no reference copy).
        lora, train_only, adapter_dir, lr, ...: as :class:`FinetuneModule` (the learning rate is
            a fine-tune's: small).
        val_sampling: grids and metrics at validation, e.g. ``{metrics: [compositional_accuracy]}``
            to watch the checker on the validation split.
    """

    def __init__(self, init_from: str, image_size: int = 64, reward: str = "shapes_checker",
                 reward_kwargs: dict[str, Any] | None = None, group_size: int = 8,
                 num_steps: int = 16, guidance_scale: float = 2.0, sampler: str = "maskgit",
                 sampler_kwargs: dict[str, Any] | None = None,
                 surrogate_guidance: float | None = None, coupled_masks: bool = False,
                 scale_rewards: bool = True,
                 kl_coef: float = 0.0, lora: dict[str, Any] | None = None,
                 train_only: list[str] | None = None, adapter_dir: str | None = None,
                 schedule: str = "cosine", schedule_kwargs: dict[str, float] | None = None,
                 prefix_attention: bool = True, lr: float = 1e-5, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 0,
                 min_lr_ratio: float = 1.0, seed: int = 0,
                 val_sampling: dict[str, Any] | None = None,
                 activation_checkpointing: bool = False) -> None:
        super().__init__(init_from, image_size, lora=lora, train_only=train_only,
                         adapter_dir=adapter_dir, schedule=schedule,
                         schedule_kwargs=schedule_kwargs, prefix_attention=prefix_attention, lr=lr,
                         weight_decay=weight_decay, betas=betas, warmup_steps=warmup_steps,
                         min_lr_ratio=min_lr_ratio, seed=seed, val_sampling=val_sampling,
                         activation_checkpointing=activation_checkpointing, **FIXED_SETTINGS)
        # the base's settings this class fixes, which validation's loss reads from hparams (under
        # LightningCLI the hparams are the arguments given to this class only)
        self.hparams.update(copy.deepcopy(FIXED_SETTINGS))
        self._hparams_initial = copy.deepcopy(self._hparams)
        check_group_size(group_size)  # now, not at the first step
        if surrogate_guidance is not None:
            check_scale(surrogate_guidance, "surrogate_guidance")
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.reward = build_reward(reward, **(reward_kwargs or {}))  # a bad option fails now
        self._t2i = TASKS.get("t2i")()
        self._reference: list[torch.nn.Module] = []  # a list: not a submodule, not checkpointed

    def configure_model(self) -> None:
        fresh = self.net is None
        super().configure_model()
        if fresh:
            # the rollouts' sampler, built now: a bad option fails before the first step, and the
            # likelihood the surrogate raises is that of the temperature the images are drawn at
            sampler = self.rollout_pipeline().make_sampler(self.hparams.sampler, self.hparams.sampler_kwargs)
            self._temperature = float(getattr(sampler, "temperature", 1.0))
            if self._temperature <= 0:
                raise ValueError(f"reward fine-tuning needs rollouts drawn at a temperature > 0 (greedy "
                                 f"ones have no likelihood to raise); sampler {self.hparams.sampler!r} "
                                 f"draws at {self._temperature:g}: set sampler_kwargs.temperature")
        if fresh and self.hparams.kl_coef > 0:
            # the starting weights (LoRA's B starts at 0, so the adapted copy is the base); built
            # from init_from before a checkpoint's weights are loaded, so a resume keeps it
            self._reference = [copy.deepcopy(self.net).requires_grad_(False).eval()]

    def reference(self) -> torch.nn.Module:
        ref = self._reference[0]
        if next(ref.parameters()).device != self.device:
            ref.to(self.device)
        return ref

    # -- the step ------------------------------------------------------------------------------------
    def rollout_pipeline(self):
        """A pipeline over the live network, to draw with: the plain module's, not
        :meth:`FinetuneModule.to_pipeline`, which merges the adapters into a copy."""
        return UnifiedModule.to_pipeline(self)

    @torch.no_grad()
    def rollout(self, prompts: list[str], generator: torch.Generator) -> Rollout:
        """Draw ``group_size`` images per prompt with the policy's decoding and score them.  Each
        image's seed comes from ``generator``, so a step's images are reproducible on resume."""
        hp = self.hparams
        rows = [p for p in prompts for _ in range(hp.group_size)]
        seeds = torch.randint(2**62, (len(rows),), generator=generator).tolist()
        pipe = self.rollout_pipeline()
        with eval_mode(self.net):
            codes = pipe.text_to_image(rows, num_steps=hp.num_steps, guidance_scale=hp.guidance_scale,
                                       sampler=hp.sampler, sampler_kwargs=dict(hp.sampler_kwargs or {}),
                                       seed=seeds, output="codes")
        codes = codes.clone()  # out of inference mode: the loss's embedding lookup keeps it
        scored = self.reward(pipe.decode_images(codes), rows)
        return Rollout(rows, codes, scored.rewards.float().cpu(), scored.metrics)

    def masked_batch(self, rollout: Rollout, generator: torch.Generator) -> MaskedBatch:
        """The drawn images as text-to-image rows with a share of each image's tokens masked by
        the training schedule (the likelihood surrogate's noise); with ``coupled_masks`` a second
        copy of every row masks the complement."""
        device = self.device
        tb = self._t2i.build(TaskInputs(rollout.codes.cpu(), captions=rollout.prompts), self.space,
                             generator)
        masked, _ = self._mask(tb.target, generator)
        parts = (tb.tokens, tb.prefix, tb.cond)
        if self.hparams.coupled_masks:
            masked = torch.cat((masked, tb.target & ~masked))
            parts = tuple(None if x is None else torch.cat((x, x)) for x in parts)
        tokens, prefix, cond = (None if x is None else to_device(x, device) for x in parts)
        rows, cols = masked.nonzero(as_tuple=True)
        return MaskedBatch(tokens.masked_fill(to_device(masked, device), self.space.mask_id),
                           prefix if self.hparams.prefix_attention else None,
                           to_device(rows, device), to_device(cols, device), tokens, cond,
                           len(rollout.codes))

    def token_logprobs(self, net: torch.nn.Module, mb: MaskedBatch) -> Tensor:
        """log p of each masked position's drawn token [N] (``mb.rows``, ``mb.cols`` order), under
        guidance at ``surrogate_guidance`` (the sampler's combination of the two passes)."""
        scale = self.hparams.surrogate_guidance
        guidance = ClassifierFreeGuidance(self.hparams.guidance_scale if scale is None else scale)
        # the sampler's own rows: conditional, unconditional (prompt masked) or both, one forward
        batch = guidance.prepare(mb.inputs, mb.cond, self.space.mask_id, progress=0.0)
        passes = 2 if batch.mode == "both" else 1
        prefix = mb.prefix if mb.prefix is None or passes == 1 else torch.cat((mb.prefix, mb.prefix))
        hidden = rearrange(net.hidden_states(batch.inputs, prefix), "(n b) s d -> n b s d", n=passes)
        logits = net.logits(hidden[:, mb.rows, mb.cols], net.modality[mb.cols])
        # the distribution the sampler draws from: guided, then normalised below
        logits = guided_logits(*logits, batch.scale) if batch.mode == "both" else logits[0]
        temperature = getattr(self, "_temperature", 1.0)  # the sampler's, as it draws
        logp = (logits.float() / temperature if temperature != 1.0 else logits.float()).log_softmax(-1)
        return logp.gather(-1, mb.tokens[mb.rows, mb.cols, None]).squeeze(-1)

    def policy_loss(self, rollout: Rollout, advantages: Tensor, generator: torch.Generator
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The GRPO surrogate over the drawn images (module docstring); returns the loss and its
        parts (``policy``; ``kl``; ``logp``: each image's mean log-probability of its masked
        tokens [B])."""
        mb = self.masked_batch(rollout, generator)
        # the likelihood of the distribution that drew the images: dropout off, as in the rollout
        # and the reference (else the KL is not 0 before any update)
        with eval_mode(self.net):
            logp = self.token_logprobs(self.net, mb)
        per_row = row_means(logp, mb.image_of, mb.images)
        loss = -(to_device(advantages, per_row.device) * per_row).mean()
        parts = {"policy": loss.detach(), "logp": per_row.detach()}
        if self.hparams.kl_coef > 0:
            with torch.no_grad():
                ref = self.token_logprobs(self.reference(), mb)
            kl = row_means(k3_kl(logp, ref), mb.image_of, mb.images).mean()
            loss = loss + self.hparams.kl_coef * kl
            parts["kl"] = kl.detach()
        return loss, parts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        prompts = batch.get("caption")
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("reward fine-tuning draws images from the batch's captions: every "
                             "sample needs a non-empty 'caption'")
        generator = self._step_generator(batch_idx)
        rollout = self.rollout(list(prompts), generator)
        advantages = group_advantages(rollout.rewards, self.hparams.group_size,
                                      self.hparams.scale_rewards)
        loss, parts = self.policy_loss(rollout, advantages, generator)
        size = len(rollout.prompts)
        groups = rearrange(rollout.rewards, "(p g) -> p g", g=self.hparams.group_size)
        self.log("train/reward", rollout.rewards.mean(), prog_bar=True, batch_size=size)
        self.log("train/loss", loss, batch_size=size)
        # the share of prompts whose images differ in reward: only those groups teach anything
        self.log("train/informative_groups", (groups.std(1) > 1e-4).float().mean(), batch_size=size)
        parts["logp"] = parts["logp"].mean()
        for name, value in {**rollout.metrics, **parts}.items():
            self.log(f"train/{name}", value, batch_size=size)
        return loss


__all__ = ["MaskedBatch", "Rollout", "RewardFinetuneModule", "group_advantages", "k3_kl", "row_means"]
