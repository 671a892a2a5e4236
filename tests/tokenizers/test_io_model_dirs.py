"""unigen.io's helpers for ``save_pretrained`` folders (shared by the image tokenizers, the domain
classifier and the pipeline): a malformed config is one ValueError naming the file."""

from __future__ import annotations

import json

import pytest

from unigen import io


def test_read_model_dir_requires_a_json_object(tmp_path):
    (tmp_path / io.CONFIG_FILE).write_text(json.dumps({"type": "x"}))
    assert io.read_model_dir(tmp_path, "thing", "make one")[1] == {"type": "x"}
    for body, kind in [([1], "array"), ("s", "string"), (None, "null"), (3, "number")]:
        (tmp_path / io.CONFIG_FILE).write_text(json.dumps(body))
        with pytest.raises(ValueError, match=f"thing config file {tmp_path / io.CONFIG_FILE} must "
                                             f"hold a JSON object, got a JSON {kind}$"):
            io.read_model_dir(tmp_path, "thing", "make one")


def test_typed_model_config_checks_type_and_config():
    assert io.typed_model_config("c.json", {"type": "a", "config": {"k": 1}}, "thing") == \
        ("a", {"k": 1})
    with pytest.raises(ValueError, match='c.json: "type" must be the name .* got 3'):
        io.typed_model_config("c.json", {"type": 3, "config": {}}, "thing")
    with pytest.raises(ValueError, match='c.json has no "config" field'):
        io.typed_model_config("c.json", {"type": "a"}, "thing")
    with pytest.raises(ValueError, match='c.json: "config" must be a JSON object .* JSON string'):
        io.typed_model_config("c.json", {"type": "a", "config": "x"}, "thing")


def test_config_errors_wraps_constructor_errors_in_one_line():
    def build(levels: int) -> None:
        raise ValueError("levels are\nwrong")

    with pytest.raises(ValueError, match="^bad thing config in c.json: levels are wrong$") as err:
        with io.config_errors("c.json", "thing"):
            build(levels=1)
    assert isinstance(err.value.__cause__, ValueError)  # the original stays reachable
    with pytest.raises(ValueError, match="unexpected keyword argument 'bogus'"):
        with io.config_errors("c.json", "thing"):
            build(bogus=1)
    with pytest.raises(KeyError):  # other errors are not user-config errors: passed through
        with io.config_errors("c.json", "thing"):
            raise KeyError("k")
