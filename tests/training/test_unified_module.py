import math
import shutil

import lightning as L
import pytest
import torch

from unigen.data.shapes import ShapesDataset
from unigen.diffusion.tasks import TaskInputs
from unigen.training.ar_module import AutoregressiveModule
from unigen.training.checkpoint import load_module_from_checkpoint
from unigen.training.unified_module import UnifiedModule


def batch_of(n=8, size=32):
    ds = ShapesDataset("train", n, size, seed=0)
    items = [ds[i] for i in range(n)]
    return {"image": torch.stack([x["image"] for x in items]),
            **{k: [x[k] for x in items]
               for k in ("caption", "description", "question", "answer", "scene")}}


def make(tokenizer_dirs, **kw):
    args = dict(image_size=32, max_text_len=24, dim=64, depth=2, heads=4, warmup_steps=1,
                cond_dropout=0.0, lr=3e-3, **tokenizer_dirs)
    args.update(kw)
    m = UnifiedModule(**args)
    m.configure_model()
    return m


def overfit(module, batch, steps, opt=None):
    """Losses of ``steps`` steps on one batch (AdamW at the module's lr unless ``opt`` is given)."""
    # pretokenize once (the ``codes`` path of shard-trained models): the loop then times the model
    batch = {**batch, "codes": module.image_tokenizer.encode(batch["image"])}
    opt = opt or torch.optim.AdamW(module.net.parameters(), lr=module.hparams.lr)
    losses = []
    for step in range(steps):
        gen = torch.Generator().manual_seed(step)
        tb, assignment = module.mixture.build(module.task_inputs(batch), module.space, gen)
        loss, _ = module.diffusion_loss(tb, gen, assignment)  # as training_step does
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("task", ["t2i", "caption", "vqa"])
def test_loss_falls_on_a_tiny_overfit(tokenizer_dirs, task):
    torch.manual_seed(0)
    module = make(tokenizer_dirs, tasks={task: 1.0})
    losses = overfit(module, batch_of(), 60)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (task, first, last)


def test_elbo_complementary_unified_mixture_trains(tokenizer_dirs):
    torch.manual_seed(0)
    module = make(tokenizer_dirs, tasks={"t2i": 1, "caption": 1, "vqa": 1, "joint": 1, "inpaint": 1,
                                         "text": 1}, loss="elbo", complementary_masking=True,
                  schedule="linear", cond_dropout=0.1)
    losses = overfit(module, batch_of(), 60)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_complementary_pair_covers_each_target_once_with_the_schedules_elbo_weights(tokenizer_dirs,
                                                                                    schedule_name):
    module = make(tokenizer_dirs, tasks={"t2i": 1, "caption": 1}, loss="elbo", complementary_masking=True,
                  schedule=schedule_name)
    batch = {**batch_of(), "codes": torch.zeros(8, 8, 8, dtype=torch.long)}
    tb, _ = module.mixture.build(module.task_inputs(batch), module.space, torch.Generator().manual_seed(0))
    plan = module.plan_masks(tb, torch.Generator().manual_seed(1))
    _, t = module.noiser(tb.target, torch.Generator().manual_seed(1))  # the t the plan drew
    first, second = plan.masked.chunk(2)
    assert torch.equal(first ^ second, tb.target) and not (first & second).any()
    # MDLM's rate'(t) / rate(t), with the share each copy masks for rate(t): the pair's shares
    # add up to 1, and a row's weight times its share is the schedule's slope for both copies
    schedule, targets = module.noiser.schedule, tb.target.sum(1)
    shares = torch.cat((first.sum(1) / targets, second.sum(1) / targets))
    slope = schedule.loss_weight(t) * schedule.mask_rate(t)
    some = shares > 0  # a copy that masks nothing has no loss to weigh
    torch.testing.assert_close((plan.weight * shares)[some], torch.cat((slope, slope))[some], rtol=1e-4, atol=1e-5)
    # where rounding masks more than rate(t) (one target of a row at small t), 1/rate(t) would overweigh it
    over = first.sum(1) / targets > schedule.mask_rate(t) * 1.01
    assert over.any() and (plan.weight[: len(t)][over] < schedule.loss_weight(t)[over]).all()


