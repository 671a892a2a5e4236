"""The "A modality" example of docs/extending.md, run as written: a 1-D audio-code modality and
its text-to-audio task, defined outside unigen, train in the unified module with no core edit."""

from __future__ import annotations

import pytest
import torch

from docs_testkit import exec_doc_block

from unigen.diffusion.tasks import TASKS
from unigen.modalities import MODALITIES
from unigen.tokenizers.text import TextTokenizer
from tests.training.test_unified_module import batch_of, make

@pytest.fixture
def audio_plugin():
    namespace = exec_doc_block("# my_audio.py", "my_audio")
    yield namespace
    MODALITIES._items.pop("audio_codes")
    TASKS._items.pop("t2a")


def test_the_documented_modality_trains_with_no_core_edit(audio_plugin, text_tokenizer_dir,
                                                          image_tokenizer_dir, tmp_path):
    tok_dir = tmp_path / "text_tokenizer_t2a"
    TextTokenizer.from_pretrained(text_tokenizer_dir).add_task_tokens(["t2a"]).save_pretrained(tok_dir)
    torch.manual_seed(0)
    module = make({"text_tokenizer": str(tok_dir), "image_tokenizer": str(image_tokenizer_dir)},
                  modalities={"audio": {"kind": "audio_codes", "length": 8, "codebook": 16}},
                  tasks={"t2a": 1.0})
    seq = module.space.sequence
    assert seq.extra == {"audio": (8,)} and module.space.vocab.extra == {"audio": 16}
    batch = batch_of(8)
    # "audio" that the captions determine: each caption's length, spelled as 8 codes
    batch["audio"] = torch.stack([torch.full((8,), len(c) % 16) for c in batch["caption"]])
    opt = torch.optim.AdamW(module.net.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        gen = torch.Generator().manual_seed(step)
        tb, assignment = module.mixture.build(module.task_inputs(batch), module.space, gen)
        assert not tb.target[:, seq.text].any() and tb.target[:, seq.extra_segment("audio")].all()
        loss, _ = module.diffusion_loss(tb, gen, assignment)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    pipe = module.to_pipeline()
    out = pipe.run_task("t2a", {"text": batch["caption"][:2]}, num_steps=4)
    assert len(out["audio"]) == 2 and out["audio_codes"].shape == (2, 8)
    assert int(out["audio_codes"].max()) < 16
