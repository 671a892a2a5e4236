"""docs/samplers.md's "Example" runs as written and draws exactly what ``text_to_image`` draws."""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "samplers.md"
SHOWN_MODEL = '"runs/models/unified_shapes"'


def example_code() -> str:
    section = DOC.read_text().split("\n## Example\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1 and SHOWN_MODEL in blocks[0]
    return blocks[0]


def test_the_documented_decode_reproduces_text_to_image(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    scope: dict = {}
    exec(compile(example_code().replace(SHOWN_MODEL, repr(str(tmp_path / "model"))), str(DOC),
                 "exec"), scope)
    documented = scope["space"].image_codes(scope["result"].tokens)
    assert scope["images"].shape == (2, 3, 32, 32)
    # the settings the text names: 16 steps, guidance 3 in the first 70 %, seeds 0 and 1
    reference = scope["pipe"].text_to_image(scope["prompts"], num_steps=16, guidance_scale=3.0,
                                            guidance_kwargs={"interval": (0.0, 0.7)}, seed=0,
                                            output="codes")
    assert torch.equal(documented, reference)
