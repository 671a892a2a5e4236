"""A task beyond the built-in six: its token is added to the text tokenizer without moving any id,
and the unified model trains on it with no edit to the core (docs/extending.md, "A task")."""

import inspect
import json

import pytest
import torch
from tokenizers import Tokenizer, models

from unigen.data.shapes import ShapesDataset
from unigen.diffusion.tasks import TASKS, CaptionImageTask
from unigen.diffusion.token_space import TokenSpace
from unigen.diffusion.vocab import TEXT, SequenceLayout, VocabLayout
from unigen.tokenizers.text import CONFIG_FILE, SPECIAL_TOKENS, TextTokenizer
from unigen.training.unified_module import UnifiedModule


class Outpainting(CaptionImageTask):
    """Clean caption and left half of the image; the right half is predicted."""

    name = "outpaint_test"
    cond_segments, prefix_segments = ("text",), ("text",)

    def build(self, inputs, space, generator=None):
        tb = super().build(inputs, space, generator)
        h, w = space.sequence.grid
        right = torch.zeros(h, w, dtype=torch.bool)
        right[:, w // 2:] = True
        tb.target[:, space.sequence.image] = right.flatten().expand(len(tb.tokens), -1)
        return tb


@pytest.fixture
def outpaint_task():
    TASKS.register(Outpainting.name)(Outpainting)
    yield Outpainting.name
    TASKS._items.pop(Outpainting.name)


@pytest.fixture(scope="module")
def extended_dir(text_tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "text_tokenizer_outpaint"
    TextTokenizer.from_pretrained(text_tokenizer_dir).add_task_tokens([Outpainting.name]).save_pretrained(out)
    return out


def test_added_task_tokens_keep_every_id_and_round_trip(text_tokenizer_dir, extended_dir):
    base = TextTokenizer.from_pretrained(text_tokenizer_dir)
    ext = TextTokenizer.from_pretrained(extended_dir)
    assert ext.vocab_size == base.vocab_size + 1
    new_id = ext.task_id(Outpainting.name)
    assert new_id == base.vocab_size  # appended after the learned words
    assert ext.task_id("<vqa>") == base.task_id("vqa") == SPECIAL_TOKENS.index("<vqa>")
    assert ext.tasks[-1] == Outpainting.name
    for word in ("red", "circle", "above", "square"):
        assert ext.token_to_id(word) == base.token_to_id(word)
    text = "two red circles above a blue square"
    assert ext.encode(text) == base.encode(text)
    # the token typed in data stays text, and decoding drops the control id
    assert new_id not in ext.encode(f"<{Outpainting.name}> red")
    assert ext.decode([new_id, *ext.encode("red")]) == "red"
    assert json.loads((extended_dir / CONFIG_FILE).read_text())["task_tokens"] == [Outpainting.name]


def test_task_tokens_are_control_tokens_of_the_vocabulary(extended_dir):
    tok = TextTokenizer.from_pretrained(extended_dir)
    vocab = VocabLayout.from_tokenizers(tok, 125)
    new_id = tok.task_id(Outpainting.name)
    assert vocab.special(f"<{Outpainting.name}>") == new_id
    bias = vocab.legal_bias()
    assert bias[TEXT, new_id] == float("-inf")  # never generated as caption text
    assert bias[TEXT, tok.token_to_id("red")] == 0.0


def test_add_task_tokens_refuses_bad_names(text_tokenizer_dir, extended_dir):
    base = TextTokenizer.from_pretrained(text_tokenizer_dir)
    ext = TextTokenizer.from_pretrained(extended_dir)
    with pytest.raises(ValueError, match="already has the task token '<vqa>'"):
        base.add_task_tokens(["vqa"])
    with pytest.raises(ValueError, match="already has the task token"):
        ext.add_task_tokens([Outpainting.name])
    with pytest.raises(ValueError, match="must match"):
        base.add_task_tokens(["Out Paint"])
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)} | {"<zoom>": len(SPECIAL_TOKENS)}
    with_word = TextTokenizer(Tokenizer(models.WordLevel(vocab, unk_token="<unk>")), "wordlevel")
    with pytest.raises(ValueError, match="'<zoom>' is already an ordinary token"):
        with_word.add_task_tokens(["zoom"])
    with pytest.raises(ValueError, match="repeat"):
        base.add_task_tokens(["a_task", "a_task"])
    with pytest.raises(TypeError, match="list"):
        base.add_task_tokens("outpaint")
    with pytest.raises(KeyError, match="no task token '<zoom>'.*add_task_tokens"):
        base.task_id("zoom")