def test_validation_samples_score_only_the_shapes_rows_of_a_mixed_batch(tokenizer_dirs, tmp_path, monkeypatch):
    """A mixture's validation batch puts other sources' rows (no scene, no question) beside the
    shapes world's: the checker and VQA read only the rows that carry them."""
    from unigen.data import checker
    from unigen.training import validation_sampling

    monkeypatch.setattr(validation_sampling, "_log_dir", lambda module: tmp_path)
    checked, real_check = [], checker.check
    monkeypatch.setattr(checker, "check", lambda image, spec: checked.append(spec) or real_check(image, spec))
    module = make(tokenizer_dirs, tasks={"t2i": 1, "caption": 1, "vqa": 1})
    batch = batch_of(4)
    for key in ("scene", "question", "answer", "description"):
        batch[key] = [v if i % 2 == 0 else "" for i, v in enumerate(batch[key])]
    batch["caption"] = [c if i % 2 == 0 else "a photo of a sneaker" for i, c in enumerate(batch["caption"])]
    metrics = validation_sampling.log_validation_samples(module, batch, num_samples=4, num_steps=2, text_steps=2)
    assert {"val/t2i_checker_accuracy", "val/vqa_exact_match", "val/caption_attribute_recall"} <= set(metrics)
    assert checked == [checker.parse_caption(batch["caption"][i]) for i in (0, 2)]
    assert all(2 * metrics[k] == round(2 * metrics[k]) for k in ("val/t2i_checker_accuracy", "val/vqa_exact_match"))


def test_logged_row_loss_is_the_mean_over_the_targets_of_both_copies(tokenizer_dirs, monkeypatch):
    module = make(tokenizer_dirs, tasks={"t2i": 1, "caption": 1}, complementary_masking=True)
    batch = {**batch_of(4), "codes": torch.zeros(4, 8, 8, dtype=torch.long)}
    tb, assignment = module.mixture.build(module.task_inputs(batch), module.space, torch.Generator().manual_seed(0))
    real_mask = module._mask

    def first_copy_masks_all_of_row_0(target, generator):
        masked, t = real_mask(target, generator)
        masked[0] = target[0]  # so its complement masks nothing
        return masked, t

    monkeypatch.setattr(module, "_mask", first_copy_masks_all_of_row_0)
    size = module.space.vocab.total_size
    monkeypatch.setattr(module.net, "logits", lambda hidden, modality: torch.zeros(len(hidden), size))
    _, per_row = module.diffusion_loss(tb, torch.Generator().manual_seed(1), assignment)
    # uniform logits: every target costs log(size), whichever copy masked it
    torch.testing.assert_close(per_row, torch.full((4,), math.log(size)))


def test_a_model_trained_without_prefix_attention_decodes_without_it(tokenizer_dirs, tmp_path):
    from unigen.diffusion.tasks import TASKS
    from unigen.pipeline import UnifiedPipeline

    torch.manual_seed(0)
    module = make(tokenizer_dirs, tasks={"caption": 1}, prefix_attention=False)
    module.to_pipeline().save_pretrained(tmp_path / "p")
    for pipe in (module.to_pipeline(), UnifiedPipeline.from_pretrained(tmp_path / "p")):
        net = pipe.transformer.eval()
        assert net.prefix_attention is False and net.config["prefix_attention"] is False
        codes = torch.randint(0, 125, (2, *pipe.space.sequence.grid), generator=torch.Generator().manual_seed(1))
        tb = TASKS.get("caption")().build(TaskInputs(codes, captions=["a red circle", "a blue square"]), pipe.space)
        x = tb.tokens.masked_fill(tb.target, pipe.space.mask_id)
        positions = pipe.decode_positions(tb.target)
        with torch.no_grad():
            trained = net(x, None, positions=positions)  # full attention, as training ran it
            for use_cache in (False, True):
                torch.testing.assert_close(pipe.model_fn(tb.prefix, positions, use_cache=use_cache)(x), trained)
    assert "prefix_attention" not in make(tokenizer_dirs).to_pipeline().transformer.config  # on: as before


