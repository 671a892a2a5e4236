"""The modules' ``compile`` option: true or a ``torch.compile`` mode (CUDA graphs for small models)."""

from pathlib import Path

import pytest
import torch

from unigen.modules.transformer import Block
from unigen.training import compilation
from unigen.training.ar_module import AutoregressiveModule
from unigen.training.compilation import COMPILE_MODES, compile_mode, mark_step_begin
from unigen.training.unified_module import UnifiedModule


@pytest.mark.parametrize("value, mode", [(False, None), (None, None), (True, "default"),
                                         ("reduce-overhead", "reduce-overhead"),
                                         ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs")])
def test_compile_option_names_a_mode(value, mode):
    assert compile_mode(value) == mode


@pytest.mark.parametrize("cls", [UnifiedModule, AutoregressiveModule])
def test_an_unknown_mode_fails_when_the_module_is_made(tokenizer_dirs, cls):
    with pytest.raises(ValueError, match=r"compile must be true, false or one of \['default', "):
        cls(**tokenizer_dirs, image_size=32, compile="reduce_overhead")


@pytest.fixture
def compile_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(Block, "compile", lambda self, **kw: calls.append(kw))
    return calls


@pytest.mark.parametrize("cls", [UnifiedModule, AutoregressiveModule])
@pytest.mark.parametrize("value, expected", [(True, None), ("reduce-overhead", "reduce-overhead"),
                                             (False, "no call")])
def test_each_block_is_compiled_with_the_recipes_mode(tokenizer_dirs, compile_calls, cls, value,
                                                       expected):
    module = cls(**tokenizer_dirs, image_size=32, dim=32, depth=3, heads=2, compile=value)
    module.configure_model()
    if expected == "no call":
        assert compile_calls == []
    else:
        assert compile_calls == [{"mode": expected}] * 3


@pytest.fixture
def step_marks(monkeypatch):
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    return marks


@pytest.mark.parametrize("mode", COMPILE_MODES)
def test_cuda_graph_modes_mark_each_training_step(step_marks, mode):
    mark_step_begin(mode)
    assert len(step_marks) == (1 if mode in compilation.CUDA_GRAPH_MODES else 0)


@pytest.mark.parametrize("cls", [UnifiedModule, AutoregressiveModule])
def test_the_modules_mark_the_step_before_each_batch(tokenizer_dirs, step_marks, cls):
    graphed = cls(**tokenizer_dirs, image_size=32, compile="reduce-overhead")
    graphed.on_train_batch_start({}, 0)
    cls(**tokenizer_dirs, image_size=32, compile=True).on_train_batch_start({}, 0)
    assert step_marks == [1]


def test_a_recipe_names_the_mode(tokenizer_dirs):
    from unigen.cli import instantiate_recipe

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "debug" / "unified_debug.yaml"
    dirs = ["--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
            "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"]]
    for value, parsed in (("reduce-overhead", "reduce-overhead"), ("true", True), ("false", False)):
        cli = instantiate_recipe(recipe, [*dirs, "--model.init_args.compile", value])
        assert cli.model.hparams.compile == parsed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_blocks_train_like_eager_blocks(tokenizer_dirs, tmp_path):
    """Lightning steps with ``compile: reduce-overhead`` (each block a replayed CUDA graph) give the
    eager run's losses: same seeds, same batches, fp32 (TF32 off), so only kernel choice differs."""
    import lightning as L

    from unigen.data.shapes_datamodule import ShapesDataModule

    class Losses(L.Callback):
        def __init__(self):
            self.values = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.values.append(float(outputs["loss"]))

    def run(compile):
        torch.manual_seed(0)
        module = UnifiedModule(**tokenizer_dirs, image_size=32, max_text_len=24, dim=64, depth=2,
                               heads=4, warmup_steps=1, lr=3e-3, complementary_masking=True,
                               tasks={"t2i": 1, "caption": 1, "vqa": 1}, compile=compile)
        losses = Losses()
        trainer = L.Trainer(accelerator="gpu", devices=1, precision="32-true", max_steps=8,
                            logger=False, enable_progress_bar=False, enable_checkpointing=False,
                            limit_val_batches=0, enable_model_summary=False,
                            default_root_dir=tmp_path, callbacks=[losses])
        trainer.fit(module, datamodule=ShapesDataModule(image_size=32, batch_size=8, num_train=64))
        return torch.tensor(losses.values)

    torch.backends.cuda.matmul.allow_tf32 = False
    eager, graphed = run(False), run("reduce-overhead")
    assert len(eager) == len(graphed) == 8
    torch.testing.assert_close(graphed, eager, rtol=2e-3, atol=2e-3)
    assert graphed[-1] < graphed[0]  # and it trains
