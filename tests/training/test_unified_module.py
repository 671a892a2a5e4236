import pytest
import torch

from unigen.data.shapes import ShapesDataset
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


def overfit(module, batch, steps):
    # pretokenize once (the ``codes`` path of shard-trained models): the loop then times the model
    batch = {**batch, "codes": module.image_tokenizer.encode(batch["image"])}
    opt = torch.optim.AdamW(module.net.parameters(), lr=module.hparams.lr)
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
