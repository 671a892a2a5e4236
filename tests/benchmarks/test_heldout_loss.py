"""benchmarks/heldout_loss.py: models scored on the same held-out rows with the same masks."""

import json
import math

import pytest
import torch

from benchmarks.heldout_loss import main, mask_draws

QUICK = ["--num-samples", "4", "--batch-size", "2", "--image-size", "32", "--rates", "0.5,1",
         "--threads", "1"]


def save_model(path, tokenizer_dirs, seed=0, **kwargs):
    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(seed)
    pipe = UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4, **kwargs).to_pipeline()
    pipe.save_pretrained(path)
    return pipe


def test_a_zero_head_scores_the_log_of_the_codebook_and_ratios_follow(tmp_path, tokenizer_dirs):
    pipe = save_model(tmp_path / "a", tokenizer_dirs)
    torch.nn.init.zeros_(pipe.transformer.head.proj.weight)  # uniform over the legal image codes
    pipe.save_pretrained(tmp_path / "uniform")
    out = tmp_path / "r.json"
    payload = main(["--model", f"a={tmp_path / 'a'}", "--model", f"uniform={tmp_path / 'uniform'}",
                    *QUICK, "--out", str(out)])
    log_v = math.log(pipe.image_tokenizer.codebook_size)
    assert list(payload["loss"]["uniform"]) == ["0.5", "1", "schedule"]
    for value in payload["loss"]["uniform"].values():
        assert value == pytest.approx(log_v, rel=1e-5)
    for key, value in payload["ratio_to_reference"]["uniform"].items():
        assert value == pytest.approx(log_v / payload["loss"]["a"][key])
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "heldout_loss" and saved["settings"]["num_samples"] == 4
    assert payload["plot"] == str(out.with_suffix(".png"))
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved["settings"]["reference"] == "a" and saved["loss"] == payload["loss"]


def test_a_checkpoint_and_its_pipeline_get_identical_masks_and_losses(tmp_path, tokenizer_dirs):
    from unigen.training.checkpoint import CLASS_KEY
    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(0)
    module = UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4)
    module.configure_model()
    module.to_pipeline().save_pretrained(tmp_path / "pipe")
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                CLASS_KEY: "unigen.training.unified_module.UnifiedModule", "global_step": 3},
               tmp_path / "last.ckpt")
    payload = main(["--model", f"x={tmp_path / 'pipe'}", "--model", f"y={tmp_path / 'last.ckpt'}",
                    *QUICK, "--out", str(tmp_path / "r.json")])
    assert payload["loss"]["x"] == payload["loss"]["y"]
    assert set(payload["ratio_to_reference"]["y"].values()) == {1.0}
    assert (payload["models"]["x"]["step"], payload["models"]["y"]["step"]) == (None, 3)


def test_masks_hit_each_rate_and_depend_on_the_seed_alone():
    target = torch.zeros(3, 20, dtype=torch.bool)
    target[:, 4:] = True  # 16 targets a row
    draws = mask_draws(target, [0.25, 1.0], seed=7)
    assert (draws["0.25"].sum(1) == 4).all() and (draws["1"] == target).all()
    assert not (draws["schedule"] & ~target).any()
    again = mask_draws(target, [0.25, 1.0], seed=7)
    assert all(torch.equal(draws[k], again[k]) for k in draws)
    assert not torch.equal(mask_draws(target, [0.25], seed=8)["0.25"], draws["0.25"])


def test_models_of_different_layouts_are_refused(tmp_path, tokenizer_dirs):
    save_model(tmp_path / "a", tokenizer_dirs)
    save_model(tmp_path / "b", tokenizer_dirs, max_text_len=12)
    with pytest.raises(SystemExit, match="layout"):
        main(["--model", f"a={tmp_path / 'a'}", "--model", f"b={tmp_path / 'b'}", *QUICK,
              "--out", str(tmp_path / "r.json")])


@pytest.mark.parametrize("args, message", [
    (["--model", "nopath"], "^--model 'nopath': expected NAME=PATH$"),
    (["--model", "a=x", "--model", "a=y"], "^--model 'a' given twice$"),
    ([], "^give at least one --model NAME=PATH$"),
    (["--model", "a=x", "--rates", "0.5,1.5"],
     r"^--rates '0.5,1.5': every rate must lie in \(0, 1\]$"),
])
def test_bad_arguments_are_one_clear_error(args, message):
    # anchored: "NAME=PATH" alone would also match the "give at least one" error
    with pytest.raises(SystemExit, match=message):
        main(args)
