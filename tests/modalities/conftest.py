"""A text tokenizer with the layout modality's task tokens (built from the shared tiny one)."""

import pytest

from unigen.tokenizers.text import TextTokenizer


@pytest.fixture(scope="session")
def layout_text_tokenizer_dir(text_tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "text_tokenizer_layout"
    base = TextTokenizer.from_pretrained(text_tokenizer_dir)
    base.add_task_tokens(["layout2i", "i2layout"]).save_pretrained(out)
    return out
