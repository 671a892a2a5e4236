"""No pickle from strangers: weights load from safetensors, every ``torch.load`` in the package
uses ``weights_only=True``, and a checkpoint whose unpickling would run code is refused by
``unigen export`` and ``unigen fit --ckpt_path`` before any of it runs."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from unigen.cli import main

PACKAGE = Path(__file__).resolve().parents[2] / "unigen"
MODULE_CLASS = "unigen.training.unified_module.UnifiedModule"


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_every_load_in_the_package_is_weights_only():
    loads, problems = 0, []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node, name in _calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            keywords = {k.arg: k.value for k in node.keywords}
            if name in ("torch.load", "torch.serialization.load"):
                loads += 1
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load",
                        "torch.hub.load", "torch.hub.load_state_dict_from_url", "joblib.load"):
                problems.append(f"{where}: {name} can run code from the file")
            flag = keywords.get("weights_only")
            if isinstance(flag, ast.Constant) and flag.value is False:
                problems.append(f"{where}: weights_only=False")
    assert loads >= 1, "the scan found no torch.load at all: is it looking at the package?"
    assert not problems, "\n".join(problems)


class Payload:
    """Unpickling this creates ``marker`` (a stand-in for any code an attacker would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture
def malicious_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "unigen_module_class": MODULE_CLASS,
                "payload": Payload(marker)}, path)
    # the payload is live: an unrestricted unpickler runs it
    torch.load(path, weights_only=False)  # noqa: S614 (the test's own file, on purpose)
    assert marker.exists()
    marker.unlink()
    return path, marker


def _one_error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("unigen:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_export_refuses_a_malicious_checkpoint(malicious_checkpoint, tmp_path, capsys):
    path, marker = malicious_checkpoint
    with pytest.raises(SystemExit) as exc:
        main(["export", "--ckpt", str(path), "--out", str(tmp_path / "out")])
    assert exc.value.code == 1
    line = _one_error_line(capsys)
    assert f"refusing to load {path}" in line and "could run code" in line
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_fit_refuses_a_malicious_checkpoint(malicious_checkpoint, tokenizer_dirs, tmp_path,
                                            monkeypatch, capsys):
    from resume_testkit import unified_case

    path, marker = malicious_checkpoint
    monkeypatch.chdir(tmp_path)
    case = unified_case(tokenizer_dirs)
    with pytest.raises(SystemExit) as exc:
        main([*case.argv(tmp_path / "run"), "--ckpt_path", str(path)])
    assert exc.value.code == 1
    assert f"refusing to load {path}" in _one_error_line(capsys)
    assert not marker.exists()
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt")), "no training happened"


def test_a_plain_pickle_file_is_refused_too(tmp_path, capsys):
    marker, path = tmp_path / "pwned", tmp_path / "old_style.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    with pytest.raises(SystemExit) as exc:
        main(["export", "--ckpt", str(path), "--out", str(tmp_path / "out")])
    assert exc.value.code == 1
    line = _one_error_line(capsys)
    assert line.startswith(f"unigen: error: refusing to load {path}: ") and "could run code" in line
    assert not marker.exists() and not (tmp_path / "out").exists()