def test_caption_task_trains_on_descriptions_when_the_recipe_says_so(tokenizer_dirs):
    module = make(tokenizer_dirs, max_text_len=40, tasks={"caption": 1.0, "t2i": 1.0},
                  task_kwargs={"caption": {"text": "descriptions"}})
    batch = batch_of(4)
    inputs = module.task_inputs(batch)
    assert inputs.descriptions == batch["description"] and inputs.captions == batch["caption"]
    tb = module.mixture.tasks[0].build(inputs, module.space)
    expected = module.space.encode_captions(batch["description"])
    assert torch.equal(tb.tokens[:, module.space.sequence.text], expected)
    loss, _ = module.diffusion_loss(tb, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    # pretokenized shards and Fashion-MNIST carry no descriptions: no silent fallback to captions
    no_descriptions = {k: v for k, v in batch.items() if k != "description"}
    with pytest.raises(ValueError, match="task 'caption' needs a description in every sample"):
        module.mixture.tasks[0].build(module.task_inputs(no_descriptions), module.space)
    with pytest.raises(ValueError, match="unknown text 'caption'"):
        make(tokenizer_dirs, tasks={"caption": 1.0}, task_kwargs={"caption": {"text": "caption"}})


def test_validation_scores_captions_against_the_description_too():
    from unigen.training.validation_sampling import caption_references

    cross = "a small green cross in the top left"  # a positions caption can equal the description
    batch = {"caption": ["a red circle", "a star", cross],
             "description": ["a small red circle in the center", "a large white star in the center",
                             cross]}
    assert caption_references(batch, 3) == [
        ["a red circle", "a small red circle in the center"],
        ["a star", "a large white star in the center"], [cross]]
    assert caption_references({"caption": ["a photo of a bag"]}, 1) == [["a photo of a bag"]]


def test_step_randomness_is_a_function_of_seed_and_step(tokenizer_dirs):
    m1, m2 = make(tokenizer_dirs), make(tokenizer_dirs)
    a = torch.rand(3, generator=m1._generator(0))
    assert torch.equal(a, torch.rand(3, generator=m2._generator(0)))
    assert not torch.equal(a, torch.rand(3, generator=m1._generator(1)))


def test_checkpoint_state_excludes_the_frozen_tokenizer(tokenizer_dirs):
    m = make(tokenizer_dirs)
    state = m.state_dict()
    assert state and not any(k.startswith("image_tokenizer.") for k in state)
    clone = make(tokenizer_dirs, seed=1)
    clone.load_state_dict(state)
    assert all(torch.equal(v, clone.state_dict()[k]) for k, v in state.items())


def test_bad_arguments_are_refused(tokenizer_dirs):
    with pytest.raises(ValueError, match="loss"):
        UnifiedModule(**tokenizer_dirs, loss="l2")
    with pytest.raises(ValueError, match="cond_dropout"):
        UnifiedModule(**tokenizer_dirs, cond_dropout=1.5)
    with pytest.raises(KeyError, match="unknown task"):
        UnifiedModule(**tokenizer_dirs, tasks={"painting": 1.0})
    with pytest.raises(FileNotFoundError, match="image tokenizer directory not found"):
        UnifiedModule(image_tokenizer="/nonexistent", text_tokenizer=tokenizer_dirs["text_tokenizer"]).configure_model()


def test_init_weights_starts_from_an_exported_pipeline(tokenizer_dirs, tmp_path):
    first = make(tokenizer_dirs)
    overfit(first, batch_of(), 2)
    first.to_pipeline().save_pretrained(tmp_path / "p", dtype=torch.bfloat16)
    second = make(tokenizer_dirs, seed=7, init_weights=str(tmp_path / "p"))  # builds the net
    for k, v in first.net.state_dict().items():
        assert torch.equal(second.net.state_dict()[k], v.to(torch.bfloat16).float()), k
    fresh = make(tokenizer_dirs)
    assert not torch.equal(fresh.net.token_emb.weight, second.net.token_emb.weight)
    # a checkpoint of the run holds every weight: rebuilding it needs no starting directory
    ckpt = {"hyper_parameters": dict(second.hparams), "state_dict": second.state_dict()}
    second.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "run.ckpt")
    shutil.move(tmp_path / "p", tmp_path / "moved")
    rebuilt = load_module_from_checkpoint(tmp_path / "run.ckpt")
    assert rebuilt.hparams.init_weights is None
    assert torch.equal(rebuilt.net.token_emb.weight, second.net.token_emb.weight)
    shutil.move(tmp_path / "moved", tmp_path / "p")
    with pytest.raises(ValueError, match=r"another architecture; \(saved, recipe\): \{'dim': \(64, 48\)\}"):
        make(tokenizer_dirs, dim=48, init_weights=str(tmp_path / "p"))
    with pytest.raises(FileNotFoundError, match="pipeline directory not found"):
        make(tokenizer_dirs, init_weights=str(tmp_path / "nope"))
    # the VQA answer region is a training choice: a run may start using it from earlier weights
    shorter = make(tokenizer_dirs, answer_len=4, init_weights=str(tmp_path / "p"))
    assert torch.equal(shorter.net.token_emb.weight, second.net.token_emb.weight)
    assert shorter.space.sequence.answer_len == 4