def test_a_config_naming_a_missing_task_token_is_one_clear_error(text_tokenizer_dir, tmp_path):
    out = tmp_path / "tok"
    TextTokenizer.from_pretrained(text_tokenizer_dir).save_pretrained(out)
    config = json.loads((out / CONFIG_FILE).read_text())
    (out / CONFIG_FILE).write_text(json.dumps({**config, "task_tokens": ["zoom"]}))
    with pytest.raises(ValueError,
                       match="tokenizer.json: tokenizer lacks the task token '<zoom>'") as err:
        TextTokenizer.from_pretrained(out)
    assert "\n" not in str(err.value)
    (out / CONFIG_FILE).write_text(json.dumps({**config, "task_tokens": "zoom"}))
    with pytest.raises(ValueError, match="task_tokens must be a list") as err:
        TextTokenizer.from_pretrained(out)
    assert "\n" not in str(err.value)


def test_a_task_without_its_token_is_one_clear_error(outpaint_task, text_tokenizer_dir):
    tok = TextTokenizer.from_pretrained(text_tokenizer_dir)
    space = TokenSpace(tok, VocabLayout.from_tokenizers(tok, 125), SequenceLayout(24, (4, 4)))
    with pytest.raises(ValueError, match=f"task '{outpaint_task}' has no <{outpaint_task}> token.*"
                                         f"--task-token {outpaint_task}") as err:
        space.assemble(outpaint_task, None, torch.zeros(2, 4, 4, dtype=torch.long))
    assert "\n" not in str(err.value)


def test_a_plugin_task_trains_with_no_core_edit(outpaint_task, extended_dir, image_tokenizer_dir):
    torch.manual_seed(0)
    module = UnifiedModule(image_size=32, max_text_len=24, dim=64, depth=2, heads=4, warmup_steps=1,
                           cond_dropout=0.0, lr=3e-3, tasks={outpaint_task: 1.0},
                           text_tokenizer=str(extended_dir), image_tokenizer=str(image_tokenizer_dir))
    module.configure_model()
    ds = ShapesDataset("train", 8, 32, seed=0)
    images = torch.stack([ds[i]["image"] for i in range(8)])
    batch = {"codes": module.image_tokenizer.encode(images), "caption": [ds[i]["caption"] for i in range(8)]}
    tb, _ = module.mixture.build(module.task_inputs(batch), module.space, torch.Generator().manual_seed(0))
    grid = module.space.sequence.grid
    image_targets = tb.target[:, module.space.sequence.image].reshape(-1, *grid)
    assert image_targets[:, :, grid[1] // 2:].all() and not image_targets[:, :, : grid[1] // 2].any()
    assert (tb.tokens[:, module.space.sequence.task_pos] == module.space.task_token(outpaint_task)).all()
    opt = torch.optim.AdamW(module.net.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        gen = torch.Generator().manual_seed(step)
        tb, assignment = module.mixture.build(module.task_inputs(batch), module.space, gen)
        loss, _ = module.diffusion_loss(tb, gen, assignment)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


# the same class as a plugin module of its own, registered under another name
PLUGIN_TASK = "import torch\nfrom unigen.diffusion.tasks import TASKS, CaptionImageTask\n\n\n" + \
    inspect.getsource(Outpainting).replace(Outpainting.name, "outpaint_cli").replace(
        "class Outpainting", '@TASKS.register("outpaint_cli")\nclass Outpainting')


def test_the_cli_fits_a_plugin_task_with_its_added_token(tokenizer_dirs, tmp_path, monkeypatch):
    """The documented flow: `unigen text-tokenizer --task-token`, then `unigen --plugin MOD fit`."""
    from pathlib import Path

    from unigen.cli import main

    (tmp_path / "my_tasks_cli.py").write_text(PLUGIN_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["text-tokenizer", "--data", "shapes", "--num-samples", "200", "--out", "tok",
                     "--task-token", "outpaint_cli"]) == 0
        recipe = Path(__file__).resolve().parents[2] / "recipes" / "debug" / "unified_debug.yaml"
        assert main(["--plugin", "my_tasks_cli", "fit", "--config", str(recipe),
                     "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
                     "--model.init_args.text_tokenizer", "tok",
                     "--model.init_args.tasks", "{t2i: 1.0, outpaint_cli: 1.0}",
                     "--model.init_args.task_loss_weights", "{}",
                     "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"]) == 0
        logs = (tmp_path / "runs").rglob("metrics.csv")
        assert any("train/loss_outpaint_cli" in f.read_text() for f in logs)
    finally:
        TASKS._items.pop("outpaint_cli", None)


def test_a_recipe_naming_a_task_without_its_token_stops_before_training(outpaint_task, tokenizer_dirs):
    module = UnifiedModule(image_size=32, max_text_len=24, dim=64, depth=2, heads=4,
                           tasks={"t2i": 1.0, outpaint_task: 1.0}, **tokenizer_dirs)
    with pytest.raises(ValueError, match=f"task '{outpaint_task}' has no <{outpaint_task}> token"):
        module.configure_model()
