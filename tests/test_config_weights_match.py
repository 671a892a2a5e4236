"""Weights record the config they were saved with; loading refuses a config file edited since.

The case that motivated it: FSQ keeps its ``levels`` in a non-persistent buffer, so a
``config.json`` whose ``levels`` went from ``[8, 5, 5, 5]`` to ``[5, 5, 5, 8]`` or ``[7, 5, 5, 5]``
(same count, same weight shapes) loaded silently into a tokenizer whose codes mean something else.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.tokenizers.image_tokenizer_testkit import TINY
from unigen import io
from unigen.saved_config import first_config_difference
from unigen.tokenizers import FSQTokenizer, ImageTokenizer



pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _edit(config_file: Path, change) -> None:
    body = json.loads(config_file.read_text())
    change(body)
    config_file.write_text(json.dumps(body, indent=2))


def _drop_record(weights_file: Path) -> None:
    """Rewrite ``weights_file`` as unigen wrote it before the config record existed."""
    save_file(load_file(str(weights_file)), str(weights_file))
    assert io.CONFIG_RECORD_KEY not in io.safetensors_metadata(weights_file)


@pytest.fixture
def saved_fsq(tmp_path) -> tuple[Path, FSQTokenizer]:
    torch.manual_seed(0)
    tok = FSQTokenizer(levels=[8, 5, 5, 5], **TINY).eval()
    tok.save_pretrained(tmp_path / "tok")
    return tmp_path / "tok", tok


# -- the FSQ levels edit -------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [[5, 5, 5, 8], [7, 5, 5, 5]])
def test_an_edited_fsq_levels_is_refused_with_one_line(saved_fsq, levels):
    path, _ = saved_fsq
    _edit(path / "config.json", lambda m: m["config"].update(levels=levels))
    with pytest.raises(ValueError) as err:
        ImageTokenizer.from_pretrained(path)
    assert str(err.value) == (
        f"{path / 'config.json'}: 'config.levels' is {levels} but the weights in "
        f"model.safetensors were saved with [8, 5, 5, 5] (edit it back, or retrain)")


def test_the_record_is_the_config_file_as_written(saved_fsq):
    path, _ = saved_fsq
    record = io.safetensors_metadata(path / "model.safetensors")[io.CONFIG_RECORD_KEY]
    assert json.loads(record) == json.loads((path / "config.json").read_text())


def test_without_the_record_the_same_edit_loads_silently(saved_fsq):
    """What the record guards against (and what weights saved before it still do)."""
    path, tok = saved_fsq
    _drop_record(path / "model.safetensors")
    _edit(path / "config.json", lambda m: m["config"].update(levels=[7, 5, 5, 5]))
    loaded = ImageTokenizer.from_pretrained(path)
    assert loaded.codebook_size == 875 and not torch.equal(loaded.encode(_images()),
                                                           tok.encode(_images()))


# -- round trips, reformatting, legacy files --------------------------------------------------------
def test_an_unchanged_round_trip_gives_identical_outputs(saved_fsq):
    path, tok = saved_fsq
    loaded = ImageTokenizer.from_pretrained(path)
    codes = tok.encode(_images())
    assert torch.equal(loaded.encode(_images()), codes)
    assert torch.equal(loaded.decode(codes), tok.decode(codes))


@pytest.mark.parametrize("dump", [
    lambda m: json.dumps(m),  # one line
    lambda m: json.dumps(m, indent=4),
    # keys in reverse order, at every level
    lambda m: json.dumps({k: (dict(reversed(v.items())) if isinstance(v, dict) else v)
                          for k, v in reversed(m.items())}, indent=1),
])
def test_reformatting_the_config_is_no_difference(saved_fsq, dump):
    path, tok = saved_fsq
    meta = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(dump(meta))
    loaded = ImageTokenizer.from_pretrained(path)
    assert torch.equal(loaded.encode(_images()), tok.encode(_images()))


def test_a_key_missing_on_one_side_counts_as_its_default(tmp_path):
    torch.manual_seed(0)
    FSQTokenizer(levels=[5, 5, 5], seed=0, **TINY).save_pretrained(tmp_path / "a")
    _edit(tmp_path / "a" / "config.json", lambda m: m["config"].pop("seed"))  # 0 is the default
    ImageTokenizer.from_pretrained(tmp_path / "a")

    FSQTokenizer(levels=[5, 5, 5], seed=3, **TINY).save_pretrained(tmp_path / "b")
    _edit(tmp_path / "b" / "config.json", lambda m: m["config"].pop("seed"))
    with pytest.raises(ValueError, match="'config.seed' is missing but the weights in "
                                         "model.safetensors were saved with 3 "):
        ImageTokenizer.from_pretrained(tmp_path / "b")


def test_a_key_the_record_lacks_is_a_difference(saved_fsq):
    path, _ = saved_fsq
    _edit(path / "config.json", lambda m: m.update(extra=1))
    with pytest.raises(ValueError, match="'extra' is 1 but the weights in model.safetensors were "
                                         "saved without it"):
        ImageTokenizer.from_pretrained(path)


def test_a_legacy_weights_file_still_loads(saved_fsq):
    path, tok = saved_fsq
    _drop_record(path / "model.safetensors")
    loaded = ImageTokenizer.from_pretrained(path)
    assert torch.equal(loaded.encode(_images()), tok.encode(_images()))
    # and a shape-changing edit of a legacy save is still the shape error
    _edit(path / "config.json", lambda m: m["config"].update(levels=[5, 5, 5]))
    with pytest.raises(ValueError, match="model.safetensors does not match the config: shapes"):
        ImageTokenizer.from_pretrained(path)


@pytest.mark.parametrize("name", ["fsq_shapes", "fsq_shapes_8x8"])
def test_the_shipped_tokenizers_load_unchanged(name):
    path = Path(__file__).resolve().parents[1] / "assets" / "tokenizers" / name
    if not path.is_dir():
        pytest.skip(f"{path} is not in this checkout")
    assert io.CONFIG_RECORD_KEY not in io.safetensors_metadata(path / "model.safetensors")
    assert ImageTokenizer.from_pretrained(path).codebook_size == 8 * 8 * 8 * 6 * 5


# -- the pipeline's transformer ------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_pipeline(tokenizer_dirs, tmp_path_factory):
    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(0)
    # without qk-norm the head count is in no weight's shape
    module = UnifiedModule(**tokenizer_dirs, image_size=32, max_text_len=24, dim=32, depth=1,
                           heads=4, qk_norm=False, tasks={"t2i": 1})
    pipe = module.to_pipeline()
    path = tmp_path_factory.mktemp("pipe") / "model"
    pipe.save_pretrained(path)
    return path, pipe


def _tokens(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, pipe.transformer.vocab.total_size, (2, pipe.transformer.sequence.length),
                         generator=g)


def _copy(path: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(path, tmp_path / "model")
    return tmp_path / "model"


def test_the_pipeline_round_trip_gives_identical_outputs(saved_pipeline):
    from unigen.pipeline import UnifiedPipeline

    path, pipe = saved_pipeline
    loaded = UnifiedPipeline.from_pretrained(path)
    tokens = _tokens(pipe)
    with torch.no_grad():
        torch.testing.assert_close(loaded.transformer.eval()(tokens),
                                   pipe.transformer.eval()(tokens), rtol=0, atol=0)


def test_an_edited_transformer_heads_is_refused(saved_pipeline, tmp_path):
    from unigen.pipeline import UnifiedPipeline, load_pipeline, load_transformer_weights
    from unigen.modules.transformer import UnifiedTransformer

    model = _copy(saved_pipeline[0], tmp_path)
    config_file = model / "transformer" / "config.json"
    _edit(config_file, lambda c: c.update(heads=8))
    line = (f"{config_file}: 'heads' is 8 but the weights in model.safetensors were saved with 4 "
            "(edit it back, or retrain)")
    for load in (UnifiedPipeline.from_pretrained, load_pipeline):
        with pytest.raises(ValueError) as err:
            load(model)
        assert str(err.value) == line
    # continuing a run (init_weights) from it with a recipe that matches the edited file
    net = UnifiedTransformer.from_config(json.loads(config_file.read_text()))
    with pytest.raises(ValueError) as err:
        load_transformer_weights(net, model)
    assert str(err.value) == line

    _drop_record(model / "transformer" / "model.safetensors")  # saved before the record: as before
    assert UnifiedPipeline.from_pretrained(model).transformer.heads == 8


def test_transformer_keys_written_only_when_set_count_as_their_default(saved_pipeline, tmp_path):
    from unigen.pipeline import UnifiedPipeline

    model = _copy(saved_pipeline[0], tmp_path)
    config_file = model / "transformer" / "config.json"
    assert "question_slot" not in json.loads(config_file.read_text())["sequence"]
    # the value the loader fills in when absent, and answer_len (decoding, no weight depends on it)
    _edit(config_file, lambda c: c["sequence"].update(question_slot=0, answer_len=4))
    UnifiedPipeline.from_pretrained(model)
    _edit(config_file, lambda c: c["sequence"].update(question_slot=2))
    with pytest.raises(ValueError, match="'sequence.question_slot' is 2 but the weights in "
                                         "model.safetensors were saved without it"):
        UnifiedPipeline.from_pretrained(model)


# -- the other kinds of saved weights ------------------------------------------------------------------
def test_an_edited_domain_classifier_is_refused(domain_classifier_dir, tmp_path):
    from unigen.metrics import DomainClassifier

    model = _copy(domain_classifier_dir, tmp_path)
    DomainClassifier.from_pretrained(model)
    # reordered class names: same shapes, every label swapped
    _edit(model / "config.json",
          lambda m: m["config"].update(class_names=["green", "red", "blue", "white"]))
    with pytest.raises(ValueError, match="'config.class_names' is \\[\"green\", \"red\", \"blue\", "
                                         "\"white\"\\] but the weights in model.safetensors were "
                                         "saved with \\[\"red\", \"green\""):
        DomainClassifier.from_pretrained(model)


def test_an_edited_lora_alpha_is_refused(tmp_path):
    from unigen.modules.lora import (CONFIG_NAME, LoRAConfig, apply_lora, load_lora,
                                     lora_layers, save_lora)

    def base():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))

    model = base()
    config = LoRAConfig(rank=2, alpha=4.0, targets=["*"])
    apply_lora(model, config)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_b.normal_()
    save_lora(model, config, tmp_path / "adapter")
    load_lora(base(), tmp_path / "adapter")
    _edit(tmp_path / "adapter" / CONFIG_NAME, lambda m: m.update(alpha=8.0))
    with pytest.raises(ValueError, match=f"{CONFIG_NAME}: 'alpha' is 8.0 but the weights in "
                                         "adapter_model.safetensors were saved with 4.0 "):
        load_lora(base(), tmp_path / "adapter")


def test_a_corrupt_record_is_one_error(saved_fsq):
    path, _ = saved_fsq
    weights = path / "model.safetensors"
    save_file(load_file(str(weights)), str(weights), metadata={io.CONFIG_RECORD_KEY: "[1"})
    with pytest.raises(ValueError, match="record of the config it was saved with"):
        ImageTokenizer.from_pretrained(path)


def test_json_values_compare_as_json():
    assert first_config_difference({"a": 4, "b": [1, {"c": 2}]}, {"b": [1.0, {"c": 2}], "a": 4.0}) is None
    assert first_config_difference({"a": True}, {"a": 1})[0] == "a"
    assert first_config_difference({"a": {"b": 1}}, {"a": {"b": 2}})[:1] == ("a.b",)
    assert first_config_difference({"a": 1}, {}, defaults={"a": 1}) is None
    assert first_config_difference({"a": 1}, {"a": 2}, ignore=("a",)) is None