def test_tasks_loss_reduction_is_the_mean_of_each_tasks_token_mean(tokenizer_dirs):
    torch.manual_seed(0)
    module = make(tokenizer_dirs, tasks={"t2i": 1.0, "vqa": 1.0}, loss_reduction="tasks")
    inputs = module.task_inputs(batch_of(8))
    tb, assignment = module.mixture.build(inputs, module.space, torch.Generator().manual_seed(3))
    assert set(assignment.tolist()) == {0, 1}  # both tasks in the batch
    loss, per_row = module.diffusion_loss(tb, torch.Generator().manual_seed(5), assignment)
    per_row = per_row.detach()
    # the same masks again: how many tokens each row scored
    masked, _ = module._mask(tb.target, torch.Generator().manual_seed(5))
    counts = masked.sum(1).double()
    task_means = [(per_row.double() * counts)[assignment == k].sum() / counts[assignment == k].sum()
                  for k in (0, 1)]
    assert loss.item() == pytest.approx(float(sum(task_means) / 2), rel=1e-5)
    tokens_loss = float((per_row.double() * counts).sum() / counts.sum())
    unbalanced, _ = module.diffusion_loss(tb, torch.Generator().manual_seed(5))  # no assignment
    assert unbalanced.item() == pytest.approx(tokens_loss, rel=1e-5)
    assert abs(loss.item() - tokens_loss) > 1e-3  # image rows mask far more tokens than answers


def test_tasks_loss_reduction_trains_a_mixture(tokenizer_dirs):
    torch.manual_seed(0)
    module = make(tokenizer_dirs, tasks={"t2i": 1.0, "caption": 0.5, "vqa": 1.0},
                  loss_reduction="tasks", task_loss_weights={"vqa": 2.0}, complementary_masking=True)
    losses = overfit(module, batch_of(), 60)
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])


@pytest.mark.parametrize("kwargs, message", [
    ({"loss_reduction": "rows"}, "loss_reduction must be one of"),
    ({"task_loss_weights": {"vqa": 2.0}}, "task_loss_weights needs loss_reduction: tasks"),
    ({"loss_reduction": "tasks", "task_loss_weights": {"joint": 2.0}},
     r"names tasks the recipe does not train: \['joint'\]"),
    ({"loss_reduction": "tasks", "task_loss_weights": {"vqa": 0.0}}, "must be > 0"),
])
def test_loss_reduction_settings_are_checked(tokenizer_dirs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        UnifiedModule(image_size=32, tasks={"t2i": 1.0, "vqa": 1.0}, **tokenizer_dirs, **kwargs)


# -- no host reads in the training step (issue #8) ---------------------------------------------------
# Each read of a device value (``.item()``, ``bool(tensor)``, ``nonzero``, boolean indexing) makes
# the host wait until the GPU has run everything queued, so it cannot prepare the next step
# meanwhile.  On the ``meta`` device every one of them raises, and so does mixing host and device
# tensors, so a step that runs there end to end (forward, loss, backward) has neither.
ALL_TASKS = {"t2i": 1, "caption": 1, "vqa": 1, "joint": 1, "inpaint": 1, "text": 1}


def on_meta(module, batch):
    codes = module.image_tokenizer.encode(batch["image"])
    module.to("meta")
    return {**batch, "image": None, "codes": torch.empty_like(codes, device="meta")}


def test_meta_device_catches_host_reads():
    """The premise: these raise on meta (else the tests below could not fail)."""
    x = torch.ones(4, device="meta")
    for read in (lambda: x.sum().item(), lambda: bool(x.sum()), lambda: x.nonzero(),
                 lambda: x[x > 0], lambda: x + torch.ones(4)):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


@pytest.mark.parametrize("kwargs", [
    dict(tasks=ALL_TASKS, complementary_masking=True, cond_dropout=0.2, loss_reduction="tasks",
         task_loss_weights={"t2i": 4.0, "vqa": 1.5}, answer_len=3),
    dict(tasks=ALL_TASKS, loss="elbo", schedule="linear", complementary_masking=True,
         cond_dropout=0.2, question_slot=12),
    dict(tasks={"t2i": 1, "vqa": 1}, per_sample_noise=True, cond_dropout=0.5),
], ids=["tasks_reduction", "elbo_question_slot", "per_sample_noise"])
def test_unified_training_step_runs_on_the_meta_device(tokenizer_dirs, kwargs):
    module = make(tokenizer_dirs, **kwargs)
    batch = on_meta(module, {**batch_of(), "index": torch.arange(8)})
    with pytest.warns(UserWarning, match="self.log"):  # no Trainer attached: nothing is logged
        loss = module.training_step(batch, 0)
    assert loss.device.type == "meta" and loss.shape == ()
    loss.backward()
    grads = [p.grad for p in module.net.parameters()]
    assert all(g is not None and g.device.type == "meta" for g in grads)


def test_task_masks_are_built_on_the_host(tokenizer_dirs):
    module = make(tokenizer_dirs, tasks=ALL_TASKS)
    codes = torch.empty(8, 8, 8, dtype=torch.long, device="meta")
    batch = batch_of()
    inputs = TaskInputs(codes, batch["caption"], batch["question"], batch["answer"])
    tb, _ = module.mixture.build(inputs, module.space, torch.Generator().manual_seed(0))
    assert tb.tokens.device.type == "meta"
    assert {m.device.type for m in (tb.target, tb.cond, tb.prefix)} == {"cpu"}


def test_autoregressive_training_step_runs_on_the_meta_device(tokenizer_dirs):
    module = AutoregressiveModule(image_size=32, max_text_len=24, dim=64, depth=2, heads=4,
                                  cond_dropout=0.5, **tokenizer_dirs)
    module.configure_model()
    batch = on_meta(module, batch_of())
    with pytest.warns(UserWarning, match="self.log"):
        loss = module.training_step(batch, 0)
    loss.backward()
    assert loss.device.type == "meta"


class SyncWindow(L.Callback):
    """CUDA's sync debug mode set to ``error`` for each training step from the third on (the
    step itself: task building, forward, loss, backward, clipping, the optimizer, the NaN guard)."""

    def __init__(self) -> None:
        self.checked = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= 2:
            torch.cuda.set_sync_debug_mode("error")
            self.checked += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision, attention", [("32-true", "sdpa"), ("bf16-mixed", "sdpa"),
                                                  ("bf16-mixed", "split")])
def test_training_step_never_waits_for_the_gpu(tokenizer_dirs, tmp_path, precision, attention):
    from unigen.data.shapes_datamodule import ShapesDataModule
    from unigen.training.reliability import harden_trainer

    # split plans its row and position order on the host from the host's prefix masks
    module = make(tokenizer_dirs, tasks=ALL_TASKS, complementary_masking=True, cond_dropout=0.2,
                  loss_reduction="tasks", task_loss_weights={"t2i": 4.0}, attention=attention)
    data = ShapesDataModule(image_size=32, batch_size=8, num_train=64, num_val=8)
    window = SyncWindow()
    trainer = harden_trainer(L.Trainer(
        accelerator="gpu", devices=1, precision=precision, max_steps=6, log_every_n_steps=1000,
        gradient_clip_val=1.0, logger=False, enable_progress_bar=False, enable_checkpointing=False,
        limit_val_batches=0, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[window]), seed=0)
    trainer.fit(module, datamodule=data)
    assert window.checked == 4 and trainer.global_step == 6
